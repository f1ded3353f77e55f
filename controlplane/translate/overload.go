package translate

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Past saturation an edge that admits everything queues it: requests wait for the CPU in
// Envoy and at the ext_authz side call until they time out, seconds later, and the work
// done for them is thrown away. The admission ceiling refuses what exceeds the region's
// configured rate at the front of the chain, before the body is read or a side call is
// made, with a 503 "overloaded" that costs a fraction of a served request, so the
// requests admitted keep their latency and the edge recovers as soon as the load falls.

// OverloadStatPrefix names the admission ceiling's Envoy stats: the shed counter is
// <prefix>.http_local_rate_limit.rate_limited (envoy_http_local_rate_limit_rate_limited
// with envoy_local_http_ratelimit_prefix="llmedge_overload" in Prometheus).
const OverloadStatPrefix = "llmedge_overload"

// overloadFilterName is the admission ceiling's filter. Only the callers' listener has it:
// a request forwarded from another region was admitted where its caller entered.
const overloadFilterName = "envoy.filters.http.local_ratelimit"

// overloadDetails is Envoy's response code details for a request the ceiling refused.
const overloadDetails = "local_rate_limited"

// retryAfterSeconds is what a shed request is told to wait: about the time the token
// bucket (or the breaker's in-flight requests) needs to make room again.
const retryAfterSeconds = "1"

// overloadFill is how often the token bucket refills: often enough that admissions are
// spread over the second rather than granted in one block at its start.
const overloadFill = 50 * time.Millisecond

// overloadFilter is the region's admission ceiling (nil without one): a token bucket
// shared by the Envoy's workers, refilled every overloadFill (every second below 20
// requests a second, where a 50 ms share would round to nothing).
func overloadFilter(o model.Overload) (*hcmv3.HttpFilter, error) {
	if o.MaxRequestsPerSecond == 0 {
		return nil, nil
	}
	fill, perFill := time.Second, o.MaxRequestsPerSecond
	if perSecond := uint32(time.Second / overloadFill); o.MaxRequestsPerSecond >= perSecond {
		fill, perFill = overloadFill, (o.MaxRequestsPerSecond+perSecond-1)/perSecond
	}
	all := &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}
	cfg, err := toAny(&localratelimitv3.LocalRateLimit{
		StatPrefix: OverloadStatPrefix,
		Status:     &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     max(o.Burst, perFill),
			TokensPerFill: wrapperspb.UInt32(perFill),
			FillInterval:  durationpb.New(fill),
		},
		FilterEnabled:  all,
		FilterEnforced: all,
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: overloadFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}
