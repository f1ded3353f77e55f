package translate

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	internallistenerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
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
// cluster, and for a region that also serves it directly, the local cluster (to the
// region's own internal listener, in front of the direct cluster) and the aggregate
// failover cluster over the two.
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
		agg, err := toAny(&aggregatev3.ClusterConfig{Clusters: []string{LocalClusterName(u.Name), PeerClusterName(u.Name)}})
		if err != nil {
			return nil, err
		}
		out = append(out, localCluster(r, u), &clusterv3.Cluster{
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

// forwardRoute points a route of an upstream with peers at the peer cluster (entry
// region) or the failover cluster (standby), and tells extauthz that the request is
// forwarded: it authenticates the caller, injects no key and names the caller for the
// next hop, which is a peer's listener or, in a standby region, the region's own local
// listener.
func forwardRoute(r model.Region, rt *routev3.Route) error {
	action := rt.GetRoute()
	if action == nil {
		return nil
	}
	cluster := action.GetCluster()
	name, ok := strings.CutPrefix(cluster, ClusterName(""))
	if !ok || len(r.PeersFor(name)) == 0 {
		return nil
	}
	action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: PeerClusterName(name)}
	if r.Serves(name) {
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: FailoverClusterName(name)}
		if err := retryOnLocalConnectFailure(action); err != nil {
			return err
		}
		rt.ResponseHeadersToRemove = append(rt.ResponseHeadersToRemove, localRetryHeader)
	}
	return setRouteAuthz(r, rt, authzContext(r.Name, name, rt.Name, wire.HopForward))
}

// localRetryHeader marks the local listener's answer to a request that never reached the
// provider (it could not connect), so the caller's route may retry it on a peer.
const localRetryHeader = wire.InternalHeaderPrefix + "retry"

// localConnectFailureFlags are the response flags of a local listener's reply for which no
// byte reached the provider: connection failure, no healthy endpoint, overflow.
var localConnectFailureFlags = []string{"UF", "UH", "UO"}

// retryOnLocalConnectFailure lets a standby route retry, on another endpoint of the
// failover cluster (previous_hosts: the peer), a request the local listener could not
// connect for. Without it the failures that eject the direct path reach the caller: the
// route retries only what cannot have reached the provider, and through the local listener
// a connect failure is a 503 like any other.
func retryOnLocalConnectFailure(action *routev3.RouteAction) error {
	rp := action.RetryPolicy
	if rp == nil {
		rp = &routev3.RetryPolicy{}
		action.RetryPolicy = rp
	}
	if rp.RetryOn == "" {
		rp.RetryOn = "retriable-headers"
	} else {
		rp.RetryOn += ",retriable-headers"
	}
	rp.RetriableHeaders = append(rp.RetriableHeaders, &routev3.HeaderMatcher{
		Name: localRetryHeader, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
	})
	prev, err := toAny(&previoushostsv3.PreviousHostsPredicate{})
	if err != nil {
		return err
	}
	rp.RetryHostPredicate = append(rp.RetryHostPredicate, &routev3.RetryPolicy_RetryHostPredicate{
		Name: "envoy.retry_host_predicates.previous_hosts", ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: prev},
	})
	rp.HostSelectionRetryMaxAttempts = 3
	return nil
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

// forwardedRoutes are the routes of a listener that receives forwarded requests: one per
// upstream, selected by the x-llmedge-upstream header the forwarding extauthz set (the path
// was already rewritten there), to the direct cluster only, so a forwarded request is never
// forwarded again. No rate limits: the entry listener counted the request.
func forwardedRoutes(cfg *model.Config, r model.Region, name string, upstreams []string) (*routev3.RouteConfiguration, error) {
	vh := &routev3.VirtualHost{Name: "forwarded", Domains: []string{"*"}}
	for _, un := range upstreams {
		u, _ := cfg.Upstream(un)
		rt := &routev3.Route{
			Name: PeerRouteName(un),
			Match: &routev3.RouteMatch{
				PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{{Name: wire.HeaderUpstream, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: un}},
				}}},
			},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier:     &routev3.RouteAction_Cluster{Cluster: ClusterName(un)},
				HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: u.Authority},
				Timeout:              durationpb.New(0),
				IdleTimeout:          durationpb.New(u.StreamIdleTimeout),
			}},
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				routeMetadataNamespace: {Fields: map[string]*structpb.Value{routeMetadataAPI: structpb.NewStringValue(string(u.API))}},
			}},
		}
		if err := setRouteAuthz(r, rt, authzContext(r.Name, un, PeerRouteName(un), wire.HopPeer)); err != nil {
			return nil, err
		}
		vh.Routes = append(vh.Routes, rt)
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{vh}}, nil
}

// forwardedHCM is the region's connection manager for a listener of forwarded requests:
// the same filters as the callers' listener minus the rate-limit filter and the admission
// ceiling (the request was admitted, and its quota checked, where its caller entered).
func forwardedHCM(r model.Region, routeConfig, statPrefix string, accessLog bool) (*anypb.Any, error) {
	// Without usage recording: a forwarded request's record belongs to the listener its
	// caller reached, so it is never counted twice.
	hcmAny, err := connectionManager(r, usageSettings{})
	if err != nil {
		return nil, err
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := hcmAny.UnmarshalTo(hcm); err != nil {
		return nil, err
	}
	hcm.StatPrefix = statPrefix
	hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: routeConfig}}
	// The peer is another edge (or this one), never a proxy in front of a caller.
	hcm.XffNumTrustedHops = 0
	hcm.HttpFilters = slices.DeleteFunc(hcm.HttpFilters, func(f *hcmv3.HttpFilter) bool {
		return f.Name == rateLimitFilterName || f.Name == overloadFilterName
	})
	if !accessLog {
		hcm.AccessLog = nil
	}
	return toAny(hcm)
}

// LocalListenerName names a standby region's internal listener in front of its direct
// clusters, and LocalClusterName the cluster that reaches it.
func LocalListenerName(region string) string  { return "llmedge-" + region + "-local" }
func LocalClusterName(upstream string) string { return "local_" + upstream }

// InternalListenerExtension is the bootstrap extension that lets Envoy serve internal
// listeners.
func InternalListenerExtension() (*corev3.TypedExtensionConfig, error) {
	a, err := toAny(&internallistenerv3.InternalListener{})
	if err != nil {
		return nil, err
	}
	return &corev3.TypedExtensionConfig{Name: "envoy.bootstrap.internal_listener", TypedConfig: a}, nil
}

// localCluster reaches the region's own local listener, an Envoy internal listener (no
// socket, unreachable from outside the process). A standby region sends a request there
// rather than straight to the direct cluster because an aggregate cluster runs its own
// upstream filters, not its children's: nothing could remove the identity headers on the
// direct path alone. The local listener treats the request like a forwarded one — its
// extauthz injects the key and removes every x-llmedge-* header — so the direct and the
// peer path are the same shape. Its failures (503s of the local listener when the provider
// is unreachable) eject it, and the aggregate cluster moves the load to the peers.
func localCluster(r model.Region, u model.Upstream) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 LocalClusterName(u.Name),
		ConnectTimeout:       durationpb.New(u.ConnectTimeout),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: LocalClusterName(u.Name),
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
						AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: LocalListenerName(r.Name)},
					}}},
				}},
			}}}},
		},
		OutlierDetection: peerOutlier(),
	}
}

// localListener is a standby region's internal listener, with a route per upstream that
// has peers behind its direct path. It logs nothing: the callers' listener logged the
// request. Nil when the region has no standby upstream.
func localListener(cfg *model.Config, r model.Region) (*listenerv3.Listener, *routev3.RouteConfiguration, error) {
	var upstreams []string
	for _, p := range r.Peers {
		if r.Serves(p.Upstream) {
			upstreams = append(upstreams, p.Upstream)
		}
	}
	if len(upstreams) == 0 {
		return nil, nil, nil
	}
	rc, err := forwardedRoutes(cfg, r, LocalListenerName(r.Name), upstreams)
	if err != nil {
		return nil, nil, err
	}
	// Only this listener's own connect-failure replies carry the retry mark, never a
	// provider's answer: a provider sending it would have its request repeated on a peer.
	for _, vh := range rc.VirtualHosts {
		for _, rt := range vh.Routes {
			rt.ResponseHeadersToRemove = append(rt.ResponseHeadersToRemove, localRetryHeader)
		}
	}
	hcmAny, err := forwardedHCM(r, rc.Name, "local_"+r.Name, false)
	if err != nil {
		return nil, nil, err
	}
	h := &hcmv3.HttpConnectionManager{}
	if err := hcmAny.UnmarshalTo(h); err != nil {
		return nil, nil, err
	}
	// First: a connect failure is marked retriable for the caller's route (which removes
	// the mark from what the caller sees).
	h.LocalReplyConfig.Mappers = append([]*hcmv3.ResponseMapper{{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
			ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: localConnectFailureFlags},
		}},
		HeadersToAdd: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: localRetryHeader, Value: "connect"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}}, h.LocalReplyConfig.Mappers...)
	hcm, err := toAny(h)
	if err != nil {
		return nil, nil, err
	}
	return &listenerv3.Listener{
		Name:              LocalListenerName(r.Name),
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}}}},
	}, rc, nil
}

// peerListener is the listener other regions' edges forward to (forwardedRoutes), over
// mutual TLS. Nil when no region forwards to r.
func peerListener(cfg *model.Config, r model.Region, secrets secretSet) (*listenerv3.Listener, *routev3.RouteConfiguration, error) {
	if r.PeerListenAddress == "" || r.PeerTLS == nil {
		return nil, nil, nil
	}
	upstreams, callers := peerCallers(cfg, r)
	if len(upstreams) == 0 {
		return nil, nil, nil
	}
	rc, err := forwardedRoutes(cfg, r, PeerRouteConfigName(r.Name), upstreams)
	if err != nil {
		return nil, nil, err
	}
	hcmOut, err := forwardedHCM(r, rc.Name, "peer_"+r.Name, true)
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
