package translate

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

const (
	extAuthzFilterName = "envoy.filters.http.ext_authz"
	// extauthz runs next to Envoy (same host or region): a check takes well under a
	// millisecond, so 250 ms only trips when it is stuck, and then the request fails
	// closed with 503 rather than waiting.
	extAuthzTimeout    = 250 * time.Millisecond
	grpcConnectTimeout = time.Second
)

// extAuthzFilter checks every request with the region's extauthz over gRPC. It fails
// closed: when extauthz cannot answer, the caller gets 503 and nothing goes upstream.
func extAuthzFilter() (*hcmv3.HttpFilter, error) {
	patterns := []*matcherv3.StringMatcher{
		{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: wire.InternalHeaderPrefix}},
	}
	for _, h := range wire.CredentialHeaders {
		patterns = append(patterns, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h}})
	}
	cfg, err := toAny(&extauthzv3.ExtAuthz{
		Services: &extauthzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
				ClusterName: wire.ExtAuthzClusterName,
			}},
			Timeout: durationpb.New(extAuthzTimeout),
		}},
		TransportApiVersion: corev3.ApiVersion_V3,
		FailureModeAllow:    false,
		StatusOnError:       &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		// Only what the decision needs: the credential headers and internal headers (to
		// strip them). The path, with its query, always travels in the check request.
		AllowedHeaders: &matcherv3.ListStringMatcher{Patterns: patterns},
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{
		Name:       extAuthzFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg},
	}, nil
}

// extAuthzPerRoute tells extauthz which region, upstream and route a request matched.
func extAuthzPerRoute(region string, rt model.Route) (*anypb.Any, error) {
	return toAny(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: map[string]string{
			wire.ContextRegion:   region,
			wire.ContextUpstream: rt.Upstream,
			wire.ContextRoute:    rt.Name,
		}},
	}})
}

// extAuthzCluster reaches the region's extauthz over HTTP/2 (gRPC).
func extAuthzCluster(r model.Region, secrets secretSet) (*clusterv3.Cluster, error) {
	return grpcCluster(wire.ExtAuthzClusterName, r.ExtAuthz, r.InternalTLS, secrets)
}

// grpcCluster is an HTTP/2 cluster for one of the region's own gRPC services: a unix
// socket (its directory is the guard), or TCP, with mutual TLS when the region sets
// internal_tls.
func grpcCluster(name string, addr model.Address, mtls *model.InternalTLS, secrets secretSet) (*clusterv3.Cluster, error) {
	opts, err := toAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(grpcConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: serviceAddress(addr),
					}},
				}},
			}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts,
		},
	}
	if addr.Pipe != "" || isIP(addr.Host) {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	if addr.Pipe == "" && mtls != nil {
		ts, err := internalTLS(addr.Host, mtls, secrets)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}
