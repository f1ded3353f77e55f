package translate

import (
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	setfilterstatecommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	setfilterstatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

// What the provider sees: the caller's own API headers plus the injected key, and nothing
// of the edge or of the caller's network unless the upstream opts in.
//
// Envoy hands the upstream the very header map the access log and local replies read, so
// anything removed for the provider is gone for them too. The request id and the path the
// caller sent are therefore copied into filter state first (requestFacts), and the log and
// the replies read them from there; the path is kept masked where it looks like a
// credential (accesslog.go, masked).

// PathState is the filter state object holding the path the caller sent (masked where it
// looks like a credential), which the access log reads.
const PathState = "llmedge.path"

const (
	// Filter state written by requestFacts, read by the access log and local replies.
	requestIDState  = wire.RequestIDState
	pathState       = PathState
	requestIDFormat = "%FILTER_STATE(" + requestIDState + ":PLAIN)%"
	pathFormat      = "%FILTER_STATE(" + pathState + ":PLAIN)%"

	// Route metadata naming the route's provider API, which local replies are shaped after.
	routeMetadataNamespace = "llmedge"
	routeMetadataAPI       = "api"
)

// strippedHeaderPrefixes and strippedHeaders never reach a provider: Envoy's own headers
// (x-envoy-external-address, x-envoy-original-path, ...), what describes the caller's
// network or the proxies in front of the edge, the request id, and credentials meant for
// something other than the provider (cookies, proxy credentials). The provider key header
// is set by extauthz and the caller's credential headers are removed by it.
var (
	strippedHeaderPrefixes = []string{"x-envoy-", "x-forwarded-"}
	strippedHeaders        = []string{
		"cookie", "proxy-authorization",
		"x-request-id", "forwarded", "via",
		"x-real-ip", "x-client-ip", "true-client-ip", "x-cluster-client-ip", "cf-connecting-ip", "fastly-client-ip",
	}
)

// requestFacts records the request id and the path as the caller sent it (without its
// query, which may carry a credential) before anything rewrites or removes them. It runs
// first, so that even a request ext_authz refuses has both.
func requestFacts() (*hcmv3.HttpFilter, error) {
	value := func(key, format string) *setfilterstatecommonv3.FilterStateValue {
		return &setfilterstatecommonv3.FilterStateValue{
			Key:        &setfilterstatecommonv3.FilterStateValue_ObjectKey{ObjectKey: key},
			FactoryKey: "envoy.string",
			Value: &setfilterstatecommonv3.FilterStateValue_FormatString{FormatString: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: format},
				}},
			}},
			SkipIfEmpty: true,
		}
	}
	cfg, err := toAny(&setfilterstatev3.Config{OnRequestHeaders: []*setfilterstatecommonv3.FilterStateValue{
		value(requestIDState, "%REQ(X-REQUEST-ID)%"),
		value(pathState, masked("request.url_path", credentialWord)),
	}})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.set_filter_state", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// upstreamHeaders removes, just before the router, every header the provider must not see.
// Together with the router's suppress_envoy_headers (which stops x-envoy-original-path,
// x-envoy-expected-rq-timeout-ms and the like being added after it) the upstream request
// carries only what the caller sent plus the injected key. A route whose upstream opts in
// adds the client address or request id back (routeHeadersToAdd).
//
// It must stay after every filter that may clear the route cache (json_to_metadata does once
// it has read a body; ext_authz, after it, computes the route again): Envoy finds no route
// for a request without x-forwarded-proto, so a route computed after this filter is a 404.
func upstreamHeaders() (*hcmv3.HttpFilter, error) {
	var ms []*mutationrulesv3.HeaderMutation
	for _, p := range strippedHeaderPrefixes {
		ms = append(ms, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_RemoveOnMatch_{
			RemoveOnMatch: &mutationrulesv3.HeaderMutation_RemoveOnMatch{KeyMatcher: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p},
			}},
		}})
	}
	for _, h := range strippedHeaders {
		ms = append(ms, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_Remove{Remove: h}})
	}
	cfg, err := toAny(&headermutationv3.HeaderMutation{Mutations: &headermutationv3.Mutations{RequestMutations: ms}})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.header_mutation", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// routeHeadersToAdd are the opt-ins of the route's upstream: the caller's address (the one
// Envoy trusts, after xff_trusted_hops) as the only X-Forwarded-For entry, and the request
// id the access log records.
func routeHeadersToAdd(u model.Upstream) []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	set := func(k, v string) {
		out = append(out, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: k, Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	if u.ForwardClientIP {
		set("x-forwarded-for", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
	}
	if u.ForwardRequestID {
		set("x-request-id", requestIDFormat)
	}
	return out
}
