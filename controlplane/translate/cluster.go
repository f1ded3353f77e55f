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
	opts, err := protocolOptions(u)
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

func protocolOptions(u model.Upstream) (*anypb.Any, error) {
	h1 := &corev3.Http1ProtocolOptions{}
	h2 := &corev3.Http2ProtocolOptions{
		MaxConcurrentStreams:        wrapperspb.UInt32(h2MaxConcurrentStreams),
		InitialStreamWindowSize:     wrapperspb.UInt32(h2StreamWindow),
		InitialConnectionWindowSize: wrapperspb.UInt32(h2ConnectionWindow),
	}
	o := &httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(upstreamConnectionIdle)},
	}
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
