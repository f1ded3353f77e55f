package translate

import (
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

const upstreamConnectionIdle = 60 * time.Second

func cluster(r model.Region, u model.Upstream, secrets secretSet) (*clusterv3.Cluster, error) {
	c := &clusterv3.Cluster{
		Name:                          ClusterName(u.Name),
		ConnectTimeout:                durationpb.New(u.ConnectTimeout),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimitBytes),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: ClusterName(u.Name),
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address:  socketAddress(u.ConnectHost, u.ConnectPort),
						Hostname: u.Host,
					}},
				}},
			}},
		},
	}
	c.CircuitBreakers = upstreamBreakers(u)
	c.OutlierDetection = outlierDetection(u.Outlier)
	if isIP(u.ConnectHost) {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		// LOGICAL_DNS: providers sit behind large anycast/CDN fronts; connecting to whatever
		// the resolver returns now (as Envoy recommends for large web services) beats
		// balancing over a changing address set.
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	if r.EgressAddress != "" {
		c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{
			Address:       r.EgressAddress,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
		}}
	}
	opts, err := protocolOptions(r, u)
	if err != nil {
		return nil, err
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts,
	}
	if u.TLS != nil {
		ts, err := upstreamTLS(u, secrets)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}

// upstreamBreakers bounds what one Envoy has in flight to the upstream, so that past
// saturation requests fail at once (503, flag UO) instead of piling up, and carries the
// retry budget: retries in flight may be at most BudgetPercent of the active requests
// (but always a few, for a quiet upstream), so retries can never multiply an outage.
func upstreamBreakers(u model.Upstream) *clusterv3.CircuitBreakers {
	cb := u.CircuitBreaker
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     wrapperspb.UInt32(cb.MaxConnections),
		MaxPendingRequests: wrapperspb.UInt32(cb.MaxPendingRequests),
		MaxRequests:        wrapperspb.UInt32(cb.MaxRequests),
		RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       &typev3.Percent{Value: u.Retries.BudgetPercent},
			MinRetryConcurrency: wrapperspb.UInt32(minRetryConcurrency),
		},
		// remaining_* gauges show how close the upstream is to its bounds.
		TrackRemaining: true,
	}}}
}

// minRetryConcurrency lets a few retries through whatever the budget, so a single
// request to a quiet upstream is still retried.
const minRetryConcurrency = 3

// outlierDetection ejects an endpoint after consecutive failures. Local-origin failures
// (connect errors, resets, timeouts) are counted apart from the provider's own 5xx, so a
// broken network path and a provider's bad minute are told apart in the stats. Only
// consecutive detectors: success-rate detection needs several endpoints and steady volume.
func outlierDetection(o *model.Outlier) *clusterv3.OutlierDetection {
	if o == nil {
		return nil
	}
	enforce := func(n uint32) *wrapperspb.UInt32Value {
		if n == 0 {
			return wrapperspb.UInt32(0)
		}
		return wrapperspb.UInt32(100)
	}
	count := func(n uint32) *wrapperspb.UInt32Value {
		if n == 0 {
			return nil // off: enforcing 0 already
		}
		return wrapperspb.UInt32(n)
	}
	return &clusterv3.OutlierDetection{
		Consecutive_5Xx:                        count(o.Consecutive5xx),
		EnforcingConsecutive_5Xx:               enforce(o.Consecutive5xx),
		ConsecutiveGatewayFailure:              count(o.ConsecutiveGatewayErrors),
		EnforcingConsecutiveGatewayFailure:     enforce(o.ConsecutiveGatewayErrors),
		SplitExternalLocalOriginErrors:         true,
		ConsecutiveLocalOriginFailure:          count(o.ConsecutiveLocalFailures),
		EnforcingConsecutiveLocalOriginFailure: enforce(o.ConsecutiveLocalFailures),
		BaseEjectionTime:                       durationpb.New(o.BaseEjectionTime),
		MaxEjectionPercent:                     wrapperspb.UInt32(o.MaxEjectionPercent),
		EnforcingSuccessRate:                   wrapperspb.UInt32(0),
		EnforcingLocalOriginSuccessRate:        wrapperspb.UInt32(0),
	}
}

func protocolOptions(r model.Region, u model.Upstream) (*anypb.Any, error) {
	h1 := &corev3.Http1ProtocolOptions{}
	h2 := &corev3.Http2ProtocolOptions{
		MaxConcurrentStreams:        wrapperspb.UInt32(h2MaxConcurrentStreams),
		InitialStreamWindowSize:     wrapperspb.UInt32(h2StreamWindow),
		InitialConnectionWindowSize: wrapperspb.UInt32(h2ConnectionWindow),
	}
	o := &httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(upstreamConnectionIdle)},
	}
	filters, err := upstreamFilters(r, u)
	if err != nil {
		return nil, err
	}
	o.HttpFilters = filters
	switch {
	case u.Protocol == model.ProtocolHTTP2:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2},
		}}
	case u.Protocol == model.ProtocolAuto && u.TLS != nil:
		// ALPN picks h2 where the provider offers it (most do), http/1.1 otherwise.
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_AutoConfig{AutoConfig: &httpv3.HttpProtocolOptions_AutoHttpConfig{
			HttpProtocolOptions:  h1,
			Http2ProtocolOptions: h2,
		}}
	default:
		o.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: h1},
		}}
	}
	return toAny(o)
}

func upstreamTLS(u model.Upstream, secrets secretSet) (*corev3.TransportSocket, error) {
	alpn := []string{"h2", "http/1.1"}
	switch u.Protocol {
	case model.ProtocolHTTP1:
		alpn = []string{"http/1.1"}
	case model.ProtocolHTTP2:
		alpn = []string{"h2"}
	}
	common := &tlsv3.CommonTlsContext{
		AlpnProtocols: alpn,
		TlsParams:     &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
	}
	if u.TLS.Verify {
		// The CA bundle comes over SDS so a replaced ca_file is trusted without a restart;
		// the name check stays on the cluster (the CA alone would accept any certificate
		// it issued, for any provider).
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_DNS,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: u.TLS.SNI}},
				}},
			},
			ValidationContextSdsSecretConfig: secrets.ca(u.TLS.CAFile),
		}}
	}
	ctx, err := toAny(&tlsv3.UpstreamTlsContext{Sni: u.TLS.SNI, CommonTlsContext: common})
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx},
	}, nil
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}
