// Package model is the validated, immutable view of a routes YAML: what every later stage
// (translation to Envoy resources, rate limits, authz policy) reads. It never sees viper or
// the files; package config builds it and guarantees the invariants documented here.
package model

import (
	"net/netip"
	"sort"
	"time"
)

// Config is a whole-system view for all regions. Slices are sorted (regions and upstreams by
// name, routes in the order Envoy must try them, see config.SortRoutes) so everything
// derived from it is deterministic.
type Config struct {
	Regions   []Region
	Upstreams []Upstream
	Routes    []Route
	Callers   []Caller // sorted by name
	// Usage is the usage ledger's settings; defaults when the YAML has no usage section.
	Usage Usage
	// Probes are the synthetic probes; nil when the YAML has no probes section.
	Probes *Probes
	// Alerts is the alerts section; zero when the YAML has none.
	Alerts Alerts
	// Warnings are accepted-but-suspicious settings (plain-HTTP upstreams, TLS verification
	// off, routes no region serves). They are logged and shown on the status endpoint.
	Warnings []string
}

// Region is one regional edge: one Envoy listener and the upstreams it may reach.
type Region struct {
	Name          string
	ListenAddress string // an IP address
	ListenPort    uint32
	// EgressAddress, when set, is the local source address for upstream connections so a
	// region has one fixed egress IP for provider allow-lists.
	EgressAddress  string
	XFFTrustedHops uint32
	Upstreams      []string // sorted; every name is an upstream whose AllowedRegions has this region
	// ExtAuthz is the region's extauthz service.
	ExtAuthz Address
	// ExtAuthzInEnvoy makes the region's Envoys check callers in-process with llmedge's
	// dynamic module instead of calling ExtAuthz over gRPC; ExtAuthz is still where key
	// failover on retries reaches extauthz (the module serves it inside Envoy).
	ExtAuthzInEnvoy bool
	// RateLimit is the region's envoyproxy/ratelimit; zero when the config has no limits
	// at all. RateLimitFailClosed refuses requests when it cannot answer.
	RateLimit           Address
	RateLimitFailClosed bool
	// InternalTLS, when set, is mutual TLS from Envoy to the region's own services
	// (extauthz, ratelimit) when they are reached over TCP.
	InternalTLS *InternalTLS
	// PeerListenAddress/PeerListenPort, when set, is the region's listener for the other
	// regions' edges (mutual TLS, PeerTLS); other regions dial this very address.
	PeerListenAddress string
	PeerListenPort    uint32
	// PeerTLS is the region's edge certificate, its key and the CA of every edge's
	// certificate; set whenever the region listens for peers or forwards to them.
	PeerTLS *InternalTLS
	// Peers are the regions this region forwards an upstream's requests to, sorted by
	// upstream. An upstream in Upstreams with peers has them as a hot standby; one not in
	// Upstreams is served only through them (the region is its entry region).
	Peers []Peering
	// Overload is the admission ceiling of each of the region's Envoys; zero admits all.
	Overload Overload
	// AccessLogOff leaves out the JSON access log line Envoy writes to its standard
	// output for every request.
	AccessLogOff bool
}

// Overload bounds the requests one Envoy admits: past MaxRequestsPerSecond (with Burst
// arriving at once) a request is refused at once with 503 "overloaded" before any side
// call is made for it.
type Overload struct {
	MaxRequestsPerSecond uint32
	Burst                uint32
}

// Peering names the egress regions of one upstream, sorted.
type Peering struct {
	Upstream string
	Regions  []string
}

// PeersFor returns the regions r forwards upstream's requests to.
func (r Region) PeersFor(upstream string) []string {
	for _, p := range r.Peers {
		if p.Upstream == upstream {
			return p.Regions
		}
	}
	return nil
}

// Serves reports whether r reaches upstream directly.
func (r Region) Serves(upstream string) bool {
	for _, u := range r.Upstreams {
		if u == upstream {
			return true
		}
	}
	return false
}

// Entry lists the upstreams r serves only through peers, sorted.
func (r Region) Entry() []string {
	var out []string
	for _, p := range r.Peers {
		if !r.Serves(p.Upstream) {
			out = append(out, p.Upstream)
		}
	}
	return out
}

// AllUpstreams lists every upstream r's callers can reach through it, directly or through
// peers, sorted.
func (r Region) AllUpstreams() []string {
	out := append([]string{}, r.Upstreams...)
	out = append(out, r.Entry()...)
	sort.Strings(out)
	return out
}

// Address is where Envoy reaches one of the region's own services: a unix domain socket
// (Pipe, an absolute path) or Host:Port. The zero value means no address.
type Address struct {
	Pipe string
	Host string // IP literal or host name
	Port uint32
}

// IsZero reports whether no address is set.
func (a Address) IsZero() bool { return a == Address{} }

// InternalTLS are PEM files on the Envoy host: the client certificate Envoy presents to
// the region's own services, its key, and the CA their server certificates chain to.
// Envoy re-reads them when they are replaced.
type InternalTLS struct {
	CertFile string
	KeyFile  string
	CAFile   string
}

// Protocol selects how Envoy speaks to an upstream.
type Protocol string

const (
	ProtocolAuto  Protocol = "auto" // ALPN: h2 or http/1.1 (https); http/1.1 on plain http
	ProtocolHTTP1 Protocol = "http1"
	ProtocolHTTP2 Protocol = "http2"
)

// Upstream is one LLM provider endpoint.
type Upstream struct {
	Name     string
	Scheme   string // "https" or "http"
	Host     string // hostname or IP from the URL, without port
	Port     uint32 // from the URL, or 443/80
	BasePath string // URL path without trailing slash; "" for none
	// Authority is what the Host header is rewritten to: Host, plus the port when not the
	// scheme's default.
	Authority string
	// ConnectHost/ConnectPort is where Envoy connects: the URL's host and port unless an
	// explicit endpoint overrides them (private endpoints, pinned IPs, local fakes).
	ConnectHost string
	ConnectPort uint32
	TLS         *TLS // nil for plain http
	Protocol    Protocol

	ConnectTimeout time.Duration
	// ResponseTimeout bounds the wait for response headers of each attempt; once headers
	// arrive the answer may stream for as long as it keeps making progress.
	ResponseTimeout time.Duration
	// StreamIdleTimeout is the longest silence allowed on a request or response stream.
	StreamIdleTimeout time.Duration
	AllowedRegions    []string // sorted

	// ForwardClientIP and ForwardRequestID opt in to telling the provider the caller's
	// address (X-Forwarded-For) and the edge's request id (X-Request-Id); by default it
	// learns neither.
	ForwardClientIP  bool
	ForwardRequestID bool

	API       API
	KeyHeader string  // lower case
	KeyFormat string  // contains "{key}" exactly once
	Limits    []Limit // across all callers; at most one per unit

	Retries Retries
	// Outlier is nil when outlier detection is off.
	Outlier        *Outlier
	CircuitBreaker CircuitBreaker
}

// Retries is the upstream's retry policy. Attempts counts every try, the first one
// included: 1 means no retry.
type Retries struct {
	Attempts uint32
	// On are Envoy retry_on conditions (connect-failure, reset, ...), sorted; StatusCodes
	// are the upstream statuses retried (retriable-status-codes), sorted.
	On            []string
	StatusCodes   []uint32
	BackoffBase   time.Duration
	BackoffMax    time.Duration
	RetryAfterMax time.Duration // 0: the provider's Retry-After is not read
	// BudgetPercent caps concurrent retries at this share of the upstream's active
	// requests, so retries cannot multiply an outage.
	BudgetPercent float64
}

// Outlier ejects one endpoint of the upstream after consecutive failures. A count of 0
// turns that detector off.
type Outlier struct {
	Consecutive5xx           uint32
	ConsecutiveGatewayErrors uint32
	ConsecutiveLocalFailures uint32
	BaseEjectionTime         time.Duration
	MaxEjectionPercent       uint32
}

// CircuitBreaker bounds what one Envoy has in flight to the upstream; past a bound the
// request fails at once with 503 instead of queueing.
type CircuitBreaker struct {
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32
}

// Unit is a quota window.
type Unit string

const (
	Second Unit = "second"
	Minute Unit = "minute"
	Hour   Unit = "hour"
	Day    Unit = "day"
)

// Units lists the windows in order.
var Units = []Unit{Second, Minute, Hour, Day}

// Limit is one quota. Exactly one of Requests and Tokens is set.
type Limit struct {
	// Name is the limit's field path in the routes YAML, e.g. "callers.alice.limits[0]":
	// it names the limit in 429 bodies, stats and /status.
	Name     string
	Requests uint32
	// Tokens counts the LLM tokens (input + output) the provider reported, or an estimate
	// when it reported none; see docs/CONFIG.md#token-limits.
	Tokens uint32
	Unit   Unit
	// Upstream, on a caller's limit, counts only that upstream's requests.
	Upstream string
	// Model counts only requests that name this model (the requested model, as the
	// caller's request body or Gemini path names it); "" counts every request.
	Model  string
	Shadow bool
}

// Amount is the limit's count per window, whichever kind it is.
func (l Limit) Amount() uint32 {
	if l.Tokens > 0 {
		return l.Tokens
	}
	return l.Requests
}

// WireAPI is the protocol a route's requests and answers follow, as Envoy's AI filters
// know it: it decides where token usage is read from.
type WireAPI string

const (
	WireNone            WireAPI = "none"
	WireOpenAIChat      WireAPI = "openai_chat"
	WireOpenAIResponses WireAPI = "openai_responses"
	WireAnthropic       WireAPI = "anthropic"
	WireGemini          WireAPI = "gemini"
)

// WireAPIs lists the accepted values of a route's api.
var WireAPIs = []WireAPI{WireOpenAIChat, WireOpenAIResponses, WireAnthropic, WireGemini, WireNone}

// DefaultWireAPI is the wire API of an upstream's routes unless a route overrides it.
func DefaultWireAPI(a API) WireAPI {
	switch a {
	case APIAnthropic:
		return WireAnthropic
	case APIGemini:
		return WireGemini
	default:
		return WireOpenAIChat
	}
}

// API is a provider's API family.
type API string

const (
	APIOpenAI    API = "openai"
	APIAnthropic API = "anthropic"
	APIGemini    API = "gemini"
)

// Caller is one client of the edge.
type Caller struct {
	Name        string
	Tenant      string
	TokenSHA256 []string // lower-case hex, sorted
	Upstreams   []string // sorted; each an upstream of the config
	Disabled    bool
	ExpiresAt   time.Time // zero: never
	AllowCIDRs  []netip.Prefix
	DenyCIDRs   []netip.Prefix
	BYOK        bool
	// Limits: at most one per unit for the caller as a whole, and one per unit and upstream.
	Limits []Limit
}

// TLS is the upstream TLS client setting.
type TLS struct {
	SNI    string
	CAFile string
	Verify bool
}

// HeaderMatch matches one request header. Exactly one of Exact, Prefix or Present is set.
type HeaderMatch struct {
	Name    string // lower case
	Exact   string
	Prefix  string
	Present bool
}

// Route sends matching requests to one upstream.
type Route struct {
	Name string
	// Exactly one of Path (exact) and Prefix is set.
	Path     string
	Prefix   string
	Hosts    []string // sorted; empty means any host
	Headers  []HeaderMatch
	Upstream string
	// Rewrite is the path prefix the matched Prefix (or the whole Path) is replaced with,
	// already joined with the upstream's BasePath. "" means keep the path as it is.
	Rewrite string
	// API is the wire API of the route's traffic: the route's api, or the upstream's
	// default (DefaultWireAPI).
	API WireAPI
}

// Region returns the named region.
func (c *Config) Region(name string) (Region, bool) {
	for _, r := range c.Regions {
		if r.Name == name {
			return r, true
		}
	}
	return Region{}, false
}

// Upstream returns the named upstream.
func (c *Config) Upstream(name string) (Upstream, bool) {
	for _, u := range c.Upstreams {
		if u.Name == name {
			return u, true
		}
	}
	return Upstream{}, false
}

// HasLimits reports whether any caller or upstream has a quota.
func (c *Config) HasLimits() bool {
	for _, cl := range c.Callers {
		if len(cl.Limits) > 0 {
			return true
		}
	}
	for _, u := range c.Upstreams {
		if len(u.Limits) > 0 {
			return true
		}
	}
	return false
}

// RegionNames lists the region names in order.
func (c *Config) RegionNames() []string {
	names := make([]string, len(c.Regions))
	for i, r := range c.Regions {
		names[i] = r.Name
	}
	return names
}

// Usage configures the usage ledger (the control plane's store of one record per request).
type Usage struct {
	// Enabled makes every listener send each request's usage record to the control plane
	// (usage.enabled, default true); false leaves the ledger and its access log files
	// without new records.
	Enabled         bool
	Store           string // "sqlite" or "postgres"
	SQLitePath      string // relative paths are resolved against the control plane's state dir
	PostgresDSNFile string // the file holding the DSN (it carries a password), not the DSN
	RetentionDays   int
	SpoolDir        string
	SpoolMaxBytes   int64
	AccessLog       AccessLog
	// EnvoyAccessLog makes Envoy's own JSON access log lines carry what a record holds
	// (usage.envoy_access_log, default false), for `llmedge usage import`.
	EnvoyAccessLog bool
	Prices         []Price // sorted by upstream, model
}

// AccessLog is the JSON access log files the control plane writes from the same entries.
type AccessLog struct {
	Enabled       bool
	Dir           string // relative paths are resolved against the state dir
	RetentionDays int
	MaxFileBytes  int64
}

// Price is what one upstream charges for one model, per million tokens.
type Price struct {
	Upstream string
	Model    string
	Input    float64
	Output   float64
	Cached   float64 // the input price when the YAML gives none
	Currency string
}

// Probe request kinds.
const (
	ProbeModels     = "models"     // list the models: costs nothing
	ProbeCompletion = "completion" // one output token
)

// Probes are the control plane's synthetic probes: every Interval, for each region and each
// upstream it serves, one real request through the region's edge as Caller.
type Probes struct {
	Caller    string
	TokenFile string // the caller's plain token; read at each round, never logged
	Interval  time.Duration
	Timeout   time.Duration
	Targets   []ProbeTarget // sorted by region, upstream
}

// ProbeTarget is one probe: what to call through which edge.
type ProbeTarget struct {
	Region   string
	Upstream string
	API      API
	Edge     string // base URL of the region's edge, e.g. http://127.0.0.1:10000
	Method   string
	Path     string // edge path
	Body     string // JSON; "" for GET
	Kind     string // ProbeModels or ProbeCompletion
	Model    string
}
