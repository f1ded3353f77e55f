// Package wire names what the control plane and extauthz must agree on without sharing
// code paths: the per-route context extensions Envoy sends with each check, the headers a
// caller may use, the dynamic metadata extauthz hands to later filters, and the xDS names
// of llmedge's own resources. One definition, so the two binaries cannot drift.
package wire

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

// CredentialHeaders are the request headers in which the native SDKs send a key, plus
// TokenHeader. Envoy forwards them (and InternalHeaderPrefix headers) to extauthz.
var CredentialHeaders = []string{"authorization", "x-api-key", "x-goog-api-key", TokenHeader}

// KeyQueryParam is Gemini's API key query parameter.
const KeyQueryParam = "key"

// Dynamic metadata written by extauthz under MetadataNamespace, for rate limits and logs.
const (
	MetadataNamespace = "envoy.filters.http.ext_authz"
	MetadataCaller    = "caller"
	MetadataTenant    = "tenant"
	MetadataUpstream  = "upstream"
)

// PolicyResourceName is the name of the ExtensionConfig resource (type
// envoy.config.core.v3.TypedExtensionConfig) carrying a region's llmedge.authz.v1.Policy.
const PolicyResourceName = "llmedge.authz.policy"

// ExtAuthzClusterName is the cluster through which a region's Envoys reach its extauthz.
const ExtAuthzClusterName = "llmedge_extauthz"

// Rate limiting: the domain of every RateLimitConfig and rate-limit filter, and the cluster
// through which a region's Envoys reach its envoyproxy/ratelimit.
const (
	RateLimitDomain      = "llmedge"
	RateLimitClusterName = "llmedge_ratelimit"
)
