// Package config reads the routes YAML (one file or a directory of files) with viper, decodes
// it strictly, applies defaults and validates it whole, producing a model.Config. Every
// mistake is reported in one run with its field path, e.g.
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
	// RateLimit is the region's envoyproxy/ratelimit (gRPC): unix:/abs/path.sock or
	// host:port; required once any caller or upstream has limits.
	RateLimit string `mapstructure:"ratelimit"`
	// InternalTLS makes Envoy use mutual TLS to extauthz and ratelimit when they are
	// reached over TCP.
	InternalTLS *InternalTLS `mapstructure:"internal_tls"`
	// RateLimitFailure says what happens when the rate-limit service cannot answer:
	// "allow" (default, fail open) or "deny" (refuse the request).
	RateLimitFailure string `mapstructure:"ratelimit_failure"`
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

// Usage configures the usage ledger (docs/USAGE.md).
type Usage struct {
	// Store is "sqlite" (default) or "postgres".
	Store    string        `mapstructure:"store"`
	SQLite   UsageSQLite   `mapstructure:"sqlite"`
	Postgres UsagePostgres `mapstructure:"postgres"`
	// RetentionDays is how long records are kept (default 400).
	RetentionDays int        `mapstructure:"retention_days"`
	Spool         UsageSpool `mapstructure:"spool"`
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

// Price is one upstream's price for one model, per million tokens.
type Price struct {
	Upstream string   `mapstructure:"upstream"`
	Model    string   `mapstructure:"model"`
	Input    *float64 `mapstructure:"input"`
	Output   *float64 `mapstructure:"output"`
	Cached   *float64 `mapstructure:"cached"`
	Currency string   `mapstructure:"currency"`
}
