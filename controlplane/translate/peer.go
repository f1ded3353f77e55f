package translate

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/wire"
)

// Edge-to-edge forwarding (docs/SECURITY.md, "Between regions"; docs/CONFIG.md, "Peers").
//
// A region that names peers for an upstream sends that upstream's requests to the peers'
// peer listeners over mutual TLS, from its egress address, presenting its edge certificate
// (region identity spiffe://llmedge/region/<region>/envoy). An entry region (one that does
// not serve the upstream itself) routes straight to the peer cluster; a region that serves
// it directly routes to an aggregate cluster whose first child is the direct cluster and
// whose second is the peer cluster, so when outlier detection ejects the direct endpoint
// the load moves to the peers, and it moves back when the ejection ends.
//
// The caller's identity travels in x-llmedge-* headers that extauthz sets on the entry
// side; the peer listener is the only place where extauthz believes them.

// Names of the edge-to-edge resources.
func PeerListenerName(region string) string    { return "llmedge-" + region + "-peer" }
func PeerRouteConfigName(region string) string { return "llmedge-" + region + "-peer" }
func PeerClusterName(upstream string) string   { return "peer_" + upstream }
func FailoverClusterName(upstream string) string {
	return "failover_" + upstream
}

// PeerRouteName names the peer listener's route for one upstream.
func PeerRouteName(upstream string) string { return "peer:" + upstream }

// Failover figures: three failed attempts in a row (connect failures and 5xx alike) eject
// the direct endpoint for 10 s at first, so a cut path moves to the peers after about three
// failed attempts (which the route's own retries absorb) and is tried again 10 s later.
const (
	peerConsecutiveFailures = 3
	peerEjectionTime        = 10 * time.Second
	peerOutlierInterval     = time.Second
)

// peerOutlier ejects a failing endpoint quickly; with max_ejection_percent 100 a lone
// direct endpoint can be ejected, which is what moves the load to the peers.
func peerOutlier() *clusterv3.OutlierDetection {
	return &clusterv3.OutlierDetection{
		Consecutive_5Xx:                    wrapperspb.UInt32(peerConsecutiveFailures),
		ConsecutiveGatewayFailure:          wrapperspb.UInt32(peerConsecutiveFailures),
		Interval:                           durationpb.New(peerOutlierInterval),
		BaseEjectionTime:                   durationpb.New(peerEjectionTime),
		MaxEjectionPercent:                 wrapperspb.UInt32(100),
		EnforcingConsecutive_5Xx:           wrapperspb.UInt32(100),
		EnforcingSuccessRate:               wrapperspb.UInt32(0),
		EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
	}
}

// peerClusters returns the clusters an upstream with peers needs in region r: the peer
// cluster, and for a region that also serves it directly, the aggregate failover cluster
// (the direct cluster is direct, already built; standby adjusts it).
func peerClusters(cfg *model.Config, r model.Region, u model.Upstream, secrets secretSet) ([]*clusterv3.Cluster, error) {
	peers := r.PeersFor(u.Name)
	if len(peers) == 0 {
		return nil, nil
	}
	pc, err := peerCluster(cfg, r, u, peers, secrets)
	if err != nil {
		return nil, err
	}
	out := []*clusterv3.Cluster{pc}
	if r.Serves(u.Name) {
		agg, err := toAny(&aggregatev3.ClusterConfig{Clusters: []string{ClusterName(u.Name), PeerClusterName(u.Name)}})
		if err != nil {
			return nil, err
		}
		out = append(out, &clusterv3.Cluster{
			Name:           FailoverClusterName(u.Name),
			ConnectTimeout: durationpb.New(u.ConnectTimeout),
			LbPolicy:       clusterv3.Cluster_CLUSTER_PROVIDED,
			ClusterDiscoveryType: &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{
				Name: "envoy.clusters.aggregate", TypedConfig: agg,
			}},
		})
	}
	return out, nil
}

// standby prepares the direct cluster of an upstream that has peers behind it: outlier
// detection (unless the cluster has its own) so a failing direct path is ejected, and an
// upstream filter that removes the identity headers, which only a peer may read.
func standby(c *clusterv3.Cluster) error {
	if c.OutlierDetection == nil {
		c.OutlierDetection = peerOutlier()
	}
	return withUpstreamFilter(c, removeHeaders(nil, wire.InternalHeaderPrefix))
}

// removeHeaders is a header mutation removing the named headers and every header with
// prefix.
func removeHeaders(names []string, prefix string) []*mutationrulesv3.HeaderMutation {
	var ms []*mutationrulesv3.HeaderMutation
	if prefix != "" {
		ms = append(ms, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_RemoveOnMatch_{
			RemoveOnMatch: &mutationrulesv3.HeaderMutation_RemoveOnMatch{KeyMatcher: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix},
			}},
		}})
	}
	for _, h := range names {
		ms = append(ms, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_Remove{Remove: h}})
	}
	return ms
}

// withUpstreamFilter runs a header mutation on every attempt to the cluster's endpoints
// (an upstream HTTP filter), before the codec.
func withUpstreamFilter(c *clusterv3.Cluster, ms []*mutationrulesv3.HeaderMutation) error {
	const key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	o := &httpv3.HttpProtocolOptions{}
	if a := c.TypedExtensionProtocolOptions[key]; a != nil {
		if err := a.UnmarshalTo(o); err != nil {
			return fmt.Errorf("cluster %s: %w", c.Name, err)
		}
	}
	mut, err := toAny(&headermutationv3.HeaderMutation{Mutations: &headermutationv3.Mutations{RequestMutations: ms}})
	if err != nil {
		return err
	}
	codec, err := toAny(&upstreamcodecv3.UpstreamCodec{})
	if err != nil {
		return err
	}
	o.HttpFilters = append(o.HttpFilters,
		&hcmv3.HttpFilter{Name: "envoy.filters.http.header_mutation", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mut}},
		&hcmv3.HttpFilter{Name: "envoy.filters.http.upstream_codec", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: codec}},
	)
	a, err := toAny(o)
	if err != nil {
		return err
	}
	if c.TypedExtensionProtocolOptions == nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	c.TypedExtensionProtocolOptions[key] = a
	return nil
}

// edgeURI is the identity a region's Envoy certificate carries.
func edgeURI(region string) string {
	return transport.Identity{Region: region, Component: transport.ComponentEnvoy}.String()
}

// peerCluster reaches the peer listeners of peers over mutual TLS. It accepts only a
// server certificate carrying one of those regions' edge identities, and never sends a
// provider key or a caller credential: the peer injects its own key.
func peerCluster(cfg *model.Config, r model.Region, u model.Upstream, peers []string, secrets secretSet) (*clusterv3.Cluster, error) {
	var eps []*endpointv3.LbEndpoint
	var sans []*tlsv3.SubjectAltNameMatcher
	for _, name := range peers {
		p, ok := cfg.Region(name)
		if !ok || p.PeerListenAddress == "" {
			return nil, fmt.Errorf("peer region %q has no peer listener", name)
		}
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address:  socketAddress(p.PeerListenAddress, p.PeerListenPort),
			Hostname: name,
		}}})
		sans = append(sans, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: edgeURI(name)}},
		})
	}
	c := &clusterv3.Cluster{
		Name:                          PeerClusterName(u.Name),
		ConnectTimeout:                durationpb.New(u.ConnectTimeout),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimitBytes),
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: PeerClusterName(u.Name),
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}},
		},
		// One dead peer of several is skipped the same way a dead direct path is.
		OutlierDetection: peerOutlier(),
	}
	if r.EgressAddress != "" {
		// The edge-to-edge hop leaves from the region's fixed egress address too, so a
		// peer (or a firewall in front of it) can allow-list it.
		c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{
			Address:       r.EgressAddress,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
		}}
	}
	h2 := &corev3.Http2ProtocolOptions{
		MaxConcurrentStreams:        wrapperspb.UInt32(h2MaxConcurrentStreams),
		InitialStreamWindowSize:     wrapperspb.UInt32(h2StreamWindow),
		InitialConnectionWindowSize: wrapperspb.UInt32(h2ConnectionWindow),
	}
	opts, err := toAny(&httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(upstreamConnectionIdle)},
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2},
		}},
	})
	if err != nil {
		return nil, err
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}
	// A standby region's extauthz injected its own key for the direct path; it must not
	// reach the peer, which injects its own.
	creds := append([]string{}, wire.CredentialHeaders...)
	if !slices.Contains(creds, u.KeyHeader) {
		creds = append(creds, u.KeyHeader)
	}
	slices.Sort(creds)
	if err := withUpstreamFilter(c, removeHeaders(creds, "")); err != nil {
		return nil, err
	}
	ctx, err := toAny(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"h2"},
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{secrets.cert(r.PeerTLS.CertFile, r.PeerTLS.KeyFile)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: secrets.ca(r.PeerTLS.CAFile),
		}},
	}})
	if err != nil {
		return nil, err
	}
	c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx}}
	return c, nil
}

// forwardRoutes points the routes of upstreams with peers at the peer cluster (entry
// region) or the failover cluster (standby), and tells extauthz which hop they are.
func forwardRoutes(r model.Region, rc *routev3.RouteConfiguration) error {
	for _, vh := range rc.VirtualHosts {
		for _, rt := range vh.Routes {
			action := rt.GetRoute()
			if action == nil {
				continue
			}
			cluster := action.GetCluster()
			name, ok := strings.CutPrefix(cluster, ClusterName(""))
			if !ok || len(r.PeersFor(name)) == 0 {
				continue
			}
			hop := wire.HopForward
			action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: PeerClusterName(name)}
			if r.Serves(name) {
				hop = wire.HopStandby
				action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: FailoverClusterName(name)}
			}
			authz, err := extAuthzContext(r.Name, name, rt.Name, hop)
			if err != nil {
				return err
			}
			rt.TypedPerFilterConfig[extAuthzFilterName] = authz
		}
	}
	return nil
}

// extAuthzContext is extAuthzPerRoute with the hop named.
func extAuthzContext(region, upstream, route, hop string) (*anypb.Any, error) {
	return toAny(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: map[string]string{
			wire.ContextRegion:   region,
			wire.ContextUpstream: upstream,
			wire.ContextRoute:    route,
			wire.ContextHop:      hop,
		}},
	}})
}

// peerCallers lists, per upstream r serves, the regions that forward it to r, both sorted.
func peerCallers(cfg *model.Config, r model.Region) (upstreams []string, regions []string) {
	seenU, seenR := map[string]bool{}, map[string]bool{}
	for _, q := range cfg.Regions {
		for _, p := range q.Peers {
			if q.Name == r.Name || !slices.Contains(p.Regions, r.Name) || !r.Serves(p.Upstream) {
				continue
			}
			if !seenU[p.Upstream] {
				seenU[p.Upstream] = true
				upstreams = append(upstreams, p.Upstream)
			}
			if !seenR[q.Name] {
				seenR[q.Name] = true
				regions = append(regions, q.Name)
			}
		}
	}
	slices.Sort(upstreams)
	slices.Sort(regions)
	return upstreams, regions
}

// peerListener is the listener other regions' edges forward to, and its routes: one per
// upstream they forward here, selected by the x-llmedge-upstream header the forwarding
// edge's extauthz set (the path was already rewritten there), to the direct cluster only,
// so a forwarded request is never forwarded again. It has no rate limits: the entry region
// counted the request. Nil when no region forwards to r.
func peerListener(cfg *model.Config, r model.Region, secrets secretSet) (*listenerv3.Listener, *routev3.RouteConfiguration, error) {
	if r.PeerListenAddress == "" || r.PeerTLS == nil {
		return nil, nil, nil
	}
	upstreams, callers := peerCallers(cfg, r)
	if len(upstreams) == 0 {
		return nil, nil, nil
	}
	vh := &routev3.VirtualHost{Name: "peers", Domains: []string{"*"}}
	for _, name := range upstreams {
		u, _ := cfg.Upstream(name)
		authz, err := extAuthzContext(r.Name, name, PeerRouteName(name), wire.HopPeer)
		if err != nil {
			return nil, nil, err
		}
		vh.Routes = append(vh.Routes, &routev3.Route{
			Name: PeerRouteName(name),
			Match: &routev3.RouteMatch{
				PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{{Name: wire.HeaderUpstream, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: name}},
				}}},
			},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier:     &routev3.RouteAction_Cluster{Cluster: ClusterName(name)},
				HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: u.Authority},
				Timeout:              durationpb.New(0),
				IdleTimeout:          durationpb.New(u.StreamIdleTimeout),
			}},
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				routeMetadataNamespace: {Fields: map[string]*structpb.Value{routeMetadataAPI: structpb.NewStringValue(string(u.API))}},
			}},
			TypedPerFilterConfig: map[string]*anypb.Any{extAuthzFilterName: authz},
		})
	}
	rc := &routev3.RouteConfiguration{Name: PeerRouteConfigName(r.Name), VirtualHosts: []*routev3.VirtualHost{vh}}

	hcmAny, err := connectionManager(r)
	if err != nil {
		return nil, nil, err
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := hcmAny.UnmarshalTo(hcm); err != nil {
		return nil, nil, err
	}
	hcm.StatPrefix = "peer_" + r.Name
	hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: rc.Name}}
	// The peer's address is another edge, never a proxy in front of a caller.
	hcm.XffNumTrustedHops = 0
	hcm.HttpFilters = slices.DeleteFunc(hcm.HttpFilters, func(f *hcmv3.HttpFilter) bool { return f.Name == rateLimitFilterName })
	hcmOut, err := toAny(hcm)
	if err != nil {
		return nil, nil, err
	}

	// Only an llmedge edge certificate of a region that forwards here: not this region's
	// own, not any other component's (an extauthz certificate from the same CA).
	quoted := make([]string, len(callers))
	for i, q := range callers {
		quoted[i] = regexp.QuoteMeta(q)
	}
	san := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_URI,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: "^" + regexp.QuoteMeta("spiffe://llmedge/region/") + "(" + strings.Join(quoted, "|") + ")" + regexp.QuoteMeta("/envoy") + "$",
		}}},
	}
	tlsCtx, err := toAny(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  []string{"h2"},
			TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{secrets.cert(r.PeerTLS.CertFile, r.PeerTLS.KeyFile)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san}},
				ValidationContextSdsSecretConfig: secrets.ca(r.PeerTLS.CAFile),
			}},
		},
	})
	if err != nil {
		return nil, nil, err
	}
	l := &listenerv3.Listener{
		Name:                          PeerListenerName(r.Name),
		Address:                       socketAddress(r.PeerListenAddress, r.PeerListenPort),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimitBytes),
		FilterChains: []*listenerv3.FilterChain{{
			TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}},
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmOut},
			}},
		}},
	}
	return l, rc, nil
}
