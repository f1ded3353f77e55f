// Package config reads the routes YAML (one file or a directory of files) as viper does
// (merging, environment overrides), decodes it strictly, applies defaults and validates it
// whole, producing a model.Config. Every mistake is reported in one run with its field
// path, e.g.
// "upstreams.gemini.url: must be an absolute http(s) URL".
//
// The bytes come from a Provider (FileProvider, DirProvider; a ConfigMap or HTTP source
// would be one more implementation of Load and Watch); Parse and Build turn any provider's
// snapshot into the model, so viper and its quirks stay in this package. Compare says what
// an edit removes, which the control plane uses to hold destructive edits back.
package config

import "time"

// SchemaVersion is the only routes YAML schema this build understands.
const SchemaVersion = 1

// File is the routes YAML as written by operators (schema v1). Field names are the YAML
// keys; see docs/CONFIG.md for the reference.
type File struct {
	Version   int                 `mapstructure:"version"`
	Regions   map[string]Region   `mapstructure:"regions"`
	Upstreams map[string]Upstream `mapstructure:"upstreams"`
	Routes    map[string]Route    `mapstructure:"routes"`
	Callers   map[string]Caller   `mapstructure:"callers"`
	Usage     *Usage              `mapstructure:"usage"`
	Probes    *Probes             `mapstructure:"probes"`
	Alerts    *Alerts             `mapstructure:"alerts"`
}

// Region is one regional edge.
type Region struct {
	Listen         string   `mapstructure:"listen"`
	EgressAddress  string   `mapstructure:"egress_address"`
	XFFTrustedHops int      `mapstructure:"xff_trusted_hops"`
	Upstreams      []string `mapstructure:"upstreams"`
	// ExtAuthz is the region's extauthz service: unix:/abs/path.sock or host:port. Every
	// request is checked by it; Envoy fails closed when it is unreachable.
	ExtAuthz string `mapstructure:"extauthz"`
	// ExtAuthzInEnvoy checks callers inside the region's Envoys with llmedge's dynamic
	// module (libllmedge.so) instead of the ext_authz side call to ExtAuthz; ExtAuthz stays
	// required (key failover on retries still reaches it there).
	ExtAuthzInEnvoy bool `mapstructure:"extauthz_in_envoy"`
	// RateLimit is the region's envoyproxy/ratelimit (gRPC): unix:/abs/path.sock or
	// host:port; required once any caller or upstream has limits.
	RateLimit string `mapstructure:"ratelimit"`
	// InternalTLS makes Envoy use mutual TLS to extauthz and ratelimit when they are
	// reached over TCP.
	InternalTLS *InternalTLS `mapstructure:"internal_tls"`
	// RateLimitFailure says what happens when the rate-limit service cannot answer:
	// "allow" (default, fail open) or "deny" (refuse the request).
	RateLimitFailure string `mapstructure:"ratelimit_failure"`
	// PeerListen is this region's listener for other llmedge edges (ip:port): mutual TLS
	// only, for requests they forward to an upstream this region serves.
	PeerListen string `mapstructure:"peer_listen"`
	// PeerTLS is the region's edge certificate (it carries the region's identity), its
	// key and the CA of the other edges' certificates: presented by the peer listener and
	// when forwarding to a peer.
	PeerTLS *InternalTLS `mapstructure:"peer_tls"`
	// Peers names, per upstream, the regions this region forwards that upstream's requests
	// to: its only path when this region may not reach the upstream itself (an entry
	// region), a hot standby behind its direct path otherwise.
	Peers map[string][]string `mapstructure:"peers"`
	// Overload bounds what one Envoy of the region admits, so that past its capacity
	// requests are refused at once instead of queueing into seconds of latency.
	Overload *Overload `mapstructure:"overload"`
	// AccessLog is where the region's Envoys write one JSON line per request: "stdout"
	// (default) or "off". With usage recording on, the control plane's access log files
	// hold the same requests while it is reachable; Envoy's line costs it ≈ 15–25 µs of
	// CPU a request (docs/BENCHMARKS.md).
	AccessLog string `mapstructure:"access_log"`
}

// Overload is a region's admission ceiling, per Envoy.
type Overload struct {
	// MaxRequestsPerSecond is how many new requests one Envoy admits a second; 0 admits all.
	MaxRequestsPerSecond int `mapstructure:"max_requests_per_second"`
	// Burst is how many requests may arrive at once above that rate (default: a quarter
	// second's worth).
	Burst int `mapstructure:"burst"`
}

// InternalTLS are PEM files on the Envoy host for mutual TLS to the region's own services.
type InternalTLS struct {
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	CAFile   string `mapstructure:"ca_file"`
}

// Upstream is one LLM provider endpoint.
type Upstream struct {
	URL               string        `mapstructure:"url"`
	Endpoint          string        `mapstructure:"endpoint"`
	TLS               TLS           `mapstructure:"tls"`
	Protocol          string        `mapstructure:"protocol"`
	ConnectTimeout    time.Duration `mapstructure:"connect_timeout"`
	ResponseTimeout   time.Duration `mapstructure:"response_timeout"`
	StreamIdleTimeout time.Duration `mapstructure:"stream_idle_timeout"`
	AllowedRegions    []string      `mapstructure:"allowed_regions"`
	// ForwardClientIP sends the caller's address to the provider as X-Forwarded-For, and
	// ForwardRequestID the edge's request id as X-Request-Id. Both default to off: the
	// provider learns nothing of the caller's network or of the edge.
	ForwardClientIP  bool `mapstructure:"forward_client_ip"`
	ForwardRequestID bool `mapstructure:"forward_request_id"`
	// API is the provider's API family (openai, anthropic, gemini): it picks the default
	// key header and shapes error bodies like the provider's own.
	API       string `mapstructure:"api"`
	KeyHeader string `mapstructure:"key_header"`
	KeyFormat string `mapstructure:"key_format"`
	// Limits protect the upstream (its provider key's own quota) across all callers.
	Limits []Limit `mapstructure:"limits"`
	// Retries, OutlierDetection and CircuitBreaker are the upstream's resilience settings;
	// every field is optional and absent ones take the defaults below.
	Retries          Retries          `mapstructure:"retries"`
	OutlierDetection OutlierDetection `mapstructure:"outlier_detection"`
	CircuitBreaker   CircuitBreaker   `mapstructure:"circuit_breaker"`
}

// Retries says when and how often Envoy re-sends a request to the upstream. Pointers tell
// an absent key (the default) from an explicit zero.
type Retries struct {
	Enabled       *bool         `mapstructure:"enabled"`
	Attempts      *int          `mapstructure:"attempts"` // total, the first one included
	On            []string      `mapstructure:"on"`
	Backoff       Backoff       `mapstructure:"backoff"`
	RetryAfterMax time.Duration `mapstructure:"retry_after_max"`
	BudgetPercent *float64      `mapstructure:"budget_percent"`
}

// Backoff is the exponential back-off between attempts (Envoy adds jitter).
type Backoff struct {
	Base time.Duration `mapstructure:"base"`
	Max  time.Duration `mapstructure:"max"`
}

// OutlierDetection ejects an endpoint of the upstream after consecutive failures. A
// consecutive count of 0 turns that detector off.
type OutlierDetection struct {
	Enabled                  *bool         `mapstructure:"enabled"`
	Consecutive5xx           *int          `mapstructure:"consecutive_5xx"`
	ConsecutiveGatewayErrors *int          `mapstructure:"consecutive_gateway_errors"`
	ConsecutiveLocalFailures *int          `mapstructure:"consecutive_local_failures"`
	BaseEjectionTime         time.Duration `mapstructure:"base_ejection_time"`
	MaxEjectionPercent       *int          `mapstructure:"max_ejection_percent"`
}

// CircuitBreaker bounds what one Envoy sends to the upstream at once.
type CircuitBreaker struct {
	MaxConnections     int `mapstructure:"max_connections"`
	MaxPendingRequests int `mapstructure:"max_pending_requests"`
	MaxRequests        int `mapstructure:"max_requests"`
}

// Limit is one quota: at most Requests (or Tokens) per Per. A caller's limit may name an
// Upstream to count only that upstream's requests; Model counts only requests naming that
// model. Shadow counts without refusing anything.
type Limit struct {
	Requests int    `mapstructure:"requests"`
	Tokens   int    `mapstructure:"tokens"`
	Per      string `mapstructure:"per"` // second, minute, hour or day
	Upstream string `mapstructure:"upstream"`
	Model    string `mapstructure:"model"`
	Shadow   bool   `mapstructure:"shadow"`
}

// Caller is one client of the edge, identified by its tokens.
type Caller struct {
	// Tokens are "sha256:<64 hex>" digests; `llmedge token new` mints a token and prints
	// the line to paste here. Plain tokens never appear in the YAML.
	Tokens    []string `mapstructure:"tokens"`
	Upstreams []string `mapstructure:"upstreams"`
	Tenant    string   `mapstructure:"tenant"`
	Disabled  bool     `mapstructure:"disabled"`
	// Expires is an RFC 3339 time (2027-01-31T00:00:00Z); YAML may give it as a timestamp
	// or a string.
	Expires  time.Time `mapstructure:"expires"`
	AllowIPs []string  `mapstructure:"allow_ips"`
	DenyIPs  []string  `mapstructure:"deny_ips"`
	BYOK     bool      `mapstructure:"bring_your_own_key"`
	Limits   []Limit   `mapstructure:"limits"`
}

// TLS is the upstream TLS client setting.
type TLS struct {
	SNI    string `mapstructure:"sni"`
	CAFile string `mapstructure:"ca_file"`
	// Verify is a pointer so that an absent key means the default (on).
	Verify *bool `mapstructure:"verify"`
}

// Route sends matching requests to one upstream.
type Route struct {
	Match         Match  `mapstructure:"match"`
	Upstream      string `mapstructure:"upstream"`
	PrefixRewrite string `mapstructure:"prefix_rewrite"`
	// API overrides the wire API the route's answers follow, which Envoy reads token usage
	// from: openai_chat (the default of an openai upstream), openai_responses, anthropic,
	// gemini, or none (not an LLM endpoint: no usage is read).
	API string `mapstructure:"api"`
}

// Match selects requests.
type Match struct {
	Prefix  string        `mapstructure:"prefix"`
	Path    string        `mapstructure:"path"`
	Hosts   []string      `mapstructure:"hosts"`
	Headers []HeaderMatch `mapstructure:"headers"`
}

// HeaderMatch matches one request header.
type HeaderMatch struct {
	Name    string `mapstructure:"name"`
	Exact   string `mapstructure:"exact"`
	Prefix  string `mapstructure:"prefix"`
	Present bool   `mapstructure:"present"`
}

// Defaults applied where a field is absent. The response and idle timeouts must never cut a
// request the caller's SDK would still wait for: the OpenAI and Anthropic SDKs wait 600 s
// (for the whole non-streaming answer, and between bytes of a stream), reasoning models can
// think silently for minutes, and Google's GenAI SDK sets no timeout at all. 15 minutes
// leaves the SDK's own timeout, with its clear error and retry, to fire first.
const (
	DefaultConnectTimeout    = 10 * time.Second
	DefaultResponseTimeout   = 15 * time.Minute
	DefaultStreamIdleTimeout = 15 * time.Minute
	DefaultCAFile            = "/etc/ssl/certs/ca-certificates.crt"
)

// Probes configures the control plane's synthetic probes: a minimal real call through each
// region's edge to each upstream served there, as a dedicated caller (docs/CONFIG.md#probes).
type Probes struct {
	Caller string `mapstructure:"caller"`
	// TokenFile holds the probe caller's plain token; the YAML lists only its digest.
	TokenFile string        `mapstructure:"token_file"`
	Interval  time.Duration `mapstructure:"interval"`
	Timeout   time.Duration `mapstructure:"timeout"`
	// Regions override where a region's edge is reached (default: its listen address).
	Regions map[string]ProbeRegion `mapstructure:"regions"`
	// Upstreams choose the request each upstream is probed with.
	Upstreams map[string]ProbeUpstream `mapstructure:"upstreams"`
}

// ProbeRegion is where the control plane reaches one region's edge.
type ProbeRegion struct {
	Edge string `mapstructure:"edge"` // http(s)://host:port
}

// ProbeUpstream is how one upstream is probed.
type ProbeUpstream struct {
	// Request is "models" (list the models) or "completion" (one output token).
	Request string `mapstructure:"request"`
	Model   string `mapstructure:"model"`
	// Path is the edge path to call, when the routes give none or the wrong one.
	Path     string `mapstructure:"path"`
	Disabled bool   `mapstructure:"disabled"`
}

// Usage configures the usage ledger (docs/USAGE.md).
type Usage struct {
	// Enabled is whether Envoy sends each request's record to the ledger (default true).
	Enabled *bool `mapstructure:"enabled"`
	// Store is "sqlite" (default) or "postgres".
	Store    string        `mapstructure:"store"`
	SQLite   UsageSQLite   `mapstructure:"sqlite"`
	Postgres UsagePostgres `mapstructure:"postgres"`
	// RetentionDays is how long records are kept (default 400).
	RetentionDays int        `mapstructure:"retention_days"`
	Spool         UsageSpool `mapstructure:"spool"`
	// AccessLog is the JSON access log files written beside the ledger.
	AccessLog UsageAccessLog `mapstructure:"access_log"`
	// EnvoyAccessLog makes Envoy's own JSON access log lines carry each request's usage
	// facts, so `llmedge usage import` can add the records the gRPC usage log lost.
	EnvoyAccessLog *bool `mapstructure:"envoy_access_log"`
	// Prices are listed, not keyed by model: model names hold dots, which viper would read
	// as nesting.
	Prices []Price `mapstructure:"prices"`
}

// UsageSQLite is the embedded store.
type UsageSQLite struct {
	Path string `mapstructure:"path"` // default usage.db in the state dir
}

// UsagePostgres is a shared store. The DSN carries a password, so the YAML names the file
// holding it.
type UsagePostgres struct {
	DSNFile string `mapstructure:"dsn_file"`
}

// UsageSpool is where records wait while the store is down.
type UsageSpool struct {
	Dir      string `mapstructure:"dir"`       // default usage-spool in the state dir
	MaxBytes int64  `mapstructure:"max_bytes"` // default 1 GiB
}

// UsageAccessLog is where the access log lines go and how long they stay.
type UsageAccessLog struct {
	Enabled       *bool  `mapstructure:"enabled"`        // default true
	Dir           string `mapstructure:"dir"`            // default access-log in the state dir
	RetentionDays int    `mapstructure:"retention_days"` // default 14
	MaxFileBytes  int64  `mapstructure:"max_file_bytes"` // default 100 MiB
}

// Price is one upstream's price for one model, per million tokens.
type Price struct {
	Upstream string   `mapstructure:"upstream"`
	Model    string   `mapstructure:"model"`
	Input    *float64 `mapstructure:"input"`
	Output   *float64 `mapstructure:"output"`
	Cached   *float64 `mapstructure:"cached"`
	Currency string   `mapstructure:"currency"`
}
