package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/bootstrap"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// The static Envoy configs (bare Envoy, Envoy + rate limit only) are not written by hand:
// they are the control plane's own translation of the benchmark's routes YAML (listener
// with its edge-hardening HCM settings and JSON access log, route, upstream cluster), with
// filters and the usage log taken out, put in a static bootstrap that is `llmedge
// bootstrap`'s minus xDS. So the scenarios differ only in the filters on the path and the
// usage log, not in HCM, cluster or bootstrap settings.

const (
	extAuthzFilter       = "envoy.filters.http.ext_authz"
	rateLimitFilter      = "envoy.filters.http.ratelimit"
	headerMutationFilter = "envoy.filters.http.header_mutation"
	grpcAccessLog        = "envoy.access_loggers.http_grpc"
)

// keepForwardedProto returns the edge's header_mutation filter without its x-forwarded-*
// removal. json_to_metadata clears the route cache once it has read a body; on the edge
// ext_authz, which comes next, computes the route again before header_mutation runs, but
// without ext_authz the router would compute it after, and Envoy finds no route for a
// request without x-forwarded-proto (a 404). The static variants keep every other
// removal, so they do the same work but for those few headers.
func keepForwardedProto(hf *hcmv3.HttpFilter) (*hcmv3.HttpFilter, error) {
	hm := &headermutationv3.HeaderMutation{}
	if err := hf.GetTypedConfig().UnmarshalTo(hm); err != nil {
		return nil, fmt.Errorf("unpack header_mutation: %w", err)
	}
	hm.Mutations.RequestMutations = slices.DeleteFunc(hm.Mutations.RequestMutations, func(m *mutationv3.HeaderMutation) bool {
		return m.GetRemoveOnMatch().GetKeyMatcher().GetPrefix() == "x-forwarded-"
	})
	a, err := anypb.New(hm)
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: hf.Name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// staticMode says which filters a static config keeps besides the router.
type staticMode int

const (
	staticBare      staticMode = iota // no side calls: the edge's header filters and the router
	staticRateLimit                   // rate limit + router; the caller descriptor is a constant
)

// translated loads the routes YAML at path and translates one region, as the control plane
// does.
func translated(path, region string) (*translate.Resources, error) {
	_, cfg, err := config.LoadConfig(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return translate.Region(cfg, region)
}

// writeStaticBootstrap writes a static Envoy bootstrap (JSON) to path.
//
//   - staticBare: ext_authz and rate-limit filters removed, no rate-limit actions; the
//     upstream cluster's circuit breakers are raised out of the way (the fake is one
//     endpoint).
//   - staticRateLimit: ext_authz removed; the rate-limit filter and its cluster kept; the
//     route's caller descriptor, which reads extauthz's dynamic metadata, becomes a
//     generic_key with the caller's name, so the descriptors sent to envoyproxy/ratelimit
//     are exactly those the full edge sends for that caller.
//
// edit, when not nil, changes the listener's HCM last (the ablation's variants).
func writeStaticBootstrap(path string, res *translate.Resources, name string, listenPort, adminPort int, mode staticMode, caller string, edit func(*hcmv3.HttpConnectionManager)) error {
	b, err := bootstrap.Build(bootstrap.Options{
		NodeID: "envoy-" + name, Region: name, AdminPort: adminPort,
		XDSHost: "127.0.0.1", XDSPort: 1, // dropped below
	})
	if err != nil {
		return err
	}
	b.DynamicResources = nil
	rc, err := staticRoutes(res, mode, caller)
	if err != nil {
		return err
	}
	l, err := staticListener(res, name, listenPort, rc, mode, edit)
	if err != nil {
		return err
	}
	b.StaticResources.Listeners = []*listenerv3.Listener{l}
	b.StaticResources.Clusters = staticClusters(res, mode) // only the xDS cluster was there
	if err := b.ValidateAll(); err != nil {
		return fmt.Errorf("static bootstrap %s: %w", name, err)
	}
	out, err := protojson.MarshalOptions{UseProtoNames: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return err
	}
	// Round-trip through encoding/json only to check the output is plain JSON.
	var check map[string]any
	if err := json.Unmarshal(out, &check); err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

// staticRoutes is the region's route configuration without ext_authz, and without rate
// limits (staticBare), or (staticRateLimit) with Envoy's rate-limit filter asking at request
// time for the descriptors extauthz asks in the full edge (the policy's, with the caller a
// constant and the bench's model): Envoy's own second side call, as the edge made it
// before extauthz took the request-time checks over.
func staticRoutes(res *translate.Resources, mode staticMode, caller string) (*routev3.RouteConfiguration, error) {
	var policy authzv1.Policy
	if err := res.Policy.GetTypedConfig().UnmarshalTo(&policy); err != nil {
		return nil, fmt.Errorf("unpack policy: %w", err)
	}
	byCluster := map[string][]*authzv1.Descriptor{}
	for _, uq := range policy.GetRateLimit().GetUpstreams() {
		byCluster[translate.ClusterName(uq.GetUpstream())] = uq.GetDescriptors()
	}
	rc := proto.Clone(res.Routes[0]).(*routev3.RouteConfiguration)
	for _, vh := range rc.VirtualHosts {
		delete(vh.TypedPerFilterConfig, extAuthzFilter)
		for _, r := range vh.Routes {
			delete(r.TypedPerFilterConfig, extAuthzFilter)
			delete(r.TypedPerFilterConfig, rateLimitFilter)
			if mode == staticBare {
				continue
			}
			rl := &ratelimitv3.RateLimitPerRoute{}
			for _, d := range byCluster[r.GetRoute().GetCluster()] {
				l := &routev3.RateLimit{}
				for _, e := range d.GetEntries() {
					v := e.GetValue()
					switch e.GetSource() {
					case authzv1.Entry_CALLER:
						v = caller
					case authzv1.Entry_MODEL:
						v = benchModel
					}
					l.Actions = append(l.Actions, &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{
						GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorKey: e.GetKey(), DescriptorValue: v},
					}})
				}
				rl.RateLimits = append(rl.RateLimits, l)
			}
			if len(rl.RateLimits) == 0 {
				continue
			}
			a, err := anypb.New(rl)
			if err != nil {
				return nil, err
			}
			r.TypedPerFilterConfig[rateLimitFilter] = a
		}
	}
	return rc, nil
}

// staticListener is the region's listener on listenPort with rc inline and the filters
// the mode removes taken out of its HCM.
func staticListener(res *translate.Resources, name string, listenPort int, rc *routev3.RouteConfiguration, mode staticMode, edit func(*hcmv3.HttpConnectionManager)) (*listenerv3.Listener, error) {
	l := proto.Clone(res.Listeners[0]).(*listenerv3.Listener)
	l.Name = "bench-" + name
	l.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(listenPort)}
	f := l.FilterChains[0].Filters[0]
	hcm := &hcmv3.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
		return nil, fmt.Errorf("unpack HCM: %w", err)
	}
	var filters []*hcmv3.HttpFilter
	for _, hf := range hcm.HttpFilters {
		switch {
		case hf.Name == extAuthzFilter, hf.Name == translate.AuthzModuleFilterName:
		case hf.Name == rateLimitFilter && mode == staticBare:
		case hf.Name == headerMutationFilter:
			kept, err := keepForwardedProto(hf)
			if err != nil {
				return nil, err
			}
			filters = append(filters, kept)
		default:
			filters = append(filters, hf)
		}
	}
	// The edge's own header filters (request id and path, upstream header removal) stay:
	// the variants differ only in their side calls. With extauthz inside Envoy (make run's
	// translation) the module also reads the body's model, so no variant here does.
	kept := slices.ContainsFunc(filters, func(hf *hcmv3.HttpFilter) bool { return hf.Name == rateLimitFilter })
	if mode == staticRateLimit && !kept {
		return nil, fmt.Errorf("region %s has no rate-limit filter to keep", res.Region)
	}
	hcm.HttpFilters = filters
	// The usage log streams to the control plane, which a static Envoy has none of: its
	// cluster is not in the bootstrap, and Envoy would keep the logger and fail every flush
	// (dozens of failed flushes per request, ≈ 50 µs of c=1 latency on this VM). Usage
	// recording is measured on the full edge, with and without.
	hcm.AccessLog = slices.DeleteFunc(hcm.AccessLog, func(al *accesslogv3.AccessLog) bool {
		return al.GetName() == grpcAccessLog
	})
	hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	hcm.StatPrefix = "bench_" + name
	if edit != nil {
		edit(hcm)
	}
	anyHCM, err := anypb.New(hcm)
	if err != nil {
		return nil, err
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: anyHCM}
	return l, nil
}

// staticClusters are the region's clusters the mode needs, the upstream's circuit
// breakers raised out of the way (the fake is one endpoint).
// withoutUpstreamFilters takes key failover's upstream HTTP filters out of an upstream
// cluster: they are llmedge's module (or an ext_proc call to extauthz), which a static
// Envoy does not run. Envoy then runs only its upstream codec, as for an upstream whose
// retries are off.
func withoutUpstreamFilters(c *clusterv3.Cluster) {
	const key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	a, ok := c.TypedExtensionProtocolOptions[key]
	if !ok {
		return
	}
	var o upstreamhttpv3.HttpProtocolOptions
	if err := a.UnmarshalTo(&o); err != nil || len(o.HttpFilters) == 0 {
		return
	}
	o.HttpFilters = nil
	if b, err := anypb.New(&o); err == nil {
		c.TypedExtensionProtocolOptions[key] = b
	}
}

func staticClusters(res *translate.Resources, mode staticMode) []*clusterv3.Cluster {
	var out []*clusterv3.Cluster
	for _, c := range res.Clusters {
		switch c.Name {
		case wire.ExtAuthzClusterName:
			continue
		case wire.RateLimitClusterName:
			if mode == staticBare {
				continue
			}
		default:
			c = proto.Clone(c).(*clusterv3.Cluster)
			withoutUpstreamFilters(c)
			big := wrapperspb.UInt32(1_000_000)
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxConnections: big, MaxPendingRequests: big, MaxRequests: big, MaxRetries: big,
			}}}
		}
		out = append(out, c)
	}
	return out
}
