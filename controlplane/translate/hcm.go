package translate

import (
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Edge hardening figures, after Envoy's "configuring Envoy as an edge proxy" guidance.
const (
	bufferLimitBytes       = 32 * 1024
	h2MaxConcurrentStreams = 100
	h2StreamWindow         = 64 * 1024
	h2ConnectionWindow     = 1024 * 1024
	requestHeadersTimeout  = 10 * time.Second
	// The HCM-wide stream idle timeout is a backstop; each route sets the idle timeout of
	// its upstream, which takes precedence.
	hcmStreamIdleTimeout = 5 * time.Minute
	connectionIdle       = time.Hour
)

func connectionManager(r model.Region, usage usageSettings) (*anypb.Any, error) {
	// Envoy adds no x-envoy-* header of its own to what goes upstream (nor to responses).
	router, err := toAny(&routerv3.Router{SuppressEnvoyHeaders: true})
	if err != nil {
		return nil, err
	}
	facts, err := requestFacts()
	if err != nil {
		return nil, err
	}
	authz, err := authzFilter(r)
	if err != nil {
		return nil, err
	}
	strip, err := upstreamHeaders()
	if err != nil {
		return nil, err
	}
	marker, usageLog, err := usageRecording(usage.record)
	if err != nil {
		return nil, err
	}
	// The request's facts (model, stream) for the quota filter and the ledger: Envoy's
	// header_to_metadata and json_to_metadata write them, unless extauthz runs inside
	// Envoy, whose module reads them itself (one filter fewer to hold the body and one
	// fewer to match the path) and writes the same metadata.
	var pathModel, body *hcmv3.HttpFilter
	if !r.ExtAuthzInEnvoy {
		if pathModel, err = requestModelFromPath(); err != nil {
			return nil, err
		}
		if body, err = requestBody(); err != nil {
			return nil, err
		}
	}
	ai, err := aiProtocolManager()
	if err != nil {
		return nil, err
	}
	shed, err := overloadFilter(r.Overload)
	if err != nil {
		return nil, err
	}
	methods, err := methodFilter()
	if err != nil {
		return nil, err
	}
	// The request's usage facts are read before ext_authz: json_to_metadata clears the
	// route cache, and after ext_authz's header changes the 1.40.0 binary then found no
	// route (404) or stalled on large bodies. Only bodies within the buffer limit are
	// read (requestBody), so an unauthenticated caller costs at most that. The admission
	// ceiling comes right after the request id is recorded (its refusal carries it), before
	// anything that costs: reading the body, the ext_authz side call. A method the edge does
	// not forward (methods.go) is refused next, before the body or a caller is looked at.
	filters := present(facts, shed, methods, marker, pathModel, body, authz)
	if !r.RateLimit.IsZero() {
		// After ext_authz: the quota descriptors are built from the caller it names.
		rl, err := rateLimitFilter(r)
		if err != nil {
			return nil, err
		}
		filters = append(filters, rl)
	}
	// ai_protocol_manager next to the router: it is the first to see the answer, and
	// publishes its token usage before the quota filter charges it at stream end.
	filters = append(filters, strip, ai, &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
	})
	var accessLog *accesslogv3.AccessLog
	if !r.AccessLogOff { // regions.<name>.access_log: off
		if accessLog, err = jsonAccessLog(r.Name, usage.envoyLog); err != nil {
			return nil, err
		}
	}
	hcm := &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "ingress_" + r.Name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteConfigName(r.Name),
		}},
		// ext_authz first after recording the request's facts: nothing reaches the quota
		// filter or the router without a decision from the region's extauthz.
		HttpFilters: filters,
		// The edge sees callers directly (or through xff_trusted_hops proxies): the client
		// address, not a header the client wrote, is the source of truth.
		UseRemoteAddress:  wrapperspb.Bool(true),
		XffNumTrustedHops: r.XFFTrustedHops,
		// No caller counts as internal, loopback and private networks included: Envoy obeys
		// x-envoy-* control headers (timeouts, retries) from internal callers. An empty
		// cidr_ranges would mean "RFC1918 and loopback", so list only the unspecified
		// addresses, which can never be a peer.
		InternalAddressConfig: &hcmv3.HttpConnectionManager_InternalAddressConfig{
			CidrRanges: []*corev3.CidrRange{
				{AddressPrefix: "0.0.0.0", PrefixLen: wrapperspb.UInt32(32)},
				{AddressPrefix: "::", PrefixLen: wrapperspb.UInt32(128)},
			},
		},
		NormalizePath: wrapperspb.Bool(true),
		MergeSlashes:  true,
		// LLM APIs never need an encoded slash; refusing them closes path-confusion tricks.
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
		// Hosts match without the port, so "api.example.com:10000" reaches the
		// api.example.com routes.
		StripPortMode: &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true},
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{
			IdleTimeout:                  durationpb.New(connectionIdle),
			HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_REJECT_REQUEST,
		},
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
			MaxConcurrentStreams:        wrapperspb.UInt32(h2MaxConcurrentStreams),
			InitialStreamWindowSize:     wrapperspb.UInt32(h2StreamWindow),
			InitialConnectionWindowSize: wrapperspb.UInt32(h2ConnectionWindow),
		},
		RequestHeadersTimeout: durationpb.New(requestHeadersTimeout),
		StreamIdleTimeout:     durationpb.New(hcmStreamIdleTimeout),
		ServerName:            "llmedge",
		AccessLog:             present(accessLog, usageLog),
		LocalReplyConfig:      localReplies(r.Name),
	}
	return toAny(hcm)
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}
