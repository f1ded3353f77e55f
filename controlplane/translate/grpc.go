package translate

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

const grpcConnectTimeout = time.Second

// Side calls (ext_authz, rate limit) in flight per Envoy: a healthy service answers in
// about a millisecond, so even 2,000 requests/s keep a handful in flight, and 512 only fill
// when the service is stuck near its timeout. Past the bound a check fails at once instead
// of queueing: ext_authz answers the JSON 503 "auth service unavailable", the rate-limit
// filter follows the region's ratelimit_failure (allow or deny).
const (
	sideCallMaxRequests = 512
	sideCallMaxPending  = 128
)

// sideCallBreakers bounds the side calls. Envoy's defaults (1,024 pending, 1,024 in
// flight, 3 retries) let a stalled service collect a queue whose every entry waits out
// the filter's timeout.
func sideCallBreakers() *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxPendingRequests: wrapperspb.UInt32(sideCallMaxPending),
		MaxRequests:        wrapperspb.UInt32(sideCallMaxRequests),
		TrackRemaining:     true,
	}}}
}

// GRPCCluster is how Envoy reaches one of llmedge's own gRPC services (the control plane's
// ADS stream, extauthz, ratelimit): HTTP/2 only, one endpoint, STATIC for a unix socket or
// an IP literal (STATIC clusters reject host names at config load) and STRICT_DNS with
// family for a host name. The bootstrap's static xDS cluster is built here too, so the two
// cannot drift. h2 carries extra HTTP/2 settings (the ADS stream's keepalive); the caller
// adds the transport socket, since the bootstrap has no SDS yet.
func GRPCCluster(name string, addr model.Address, family clusterv3.Cluster_DnsLookupFamily, h2 *corev3.Http2ProtocolOptions) (*clusterv3.Cluster, error) {
	if h2 == nil {
		h2 = &corev3.Http2ProtocolOptions{}
	}
	opts, err := toAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2},
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
		c.DnsLookupFamily = family
	}
	return c, nil
}

// grpcCluster is GRPCCluster for one of the region's own services: a unix socket (its
// directory is the guard), or TCP, with mutual TLS when the region sets internal_tls.
func grpcCluster(name string, addr model.Address, mtls *model.InternalTLS, secrets secretSet) (*clusterv3.Cluster, error) {
	c, err := GRPCCluster(name, addr, clusterv3.Cluster_V4_PREFERRED, nil)
	if err != nil {
		return nil, err
	}
	c.CircuitBreakers = sideCallBreakers()
	if addr.Pipe == "" && mtls != nil {
		ts, err := internalTLS(addr.Host, mtls, secrets)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}

// How Envoy probes a gRPC service that reports its own health. The interval bounds how
// long a fail-open region keeps paying the rate-limit timeout on every request once the
// service said it cannot answer (Redis down): about UnhealthyThreshold intervals.
const (
	grpcHealthInterval  = time.Second
	grpcHealthTimeout   = time.Second
	grpcHealthUnhealthy = 2 // failed probes before the host is out
	grpcHealthHealthy   = 1 // one SERVING answer brings it back
)

// withGRPCHealthCheck makes Envoy ask service (grpc.health.v1) on c's endpoint and take the
// endpoint out while it answers NOT_SERVING or not at all: a call to a cluster without a
// healthy host then fails at once instead of waiting for the caller's timeout, and the
// calling filter's failure mode decides.
//
// Two Envoy defaults would defeat that and are overridden: the panic threshold (below
// 50% healthy hosts Envoy ignores health and uses them all, which for one endpoint means
// always), and no_traffic_interval (60 s between probes while the cluster has carried no
// traffic, which is exactly the state of a cluster whose only host is unhealthy).
func withGRPCHealthCheck(c *clusterv3.Cluster, service string) {
	c.HealthChecks = []*corev3.HealthCheck{{
		Timeout:            durationpb.New(grpcHealthTimeout),
		Interval:           durationpb.New(grpcHealthInterval),
		NoTrafficInterval:  durationpb.New(grpcHealthInterval),
		UnhealthyThreshold: wrapperspb.UInt32(grpcHealthUnhealthy),
		HealthyThreshold:   wrapperspb.UInt32(grpcHealthHealthy),
		HealthChecker: &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
			ServiceName: service,
		}},
	}}
	if c.CommonLbConfig == nil {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
	}
	c.CommonLbConfig.HealthyPanicThreshold = &typev3.Percent{Value: 0}
}
