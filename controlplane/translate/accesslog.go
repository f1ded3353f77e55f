package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	reqwithoutqueryv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/formatter/req_without_query/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/internal/wire"
)

// jsonAccessLog writes one JSON line per request to stdout. It names only fields that hold
// no secret: the path without its query (Gemini's ?key= carries a credential) and no
// request header that can carry a token. The request id and the caller's path come from
// filter state (see requestFacts): the headers they were read from do not go upstream.
func jsonAccessLog(region string) (*accesslogv3.AccessLog, error) {
	withoutQuery, err := toAny(&reqwithoutqueryv3.ReqWithoutQuery{})
	if err != nil {
		return nil, err
	}
	fields, err := structpb.NewStruct(map[string]any{
		"time":       "%START_TIME%",
		"region":     region,
		"request_id": requestIDFormat,
		"client":     "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
		"method":     "%REQ(:METHOD)%",
		"path":       pathFormat,
		// The path as sent upstream after the route's rewrite; for a request refused before
		// the filters ran (malformed path), the only path there is.
		"upstream_path": "%REQ_WITHOUT_QUERY(:PATH)%",
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
		"user_agent":                 "%REQ(USER-AGENT)%",
	})
	if err != nil {
		return nil, err
	}
	logger, err := toAny(&streamv3.StdoutAccessLog{
		AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: fields},
			Formatters: []*corev3.TypedExtensionConfig{{
				Name:        "envoy.formatter.req_without_query",
				TypedConfig: withoutQuery,
			}},
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
