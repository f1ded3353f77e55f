package translate

import (
	"fmt"
	"net/http"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	celfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

// Every reply Envoy itself generates (no route, upstream unreachable, timeout, quota,
// malformed request) is a JSON error shaped like the provider's own errors, so the official
// SDKs raise their usual exception with a readable message; each carries the request id of
// the access log line.
//
// The shape follows the route's API (its metadata llmedge.api). A request that matched no
// route, or was refused before routing (malformed path or headers), gets the shape its
// headers and path suggest: Anthropic when it carries anthropic-version or x-api-key, Gemini
// when it carries x-goog-api-key or a Gemini path (:generateContent, /v1beta/), OpenAI
// otherwise: internal/wire's APIGuesses, the same guess extauthz makes (decide.GuessAPI)
// when it has no route.

// replyCase is one kind of local reply: which replies it covers, the status its shape names,
// a machine-readable code and the message.
type replyCase struct {
	filter  *accesslogv3.AccessLogFilter
	status  int
	code    string
	message string
	// retryAfter tells the caller when to try again (a Retry-After header): the refusal
	// is about the edge's load or a service's absence, not about the request.
	retryAfter bool
	// methodRefused makes the reply a 405 with the Allow header (methods.go).
	methodRefused bool
}

// mapper is the response mapper of case c for requests filter selects, in api's shape.
func (c replyCase) mapper(api model.API, filter *accesslogv3.AccessLogFilter, requestID string) *hcmv3.ResponseMapper {
	m := &hcmv3.ResponseMapper{Filter: filter, BodyFormatOverride: errorBody(api, c, requestID)}
	if c.retryAfter {
		m.HeadersToAdd = []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "retry-after", Value: retryAfterSeconds},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}
	}
	if c.methodRefused {
		m.StatusCode = wrapperspb.UInt32(http.StatusMethodNotAllowed)
		m.HeadersToAdd = []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "allow", Value: allowHeader},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}
	}
	return m
}

// Local replies sent before the filter chain ran (Envoy refused the path or headers) have
// no request id yet: Envoy assigns it after those checks. They get a fresh id instead,
// which the access log line of the refusal does not carry.
const uniqueID = "%UNIQUE_ID%"

// guessExpr compiles one of internal/wire's API signs into a CEL condition on the request.
// Query parameters are left out: CEL sees the query only as raw text, and a match on it
// would be looser than extauthz's; such a request gets OpenAI's shape from Envoy.
func guessExpr(g wire.APISign) string {
	var terms []string
	for _, h := range g.Headers {
		terms = append(terms, fmt.Sprintf("'%s' in request.headers", h))
	}
	for _, p := range g.PathContains {
		terms = append(terms, fmt.Sprintf("request.url_path.contains('%s')", p))
	}
	return strings.Join(terms, " || ")
}

func localReplies(region string) *hcmv3.LocalReplyConfig {
	// Shed for load, routed or not: the region's admission ceiling (the local rate-limit
	// filter's details; its RL flag would otherwise read as a spent quota), or an
	// upstream's circuit breaker full (UO).
	shed := []replyCase{
		{cel("response.code_details == '" + overloadDetails + "'"), 503, "overloaded", "llmedge: region " + region + " is at its admission ceiling (regions." + region +
			".overload); the request was not forwarded. Retry after " + retryAfterSeconds + " second.", true, false},
		{flag("UO"), 503, "overloaded", "llmedge: too many requests in flight to this upstream (its circuit_breaker); the request was not forwarded. Retry after " +
			retryAfterSeconds + " second.", true, false},
	}
	// Envoy's own refusals of a malformed request name the rule broken; the message says it
	// in words, and anything not listed here gets Envoy's details.
	details := func(ds ...string) *accesslogv3.AccessLogFilter {
		var terms []string
		for _, d := range ds {
			terms = append(terms, "response.code_details == '"+d+"'")
		}
		return cel(strings.Join(terms, " || "))
	}
	generic := []replyCase{
		{filter: details(methodDetails), status: 405, code: "method_not_allowed", methodRefused: true,
			message: "llmedge: the method %REQ(:METHOD)% is not accepted; the edge forwards " + allowHeader + "."},
		{filter: details("path_normalization_failed"), status: 400, code: "invalid_path",
			message: "llmedge: the request path was refused: it may not contain an encoded slash or backslash, and must normalise to an absolute path."},
		{filter: details("http1.unexpected_underscore", "http2.unexpected_underscore", "http3.unexpected_underscore"), status: 400, code: "invalid_header",
			message: "llmedge: header names with underscores are not accepted (a proxy behind the edge could read one as the header with dashes)."},
		{filter: details("http1.content_length_and_chunked_not_allowed"), status: 400, code: "invalid_framing",
			message: "llmedge: the request carries both Content-Length and Transfer-Encoding: chunked; send one of them."},
		{filter: details("upgrade_failed"), status: 403, code: "upgrade_not_supported",
			message: "llmedge: connection upgrades (WebSocket, h2c) are not supported; send plain HTTP requests."},
		{filter: details("low_version"), status: 426, code: "http_version_not_supported",
			message: "llmedge: HTTP/1.0 is not accepted; send HTTP/1.1 or HTTP/2."},
		{statusIs(400), 400, "bad_request", "llmedge: the request is malformed (%RESPONSE_CODE_DETAILS%).", false, false},
		{statusIs(413), 413, "request_too_large", "llmedge: the request is too large", false, false},
		{statusIs(431), 431, "request_headers_too_large", "llmedge: the request headers are too large", false, false},
		{statusAtLeast(500), 500, "edge_error", "llmedge: the edge could not complete the request (%RESPONSE_CODE_DETAILS%) %LOCAL_REPLY_BODY%", false, false},
		{statusAtLeast(400), 400, "bad_request", "llmedge: the request was refused (%RESPONSE_CODE_DETAILS%) %LOCAL_REPLY_BODY%", false, false},
	}
	routed := append(append(shed, []replyCase{
		// Any UAEX reply other than extauthz's own denial means extauthz could not be asked
		// (down, timed out, or its side-call circuit breaker full).
		{flag("UAEX"), 503, "auth_unavailable", "llmedge: the auth service is unavailable; the request was not forwarded. Try again shortly.", true, false},
		{flag("RL"), 429, "rate_limit_exceeded", "llmedge: rate limit exceeded for caller %DYNAMIC_METADATA(" + wire.MetadataNamespace + ":" + wire.MetadataCaller +
			")% (limits: %RESP(X-RATELIMIT-LIMIT)%); retry after %RESP(X-RATELIMIT-RESET)% seconds.", false, false},
		{flag("RLSE"), 500, "rate_limit_unavailable", "llmedge: the rate-limit service is unavailable and region " + region + " refuses requests until it is back (ratelimit_failure: deny).", false, false},
		{flag("UT"), 504, "upstream_timeout", "llmedge: the upstream did not answer within its response_timeout.", false, false},
		{flag("SI"), 408, "stream_idle_timeout", "llmedge: the stream was idle for longer than the upstream's stream_idle_timeout.", false, false},
		{flag("UF", "UH", "URX", "UC", "UR"), 503, "upstream_unavailable", "llmedge: the upstream is unavailable (%RESPONSE_CODE_DETAILS%): %LOCAL_REPLY_BODY%", false, false},
	}...), generic...)
	unrouted := append([]replyCase{
		{flag("NR"), 404, "route_not_found", "llmedge: no route in region " + region + " matches this request (check the path prefix, and that the upstream is served in this region).", false, false},
	}, append(shed[:1:1], generic...)...)

	// A spent quota: extauthz asked the rate-limit service and refuses with 429 and a plain
	// message, shaped here like the provider's own 429 with the request id.
	var mappers []*hcmv3.ResponseMapper
	overLimit := replyCase{status: 429, code: "rate_limit_exceeded", message: "%LOCAL_REPLY_BODY%"}
	for _, api := range []model.API{model.APIOpenAI, model.APIAnthropic, model.APIGemini} {
		mappers = append(mappers, &hcmv3.ResponseMapper{
			Filter:             and(cel("response.code_details == 'ext_authz_denied' && response.code == 429"), onRoute(api)),
			BodyFormatOverride: errorBody(api, overLimit, requestIDFormat),
		})
	}
	// extauthz's other denials already carry a body shaped like the provider's errors.
	mappers = append(mappers, &hcmv3.ResponseMapper{Filter: cel("response.code_details == 'ext_authz_denied'"), BodyFormatOverride: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: "%LOCAL_REPLY_BODY%"},
		}},
		ContentType: "application/json",
	}})
	// A reply before the filters ran has no request id of ours: Envoy refused the request
	// as it arrived (an upgrade on a routed path, say), and the reply gets a fresh id.
	early := cel(fmt.Sprintf("!('%s' in filter_state)", requestIDState))
	for _, api := range []model.API{model.APIOpenAI, model.APIAnthropic, model.APIGemini} {
		for i, c := range routed {
			if i >= len(routed)-len(generic) {
				mappers = append(mappers, c.mapper(api, and(c.filter, onRoute(api), early), uniqueID))
			}
			mappers = append(mappers, c.mapper(api, and(c.filter, onRoute(api)), requestIDFormat))
		}
	}
	type guess struct {
		api   model.API
		guess *accesslogv3.AccessLogFilter
	}
	var guesses []guess
	for _, g := range wire.APIGuesses() {
		guesses = append(guesses, guess{model.API(g.API), cel(guessExpr(g))})
	}
	for _, g := range append(guesses, guess{model.APIOpenAI, nil}) {
		for i, c := range unrouted {
			// A request that got as far as routing (NR, the first case) always has its id.
			if i > 0 {
				mappers = append(mappers, c.mapper(g.api, and(c.filter, g.guess, early), uniqueID))
			}
			mappers = append(mappers, c.mapper(g.api, and(c.filter, g.guess), requestIDFormat))
		}
	}
	return &hcmv3.LocalReplyConfig{
		Mappers:    mappers,
		BodyFormat: errorBody(model.APIOpenAI, replyCase{status: 500, code: "edge_error", message: "llmedge: %LOCAL_REPLY_BODY%"}, requestIDFormat),
	}
}

// onRoute matches replies on a route whose upstream speaks api.
func onRoute(api model.API) *accesslogv3.AccessLogFilter {
	return cel(fmt.Sprintf("xds.route_metadata.filter_metadata['%s']['%s'] == '%s'", routeMetadataNamespace, routeMetadataAPI, api))
}

// errorBody is a local reply body in api's error shape:
//
//	OpenAI:    {"error": {"message", "type", "code", "request_id"}}
//	Anthropic: {"type": "error", "error": {"type", "message"}, "request_id"}
//	Gemini:    {"error": {"code", "message", "status", "request_id"}}
func errorBody(api model.API, c replyCase, requestID string) *corev3.SubstitutionFormatString {
	var v map[string]any
	switch api {
	case model.APIAnthropic:
		v = map[string]any{
			"type":       "error",
			"error":      map[string]any{"type": anthropicType(c.status), "message": c.message},
			"request_id": requestID,
		}
	case model.APIGemini:
		v = map[string]any{"error": map[string]any{
			// A lone command keeps its type in json_format: the code is a number.
			"code":       "%RESPONSE_CODE%",
			"message":    c.message,
			"status":     geminiStatus(c.status),
			"request_id": requestID,
		}}
	default:
		v = map[string]any{"error": map[string]any{
			"message":    c.message,
			"type":       openAIType(c.status),
			"code":       c.code,
			"request_id": requestID,
		}}
	}
	s, _ := structpb.NewStruct(v) // plain strings and maps: cannot fail
	return &corev3.SubstitutionFormatString{
		Format:      &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: s},
		ContentType: "application/json",
	}
}

// Error types and statuses as the providers document them for each HTTP status.
func openAIType(status int) string {
	switch {
	case status == 429:
		return "requests"
	case status == 408 || status >= 500:
		return "server_error"
	}
	return "invalid_request_error"
}

func anthropicType(status int) string {
	switch {
	case status == 404:
		return "not_found_error"
	case status == 413:
		return "request_too_large"
	case status == 429:
		return "rate_limit_error"
	case status == 408 || status == 504:
		return "timeout_error"
	case status >= 500:
		return "api_error"
	}
	return "invalid_request_error"
}

func geminiStatus(status int) string {
	switch status {
	case 404:
		return "NOT_FOUND"
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 503:
		return "UNAVAILABLE"
	case 408, 504:
		return "DEADLINE_EXCEEDED"
	}
	if status >= 500 {
		return "INTERNAL"
	}
	return "INVALID_ARGUMENT"
}

func flag(flags ...string) *accesslogv3.AccessLogFilter {
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
		ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: flags},
	}}
}

func statusIs(code uint32) *accesslogv3.AccessLogFilter {
	return statusFilter(accesslogv3.ComparisonFilter_EQ, code)
}

func statusAtLeast(code uint32) *accesslogv3.AccessLogFilter {
	return statusFilter(accesslogv3.ComparisonFilter_GE, code)
}

func statusFilter(op accesslogv3.ComparisonFilter_Op, code uint32) *accesslogv3.AccessLogFilter {
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{
		StatusCodeFilter: &accesslogv3.StatusCodeFilter{Comparison: &accesslogv3.ComparisonFilter{
			Op:    op,
			Value: &corev3.RuntimeUInt32{DefaultValue: code, RuntimeKey: "llmedge.local_reply.status"},
		}},
	}}
}

func cel(expr string) *accesslogv3.AccessLogFilter {
	a, _ := toAny(&celfilterv3.ExpressionFilter{Expression: expr}) // a string field: cannot fail
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
		ExtensionFilter: &accesslogv3.ExtensionFilter{
			Name:       "envoy.access_loggers.extension_filters.cel",
			ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: a},
		},
	}}
}

// and combines the non-nil filters.
func and(fs ...*accesslogv3.AccessLogFilter) *accesslogv3.AccessLogFilter {
	var set []*accesslogv3.AccessLogFilter
	for _, f := range fs {
		if f != nil {
			set = append(set, f)
		}
	}
	if len(set) == 1 {
		return set[0]
	}
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{
		AndFilter: &accesslogv3.AndFilter{Filters: set},
	}}
}
