// Package wire names what the control plane and extauthz must agree on without sharing
// code paths: the per-route context extensions Envoy sends with each check, the headers a
// caller may use, the dynamic metadata extauthz hands to later filters, and the xDS names
// of llmedge's own resources. One definition, so the two binaries cannot drift.
package wire

import "time"

// Context extension keys set on every route (ExtAuthzPerRoute.check_settings), so extauthz
// never guesses the route from the path.
const (
	ContextRegion   = "llmedge.region"
	ContextUpstream = "llmedge.upstream"
	ContextRoute    = "llmedge.route"
)

// Caller-facing headers.
const (
	// TokenHeader carries a bring-your-own-key caller's llmedge token while the provider's
	// own header carries its provider key.
	TokenHeader = "llmedge-token"
	// InternalHeaderPrefix starts headers only the edge may set; any a caller sends is
	// removed before the request goes upstream.
	InternalHeaderPrefix = "x-llmedge-"
)

// Provider credential headers: where each API family's native SDK sends its key, so where
// a caller sends its llmedge token and where extauthz injects the provider key by default.
// Lower case, as Envoy hands headers to extauthz.
const (
	// HeaderAuthorization carries "Bearer <key>" (OpenAI and OpenAI-compatible APIs; the
	// Anthropic SDK's auth_token).
	HeaderAuthorization = "authorization"
	// HeaderAPIKey is Anthropic's key header.
	HeaderAPIKey = "x-api-key"
	// HeaderGoogAPIKey is Gemini's key header.
	HeaderGoogAPIKey = "x-goog-api-key"
)

// CredentialHeaders are the request headers in which the native SDKs send a key, plus
// TokenHeader. Envoy forwards them (and InternalHeaderPrefix headers) to extauthz.
var CredentialHeaders = []string{HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey, TokenHeader}

// KeyQueryParam is Gemini's API key query parameter.
const KeyQueryParam = "key"

// Masked stands in, in every log, for a value shaped like a credential: a path segment or
// a user agent word a caller wrote (the control plane's access log, Envoy's own).
const Masked = "[masked]"

// Dynamic metadata written by extauthz under MetadataNamespace, for rate limits and logs.
const (
	MetadataNamespace = "envoy.filters.http.ext_authz"
	MetadataCaller    = "caller"
	MetadataTenant    = "tenant"
	MetadataUpstream  = "upstream"
)

// extauthz inside Envoy: a Go dynamic module (Envoy's envoy.filters.http.dynamic_modules)
// that makes extauthz's decision in-process in place of the ext_authz side call. To the rest
// of the config it looks like ext_authz: it writes the caller, tenant and upstream under
// AuthzMetadataNamespace and its refusals carry the response code details ext_authz's do,
// so access logs, rate-limit descriptors and local reply mappers need no second form.
const (
	// AuthzModuleName is the module's name: Envoy loads lib<name>.so from
	// ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
	AuthzModuleName = "llmedge"
	// AuthzModuleFilter is the filter_name the module's HTTP filter is created with.
	AuthzModuleFilter = "authz"
	// KeyFailoverModuleFilter is the filter_name of the module's upstream HTTP filter: key
	// failover on retries, per try, without a side call (see AttemptHeader).
	KeyFailoverModuleFilter = "key_failover"
	// AuthzRouteMetadata is the route metadata namespace (filter_metadata) the module reads
	// a route's context from, under the Context* keys ext_authz gets as context extensions.
	AuthzRouteMetadata = "llmedge.authz"
	// AuthzMetadataNamespace is the dynamic metadata namespace the module writes: the same
	// one extauthz's answers fill through ext_authz.
	AuthzMetadataNamespace = MetadataNamespace
)

// PolicyResourceName is the name of the ExtensionConfig resource (type
// envoy.config.core.v3.TypedExtensionConfig) carrying a region's llmedge.authz.v1.Policy.
const PolicyResourceName = "llmedge.authz.policy"

// ExtAuthzClusterName is the cluster through which a region's Envoys reach its extauthz.
const ExtAuthzClusterName = "llmedge_extauthz"

// Rate limiting: the domain of every RateLimitConfig and rate-limit filter, and the cluster
// through which a region's Envoys reach its envoyproxy/ratelimit.
const (
	RateLimitDomain = "llmedge"
	// RateLimitTimeout bounds a question to the region's rate-limit service, from Envoy's
	// rate-limit filter and from extauthz alike. The service sits next to them and a
	// decision is a Redis round trip; past it the region's failure mode decides instead of
	// making the caller wait.
	RateLimitTimeout     = 100 * time.Millisecond
	RateLimitClusterName = "llmedge_ratelimit"
)

// API families, which shape error bodies.
const (
	APIOpenAI    = "openai"
	APIAnthropic = "anthropic"
	APIGemini    = "gemini"
)

// APISign is what in a request names one API family: the headers its native SDKs send, a
// query parameter, or a substring of the path.
type APISign struct {
	API          string
	Headers      []string
	QueryParams  []string
	PathContains []string
}

// APIGuesses are the signs, in the order they are tried, by which a reply that no route or
// policy shapes (no route matched, the request was refused before routing, extauthz has no
// policy yet) picks the error shape the client most likely understands; a request with none
// of them gets APIOpenAI's shape. extauthz evaluates them on the request (decide.GuessAPI),
// the control plane compiles them into Envoy's local reply mappers: one list, so the two
// never answer the same request in different shapes.
func APIGuesses() []APISign {
	return []APISign{
		// The Anthropic SDKs send anthropic-version and x-api-key.
		{API: APIAnthropic, Headers: []string{"anthropic-version", HeaderAPIKey}},
		// The Gemini SDKs send x-goog-api-key or ?key=, to paths only Gemini uses.
		{
			API:          APIGemini,
			Headers:      []string{HeaderGoogAPIKey},
			QueryParams:  []string{KeyQueryParam},
			PathContains: []string{":generateContent", ":streamGenerateContent", "/v1beta/"},
		},
	}
}

// Usage ledger contract (docs/USAGE.md): what the Envoy side puts into each gRPC access log
// entry and the control plane's ledger reads back.
const (
	// RequestMetadataNamespace is the untyped dynamic metadata namespace that holds what the
	// request says about itself: the requested model and the stream flag (json_to_metadata
	// and header_to_metadata fill it, or the module when extauthz runs inside Envoy).
	// Its presence also makes Envoy attach the typed AI namespaces to the entry.
	RequestMetadataNamespace = "llmedge.request"
	RequestMetadataModel     = "model"
	RequestMetadataStream    = "stream"
	// BodyReadLimit is the largest Content-Length of a request whose body the edge reads
	// for its facts (model, stream): within the listener's 32 KiB buffer limit. Larger
	// bodies, and bodies without a Content-Length, stream on unread.
	BodyReadLimit = 32767
	// GeminiModelPath captures the model of a Gemini generateContent path
	// (/v1beta/models/gemini-2.5-flash:streamGenerateContent) as its first group; any other
	// path matches with the group empty. An RE2 pattern: Envoy's header_to_metadata and the
	// module (extauthz.RequestFacts) both use it.
	GeminiModelPath = `^(?:[^?]*/models/([^/:?]+):(?:stream)?[gG]enerate[cC]ontent(?:\?.*)?|.*)$`
	// RequestIDState is the filter state object (envoy.string) holding the edge's request
	// id; list it in the access log's filter_state_objects_to_log.
	RequestIDState = "llmedge.request_id"
	// TokenUsageNamespace (envoy.data.ai.v3.TokenUsage) and RequestInfoNamespace
	// (envoy.data.ai.v3.RequestInfo) are Envoy's typed dynamic metadata namespaces.
	TokenUsageNamespace  = "envoy.ai.token_usage"
	RequestInfoNamespace = "envoy.ai.request_info"
	// AccessLogName is the log_name Envoy's gRPC access log sends in its identifier.
	AccessLogName = "llmedge.usage"
)

// Edge-to-edge forwarding (docs/SECURITY.md, "Between regions"). ContextHop on a route
// tells extauthz what kind of hop the request is on; absent means an ordinary route.
const (
	ContextHop = "llmedge.hop"
	// HopForward: a caller's route whose upstream is reached through a peer (or, in a
	// region with a hot standby, through the region's own local listener first): extauthz
	// authenticates the caller, injects no key and names the caller in the identity
	// headers for the next hop.
	HopForward = "forward"
	// HopPeer: a route of the peer listener, reached only over mutual TLS by another
	// region's edge, or of the local listener, reached only from inside the region's own
	// Envoy: extauthz trusts the identity headers instead of a token and injects the key.
	HopPeer = "peer"
)

// Identity headers on a forwarded hop. They start with InternalHeaderPrefix, so whatever a
// caller sends under these names is removed at the edge it connects to.
const (
	HeaderCaller   = InternalHeaderPrefix + "caller"
	HeaderTenant   = InternalHeaderPrefix + "tenant"
	HeaderUpstream = InternalHeaderPrefix + "upstream"
)

// Key failover on retries: the upstream ext_proc filter of an upstream cluster
// (controlplane/translate) names its upstream in this gRPC metadata entry of every call,
// and extauthz reads the try number from AttemptHeader, which Envoy's router adds. The
// module's upstream filter (KeyFailoverModuleFilter) reads it too; its C side
// (extauthz/module/hooks.c) spells the name out.
const (
	ExtProcUpstreamMetadata = "llmedge-upstream"
	AttemptHeader           = "x-envoy-attempt-count"
)
