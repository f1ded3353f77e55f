package translate

import (
	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skipactionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	aipmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ai_protocol_manager/v3"
	headertometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_to_metadata/v3"
	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	setmetadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	aiv3 "github.com/envoyproxy/go-control-plane/envoy/type/ai/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

// Reading LLM traffic without touching it (docs/USAGE.md is the contract with the ledger).
//
// Envoy 1.40's ai_protocol_manager extracts token usage from 2xx JSON and SSE answers as
// they stream through (response_handling.token_usage) and publishes it as typed dynamic
// metadata. Its request_handling is never enabled: on the 1.40.0 binary it re-serialises
// the RESPONSE (whitespace, key order, Content-Length dropped, SSE events re-split), and
// the edge promises callers the provider's bytes. The requested model and the stream flag
// come from json_to_metadata instead, which only reads the request body, and Gemini's
// model from its path.

const (
	aiProtocolManagerFilterName = "envoy.filters.http.ai_protocol_manager"
	requestMarkerFilterName     = "envoy.filters.http.set_metadata"
	requestModelPathFilterName  = "envoy.filters.http.header_to_metadata"
	requestBodyFilterName       = "envoy.filters.http.json_to_metadata"
)

var wireProtocols = map[model.WireAPI]aiv3.LLMProtocol{
	model.WireOpenAIChat:      aiv3.LLMProtocol_OPENAI_CHAT_COMPLETIONS,
	model.WireOpenAIResponses: aiv3.LLMProtocol_OPENAI_RESPONSES,
	model.WireAnthropic:       aiv3.LLMProtocol_ANTHROPIC_MESSAGES,
	model.WireGemini:          aiv3.LLMProtocol_GEMINI_GENERATE_CONTENT,
}

// requestMarker writes the llmedge.request namespace on every request before anything
// can refuse it: Envoy's gRPC access log sends no metadata at all (not even extauthz's
// caller or the typed token usage) unless some untyped namespace exists.
func requestMarker() (*hcmv3.HttpFilter, error) {
	cfg, err := toAny(&setmetadatav3.Config{Metadata: []*setmetadatav3.Metadata{{
		MetadataNamespace: wire.RequestMetadataNamespace,
		Value: &structpb.Struct{Fields: map[string]*structpb.Value{
			wire.RequestMetadataStream: structpb.NewBoolValue(false),
		}},
	}}})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: requestMarkerFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// requestModelFromPath reads Gemini's model from the path (Gemini names it there, not in
// the body); a body's "model" (read next) wins where both exist. Gemini's stream flag is
// in the path too (streamGenerateContent), but a regex rewrite can only copy text out of
// the path, never write "true": the ledger reads it from the access log entry's path
// (usage.RecordFromEntry), which costs the request nothing.
func requestModelFromPath() (*hcmv3.HttpFilter, error) {
	fromPath := func(key, regex, substitution string) *headertometadatav3.Config_Rule {
		return &headertometadatav3.Config_Rule{
			Header: ":path",
			OnHeaderPresent: &headertometadatav3.Config_KeyValuePair{
				MetadataNamespace: wire.RequestMetadataNamespace,
				Key:               key,
				Type:              headertometadatav3.Config_STRING,
				RegexValueRewrite: &matcherv3.RegexMatchAndSubstitute{
					Pattern:      &matcherv3.RegexMatcher{Regex: regex},
					Substitution: substitution,
				},
			},
		}
	}
	cfg, err := toAny(&headertometadatav3.Config{RequestRules: []*headertometadatav3.Config_Rule{
		fromPath(wire.RequestMetadataModel, wire.GeminiModelPath, `\1`),
	}})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: requestModelPathFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// requestBody copies the request body's "model" and "stream" into llmedge.request, for
// quota descriptors (a model-scoped limit) and the ledger. It only reads the body.
func requestBody() (*hcmv3.HttpFilter, error) {
	pair := func(key string, typ jsontometadatav3.JsonToMetadata_ValueType) *jsontometadatav3.JsonToMetadata_KeyValuePair {
		return &jsontometadatav3.JsonToMetadata_KeyValuePair{MetadataNamespace: wire.RequestMetadataNamespace, Key: key, Type: typ}
	}
	rule := func(key string, typ jsontometadatav3.JsonToMetadata_ValueType) *jsontometadatav3.JsonToMetadata_Rule {
		return &jsontometadatav3.JsonToMetadata_Rule{
			Selectors: []*jsontometadatav3.JsonToMetadata_Selector{{Selector: &jsontometadatav3.JsonToMetadata_Selector_Key{Key: key}}},
			OnPresent: pair(key, typ),
		}
	}
	cfg, err := toAny(&jsontometadatav3.JsonToMetadata{RequestRules: &jsontometadatav3.JsonToMetadata_MatchRules{
		Rules: []*jsontometadatav3.JsonToMetadata_Rule{
			rule(wire.RequestMetadataModel, jsontometadatav3.JsonToMetadata_STRING),
			rule(wire.RequestMetadataStream, jsontometadatav3.JsonToMetadata_PROTOBUF_VALUE),
		},
	}})
	if err != nil {
		return nil, err
	}
	// json_to_metadata holds the body until it is complete, and a held body over the
	// buffer limit is refused with 413: only bodies that declare a Content-Length within
	// the limit are read; larger ones (long contexts, images) stream on untouched, and
	// their requested model is the one the provider reports.
	wrapped, err := skipUnlessHeader(requestBodyFilterName, cfg, "content-length", smallBodyRegex)
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: requestBodyFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: wrapped}}, nil
}

// smallBodyRegex matches a Content-Length of at most 32767 bytes, within the listener's
// buffer limit (bufferLimitBytes).
const smallBodyRegex = `^(?:[0-9]{1,4}|[12][0-9]{4}|3[01][0-9]{3}|32[0-6][0-9]{2}|327[0-5][0-9]|3276[0-7])$`

// skipUnlessHeader wraps the HTTP filter name/cfg in a matcher that skips it for a request
// whose header does not match the RE2 regex (an absent header does not match): the filter
// then costs a header match and nothing else on the requests it is not for.
func skipUnlessHeader(name string, cfg *anypb.Any, header, regex string) (*anypb.Any, error) {
	skip, err := toAny(&skipactionv3.SkipFilter{})
	if err != nil {
		return nil, err
	}
	input, err := toAny(&matcherv3.HttpRequestHeaderMatchInput{HeaderName: header})
	if err != nil {
		return nil, err
	}
	return toAny(&matchingv3.ExtensionWithMatcher{
		XdsMatcher: &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherList_{MatcherList: &xdsmatcherv3.Matcher_MatcherList{
			Matchers: []*xdsmatcherv3.Matcher_MatcherList_FieldMatcher{{
				Predicate: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_NotMatcher{
					NotMatcher: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_{
						SinglePredicate: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate{
							Input: &xdscorev3.TypedExtensionConfig{Name: header, TypedConfig: input},
							Matcher: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: &xdsmatcherv3.StringMatcher{
								MatchPattern: &xdsmatcherv3.StringMatcher_SafeRegex{SafeRegex: &xdsmatcherv3.RegexMatcher{Regex: regex, EngineType: &xdsmatcherv3.RegexMatcher_GoogleRe2{GoogleRe2: &xdsmatcherv3.RegexMatcher_GoogleRE2{}}}},
							}},
						},
					}},
				}},
				OnMatch: &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{Name: "skip", TypedConfig: skip}}},
			}},
		}}},
		ExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: cfg},
	})
}

// aiProtocolManager extracts token usage from the answers of the routes that declare a
// wire API (aiPerRoute); it never holds or changes a response.
func aiProtocolManager() (*hcmv3.HttpFilter, error) {
	cfg, err := toAny(&aipmv3.AiProtocolManager{ResponseHandling: &aipmv3.ResponseHandling{
		TokenUsage: &aipmv3.TokenUsageExtraction{},
	}})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: aiProtocolManagerFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// aiPerRoute declares a route an AI endpoint of its wire API; nil for api: none. Only the
// request side's protocol is named: with no request_handling in the filter the request
// passes untouched, and response extraction inherits the protocol from it.
func aiPerRoute(api model.WireAPI) (*anypb.Any, error) {
	p, ok := wireProtocols[api]
	if !ok {
		return nil, nil
	}
	return toAny(&aipmv3.AiProtocolManagerPerRoute{Request: &aipmv3.RequestPerRoute{LlmProtocol: p}})
}

// addPerRoute adds a route's usage and quota settings to its typed_per_filter_config: its
// wire API for token extraction, and all its rate limits (requests and tokens alike).
func addPerRoute(perFilter map[string]*anypb.Any, rt model.Route, limits []*routev3.RateLimit) error {
	ai, err := aiPerRoute(rt.API)
	if err != nil {
		return err
	}
	if ai != nil {
		perFilter[aiProtocolManagerFilterName] = ai
	}
	rl, err := rateLimitPerRoute(limits)
	if err != nil {
		return err
	}
	if rl != nil {
		perFilter[rateLimitFilterName] = rl
	}
	return nil
}
