package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

// jsonAccessLog writes one JSON line per request to stdout. It names only fields that hold
// no secret: the path without its query (Gemini's ?key= carries a credential) and no
// request header that can carry a token. The request id and the caller's path come from
// filter state (see requestFacts): the headers they were read from do not go upstream.
func jsonAccessLog(region string, usageFields bool) (*accesslogv3.AccessLog, error) {
	fields, err := structpb.NewStruct(map[string]any{
		"time":       "%START_TIME%",
		"region":     region,
		"request_id": requestIDFormat,
		"client":     "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
		"method":     "%REQ(:METHOD)%",
		"path":       pathFormat,
		// The path as sent upstream after the route's rewrite; for a request refused before
		// the filters ran (malformed path), the only path there is.
		"upstream_path": masked("request.url_path", credentialWord),
		"protocol":      "%PROTOCOL%",
		"status":        "%RESPONSE_CODE%",
		"flags":         "%RESPONSE_FLAGS%",
		"details":       "%RESPONSE_CODE_DETAILS%",
		"route":         "%ROUTE_NAME%",
		// Who, for usage per caller and tenant: what extauthz authenticated.
		"caller":        "%DYNAMIC_METADATA(" + wire.MetadataNamespace + ":" + wire.MetadataCaller + ")%",
		"tenant":        "%DYNAMIC_METADATA(" + wire.MetadataNamespace + ":" + wire.MetadataTenant + ")%",
		"upstream":      "%UPSTREAM_CLUSTER%",
		"upstream_host": "%UPSTREAM_HOST%",
		// Tries sent upstream (1 without retries; 0 when none was sent) and why the last
		// connection failed, if it did: with status and flags (URX: retries exhausted,
		// UO: circuit breaker) the request's final outcome.
		"attempts":                   "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
		"upstream_transport_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
		"bytes_in":                   "%BYTES_RECEIVED%",
		"bytes_out":                  "%BYTES_SENT%",
		"duration_ms":                "%DURATION%",
		"ttfb_ms":                    "%RESPONSE_DURATION%",
		"user_agent":                 masked("request.useragent", credentialWord),
	})
	if err != nil {
		return nil, err
	}
	if usageFields {
		for k, v := range EnvoyLogUsageFields {
			fields.Fields[k] = structpb.NewStringValue(v)
		}
	}
	// The path and the user agent are the caller's to write, and a caller may put a token
	// or a key there: such a value is logged as [masked], as the control plane's access log
	// masks it (usage.MaskPath). The caller's path is masked as requestFacts records it.
	logger, err := toAny(&streamv3.StdoutAccessLog{
		AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: fields},
		}},
	})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{
		Name:       "envoy.access_loggers.stdout",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: logger},
	}, nil
}

// credentialWord is the shape of a credential, as RE2 for CEL's matches(), after the
// control plane's usage.MaskPath and maskWords: a word starting like an llmedge token or a
// provider key, also after a separator ("key=sk-..."). Envoy has normalised the path by
// then (percent-encoded letters and digits decoded, an encoded slash refused), so an
// encoded token is caught too. The control plane's log also masks any segment of 32 or
// more token characters; Envoy's CEL refuses a regular expression that large (RE2 program
// size over 100), so Envoy's log masks by prefix only. The pattern has no quote or
// backslash: it sits inside a CEL string literal as it is.
const credentialWord = `(^|[ /=:,;])(` + token.Prefix + `|sk-|sk_|AIza|gsk_|xai-|[Bb]earer)`

// masked is a %CEL% command printing the string expression expr, or "[masked]" when it
// matches pattern; null when expr has no value (no user agent, or a request refused
// before the filters ran has no path of ours).
func masked(expr, pattern string) string {
	return "%CEL(" + expr + ".matches('" + pattern + "') ? '" + wire.Masked + "' : " + expr + ")%"
}

// EnvoyLogUsageFields are what Envoy's JSON access log adds with usage.envoy_access_log:
// what a usage record holds besides the line's other fields (usage.RecordFromEnvoyLine) —
// the upstream extauthz named, the request's model and stream flag, when the caller got
// the first byte of the answer (the ledger's ttfb), the header bytes, and Envoy's token
// usage (envoy.data.ai.v3.TokenUsage in protobuf text format, with the model the provider
// reported). So `llmedge usage import` can rebuild the records the gRPC usage log lost.
// Reading the typed token usage costs Envoy ≈ 20 µs of CPU per request (docs/BENCHMARKS.md),
// hence not by default.
var EnvoyLogUsageFields = map[string]string{
	"upstream_name":          "%DYNAMIC_METADATA(" + wire.MetadataNamespace + ":" + wire.MetadataUpstream + ")%",
	"model":                  "%DYNAMIC_METADATA(" + wire.RequestMetadataNamespace + ":" + wire.RequestMetadataModel + ")%",
	"stream":                 "%DYNAMIC_METADATA(" + wire.RequestMetadataNamespace + ":" + wire.RequestMetadataStream + ")%",
	"first_byte_sent_us":     "%COMMON_DURATION(DS_RX_BEG:DS_TX_BEG:us)%",
	"request_headers_bytes":  "%REQUEST_HEADERS_BYTES%",
	"response_headers_bytes": "%RESPONSE_HEADERS_BYTES%",
	"token_usage":            "%CEL(metadata.typed_filter_metadata['" + wire.TokenUsageNamespace + "'])%",
}
