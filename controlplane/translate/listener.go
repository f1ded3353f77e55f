package translate

import (
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	reqwithoutqueryv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/formatter/req_without_query/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
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

func listener(r model.Region) (*listenerv3.Listener, error) {
	hcm, err := connectionManager(r)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:                          ListenerName(r.Name),
		Address:                       socketAddress(r.ListenAddress, r.ListenPort),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimitBytes),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
			}},
		}},
	}, nil
}

func connectionManager(r model.Region) (*anypb.Any, error) {
	// Envoy adds no x-envoy-* header of its own to what goes upstream (nor to responses).
	router, err := toAny(&routerv3.Router{SuppressEnvoyHeaders: true})
	if err != nil {
		return nil, err
	}
	facts, err := requestFacts()
	if err != nil {
		return nil, err
	}
	authz, err := extAuthzFilter()
	if err != nil {
		return nil, err
	}
	strip, err := upstreamHeaders()
	if err != nil {
		return nil, err
	}
	filters := []*hcmv3.HttpFilter{facts, authz}
	if !r.RateLimit.IsZero() {
		// After ext_authz: the quota descriptors are built from the caller it names.
		rl, err := rateLimitFilter(r)
		if err != nil {
			return nil, err
		}
		filters = append(filters, rl)
	}
	filters = append(filters, strip, &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
	})
	accessLog, err := jsonAccessLog(r.Name)
	if err != nil {
		return nil, err
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
		AccessLog:             []*accesslogv3.AccessLog{accessLog},
		LocalReplyConfig:      localReplies(r.Name),
	}
	return toAny(hcm)
}

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
		"caller":        "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:caller)%",
		"tenant":        "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:tenant)%",
		"upstream":      "%UPSTREAM_CLUSTER%",
		"upstream_host": "%UPSTREAM_HOST%",
		"bytes_in":      "%BYTES_RECEIVED%",
		"bytes_out":     "%BYTES_SENT%",
		"duration_ms":   "%DURATION%",
		"ttfb_ms":       "%RESPONSE_DURATION%",
		"user_agent":    "%REQ(USER-AGENT)%",
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

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
