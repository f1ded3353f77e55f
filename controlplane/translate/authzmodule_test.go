package translate_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dynamicmodulefilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_modules/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/internal/wire"
)

const (
	extAuthzName     = "envoy.filters.http.ext_authz"
	authzModuleName  = "llmedge.authz"
	moduleGoldenCase = "testdata/in/extauthz-in-envoy.yaml"
)

// withAuthzInEnvoy is cfg with every region's check inside Envoy set to on.
func withAuthzInEnvoy(cfg *model.Config, on bool) *model.Config {
	out := *cfg
	out.Regions = slices.Clone(cfg.Regions)
	for i := range out.Regions {
		out.Regions[i].ExtAuthzInEnvoy = on
	}
	return &out
}

func httpFilters(t *testing.T, res *translate.Resources) map[string][]*hcmv3.HttpFilter {
	t.Helper()
	out := map[string][]*hcmv3.HttpFilter{}
	for _, l := range res.Listeners {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		out[l.Name] = hcm.HttpFilters
	}
	return out
}

func filterNames(fs []*hcmv3.HttpFilter) []string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	return names
}

// Every listener of a region in module mode (callers', local, peer) checks requests with
// the module, where ext_authz would stand, and never with ext_authz as well; the two
// filters that read the request's facts for ext_authz (Gemini's path, the body) are gone,
// since the module reads them itself; its config names the module and the region and
// nothing else (it is shown in /config_dump).
func TestAuthzModuleFilterReplacesExtAuthz(t *testing.T) {
	cfg := load(t, moduleGoldenCase)
	module, err := translate.All(cfg)
	if err != nil {
		t.Fatal(err)
	}
	side, err := translate.All(withAuthzInEnvoy(cfg, false))
	if err != nil {
		t.Fatal(err)
	}
	var checked []string
	for region, res := range module {
		want := httpFilters(t, side[region])
		got := httpFilters(t, res)
		checked = append(checked, slices.Collect(maps.Keys(got))...)
		for listener, fs := range got {
			wantNames := filterNames(want[listener])
			for _, facts := range []string{"envoy.filters.http.header_to_metadata", "envoy.filters.http.json_to_metadata"} {
				n := len(wantNames)
				if wantNames = slices.DeleteFunc(wantNames, func(s string) bool { return s == facts }); len(wantNames) != n-1 {
					t.Fatalf("%s: default mode has not one %s: %v", listener, facts, filterNames(want[listener]))
				}
			}
			i := slices.Index(wantNames, extAuthzName)
			if i < 0 {
				t.Fatalf("%s: default mode has no ext_authz filter: %v", listener, wantNames)
			}
			wantNames[i] = authzModuleName
			if names := filterNames(fs); !slices.Equal(names, wantNames) {
				t.Errorf("%s filters\n got %v\nwant %v", listener, names, wantNames)
			}
			f := fs[i]
			dm := &dynamicmodulefilterv3.DynamicModuleFilter{}
			if err := f.GetTypedConfig().UnmarshalTo(dm); err != nil {
				t.Fatalf("%s: %s: %v", listener, f.Name, err)
			}
			mc := dm.GetDynamicModuleConfig()
			if mc.GetName() != wire.AuthzModuleName || !mc.GetDoNotClose() || mc.GetLoadGlobally() || dm.GetFilterName() != wire.AuthzModuleFilter {
				t.Errorf("%s: module config %v", listener, dm)
			}
			sv := &wrapperspb.StringValue{}
			if err := dm.GetFilterConfig().UnmarshalTo(sv); err != nil {
				t.Fatalf("%s: filter_config: %v", listener, err)
			}
			var fc map[string]any
			if err := json.Unmarshal([]byte(sv.GetValue()), &fc); err != nil {
				t.Fatalf("%s: filter_config %q: %v", listener, sv.GetValue(), err)
			}
			if len(fc) != 1 || fc["region"] != region {
				t.Errorf("%s: filter_config %s, want only {\"region\": %q}", listener, sv.GetValue(), region)
			}
		}
	}
	slices.Sort(checked)
	wantListeners := []string{translate.ListenerName("hk"), translate.LocalListenerName("hk"), translate.ListenerName("sg"), translate.PeerListenerName("sg")}
	slices.Sort(wantListeners)
	if !slices.Equal(checked, wantListeners) {
		t.Errorf("listeners checked %v, want %v", checked, wantListeners)
	}
}

// authzContexts maps each route of a region's route configurations to the context its
// authz reads: the ext_authz context extensions, or the module's route metadata. It fails
// when a route has both, or neither.
func authzContexts(t *testing.T, res *translate.Resources) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, rc := range res.Routes {
		for _, vh := range rc.VirtualHosts {
			for _, rt := range vh.Routes {
				key := rc.Name + "/" + rt.Name
				per, md := rt.TypedPerFilterConfig[extAuthzName], rt.GetMetadata().GetFilterMetadata()[wire.AuthzRouteMetadata]
				switch {
				case per != nil && md != nil:
					t.Errorf("%s: both ext_authz per-route config and %s metadata", key, wire.AuthzRouteMetadata)
				case per != nil:
					p := &extauthzv3.ExtAuthzPerRoute{}
					if err := per.UnmarshalTo(p); err != nil {
						t.Fatal(err)
					}
					out[key] = p.GetCheckSettings().GetContextExtensions()
				case md != nil:
					ctx := map[string]string{}
					for k, v := range md.Fields {
						if _, ok := v.GetKind().(*structpb.Value_StringValue); !ok {
							t.Errorf("%s: metadata %s is not a string", key, k)
						}
						ctx[k] = v.GetStringValue()
					}
					out[key] = ctx
				default:
					t.Errorf("%s: no authz context", key)
				}
			}
		}
	}
	return out
}

const upstreamOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func upstreamOptions(t *testing.T, c *clusterv3.Cluster) *httpv3.HttpProtocolOptions {
	t.Helper()
	a, ok := c.TypedExtensionProtocolOptions[upstreamOptionsKey]
	if !ok {
		return nil
	}
	var o httpv3.HttpProtocolOptions
	if err := a.UnmarshalTo(&o); err != nil {
		t.Fatal(err)
	}
	return &o
}

// withoutUpstreamFilters is clusters with their upstream HTTP filters left out.
func withoutUpstreamFilters(t *testing.T, clusters []*clusterv3.Cluster) []*clusterv3.Cluster {
	t.Helper()
	out := make([]*clusterv3.Cluster, len(clusters))
	for i, c := range clusters {
		c = proto.Clone(c).(*clusterv3.Cluster)
		if o := upstreamOptions(t, c); o != nil {
			o.HttpFilters = nil
			a, err := anypb.New(o)
			if err != nil {
				t.Fatal(err)
			}
			c.TypedExtensionProtocolOptions[upstreamOptionsKey] = a
		}
		out[i] = c
	}
	return out
}

// checkModuleKeyFailover: in module mode a cluster with upstream filters (an upstream
// whose retries are on) has the module's key failover, configured with the region and the
// cluster's upstream, then the codec: no ext_proc side call, no header_mutation.
func checkModuleKeyFailover(t *testing.T, region string, c *clusterv3.Cluster) bool {
	t.Helper()
	o := upstreamOptions(t, c)
	if o == nil || len(o.HttpFilters) == 0 {
		return false
	}
	var names []string
	for _, f := range o.HttpFilters {
		names = append(names, f.Name)
	}
	if want := []string{translate.KeyFailoverModuleFilterName, "envoy.filters.http.upstream_codec"}; !slices.Equal(names, want) {
		t.Errorf("region %s cluster %s: upstream filters %v, want %v", region, c.Name, names, want)
		return false
	}
	var m dynamicmodulefilterv3.DynamicModuleFilter
	if err := o.HttpFilters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	var cfg wrapperspb.StringValue
	if err := m.GetFilterConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(cfg.GetValue()), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"region": region, "upstream": strings.TrimPrefix(c.Name, "upstream_")}
	if m.GetDynamicModuleConfig().GetName() != wire.AuthzModuleName || !m.GetDynamicModuleConfig().GetDoNotClose() ||
		m.GetFilterName() != wire.KeyFailoverModuleFilter || !maps.Equal(got, want) {
		t.Errorf("region %s cluster %s: key failover module %s/%s config %v, want %s/%s config %v (do_not_close)", region, c.Name,
			m.GetDynamicModuleConfig().GetName(), m.GetFilterName(), got, wire.AuthzModuleName, wire.KeyFailoverModuleFilter, want)
	}
	return true
}

// In module mode each route, ordinary, forwarding or of a peer/local listener, carries in
// its llmedge.authz metadata exactly the context ext_authz gets in default mode, and
// nothing but that changes: listeners aside, the resources are the same.
func TestAuthzModuleRouteMetadata(t *testing.T) {
	for _, in := range []string{moduleGoldenCase, "testdata/in/peers.yaml", "testdata/in/entry-region.yaml", "testdata/in/basic.yaml"} {
		cfg := load(t, in)
		module, err := translate.All(withAuthzInEnvoy(cfg, true))
		if err != nil {
			t.Fatal(err)
		}
		side, err := translate.All(withAuthzInEnvoy(cfg, false))
		if err != nil {
			t.Fatal(err)
		}
		hops := map[string]bool{}
		failovers := 0
		for region, res := range module {
			for _, rc := range res.Routes {
				for _, vh := range rc.VirtualHosts {
					for _, rt := range vh.Routes {
						if _, ok := rt.TypedPerFilterConfig[extAuthzName]; ok {
							t.Errorf("%s: region %s route %s has ext_authz per-route config in module mode", in, region, rt.Name)
						}
					}
				}
			}
			got, want := authzContexts(t, res), authzContexts(t, side[region])
			if !maps.EqualFunc(got, want, maps.Equal) {
				t.Errorf("%s: region %s route contexts\n got %v\nwant %v", in, region, got, want)
			}
			for _, ctx := range got {
				if ctx[wire.ContextRegion] != region {
					t.Errorf("%s: region %s route context %v", in, region, ctx)
				}
				hops[ctx[wire.ContextHop]] = true
			}
			// Apart from where the context lives, routes are the same.
			stripped := func(rcs []*routev3.RouteConfiguration) []*routev3.RouteConfiguration {
				out := make([]*routev3.RouteConfiguration, len(rcs))
				for i, rc := range rcs {
					rc = proto.Clone(rc).(*routev3.RouteConfiguration)
					for _, vh := range rc.VirtualHosts {
						for _, rt := range vh.Routes {
							delete(rt.TypedPerFilterConfig, extAuthzName)
							delete(rt.GetMetadata().GetFilterMetadata(), wire.AuthzRouteMetadata)
						}
					}
					out[i] = rc
				}
				return out
			}
			if !slices.EqualFunc(stripped(res.Routes), stripped(side[region].Routes), func(a, b *routev3.RouteConfiguration) bool { return proto.Equal(a, b) }) {
				t.Errorf("%s: region %s routes differ beyond the authz context", in, region)
			}
			// Clusters differ only in key failover's upstream filters, and in extauthz's:
			// inside Envoy it serves no gRPC, so the region has no cluster to it.
			for _, c := range res.Clusters {
				if checkModuleKeyFailover(t, region, c) {
					failovers++
				}
				if c.Name == wire.ExtAuthzClusterName {
					t.Errorf("%s: region %s has cluster %s in module mode", in, region, c.Name)
				}
			}
			sideClusters := slices.DeleteFunc(slices.Clone(side[region].Clusters), func(c *clusterv3.Cluster) bool { return c.Name == wire.ExtAuthzClusterName })
			if len(sideClusters) != len(side[region].Clusters)-1 {
				t.Errorf("%s: region %s has no cluster %s with extauthz as a process", in, region, wire.ExtAuthzClusterName)
			}
			if !slices.EqualFunc(withoutUpstreamFilters(t, res.Clusters), withoutUpstreamFilters(t, sideClusters), func(a, b *clusterv3.Cluster) bool { return proto.Equal(a, b) }) {
				t.Errorf("%s: region %s clusters differ between the modes beyond their upstream filters and extauthz's", in, region)
			}
		}
		if in == moduleGoldenCase && failovers == 0 {
			t.Errorf("%s: no cluster has the module's key failover; the golden case should retry", in)
		}
		if in == moduleGoldenCase && !(hops[""] && hops[wire.HopForward] && hops[wire.HopPeer]) {
			t.Errorf("%s: hops seen %v; want ordinary, forward and peer routes", in, hops)
		}
	}
}

// Inside Envoy nothing reaches extauthz over gRPC, so a region's extauthz address changes
// nothing it is sent: the same resources with it and without it (docs/CONFIG.md says it
// may be left out).
func TestAuthzModuleIgnoresTheExtAuthzAddress(t *testing.T) {
	cfg := withAuthzInEnvoy(load(t, moduleGoldenCase), true)
	with, err := translate.All(cfg)
	if err != nil {
		t.Fatal(err)
	}
	without := *cfg
	without.Regions = slices.Clone(cfg.Regions)
	for i := range without.Regions {
		if without.Regions[i].ExtAuthz.IsZero() {
			t.Fatalf("region %s of %s has no extauthz address: this test compares nothing", without.Regions[i].Name, moduleGoldenCase)
		}
		without.Regions[i].ExtAuthz = model.Address{}
	}
	got, err := translate.All(&without)
	if err != nil {
		t.Fatal(err)
	}
	for region, res := range with {
		a1, a2, a3, a4, a5, a6, err := res.YAML()
		if err != nil {
			t.Fatal(err)
		}
		b1, b2, b3, b4, b5, b6, err := got[region].YAML()
		if err != nil {
			t.Fatal(err)
		}
		for i, pair := range [][2][]byte{{a1, b1}, {a2, b2}, {a3, b3}, {a4, b4}, {a5, b5}, {a6, b6}} {
			if !bytes.Equal(pair[0], pair[1]) {
				t.Errorf("region %s: resources %d (listeners, routes, clusters, secrets, policy, limits) differ with and without the extauthz address", region, i)
			}
		}
	}
}
