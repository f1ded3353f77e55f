package translate_test

import (
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/internal/wire"
)

// hops maps each route of a route configuration to its extauthz hop.
func hops(t *testing.T, rc *routev3.RouteConfiguration) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, vh := range rc.VirtualHosts {
		for _, rt := range vh.Routes {
			per := &extauthzv3.ExtAuthzPerRoute{}
			if err := rt.TypedPerFilterConfig["envoy.filters.http.ext_authz"].UnmarshalTo(per); err != nil {
				t.Fatal(err)
			}
			out[rt.Name] = per.GetCheckSettings().GetContextExtensions()[wire.ContextHop]
		}
	}
	return out
}

// The hop that makes extauthz believe x-llmedge-caller is only ever on the routes of the
// peer listener and the local (internal) listener, never on a callers' listener, whatever
// the config; and the peer listener admits exactly the edge identities of the regions that
// forward to it.
func TestPeerTrustOnlyOnPeerListeners(t *testing.T) {
	for _, in := range []string{"testdata/in/peers.yaml", "testdata/in/entry-region.yaml"} {
		all, err := translate.All(load(t, in))
		if err != nil {
			t.Fatal(err)
		}
		for region, res := range all {
			for _, rc := range res.Routes {
				trusted := rc.Name == translate.PeerRouteConfigName(region) || rc.Name == translate.LocalListenerName(region)
				for route, hop := range hops(t, rc) {
					if (hop == wire.HopPeer) != trusted {
						t.Errorf("%s: region %s route config %s route %s has hop %q", in, region, rc.Name, route, hop)
					}
				}
			}
			for _, l := range res.Listeners {
				if l.Name != translate.PeerListenerName(region) {
					continue
				}
				dt := &tlsv3.DownstreamTlsContext{}
				if err := l.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(dt); err != nil {
					t.Fatal(err)
				}
				if !dt.GetRequireClientCertificate().GetValue() {
					t.Errorf("%s: %s does not require a client certificate", in, l.Name)
				}
				sans := dt.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
				if len(sans) != 1 || sans[0].SanType != tlsv3.SubjectAltNameMatcher_URI {
					t.Fatalf("%s: %s SAN matchers %v", in, l.Name, sans)
				}
				re := sans[0].GetMatcher().GetSafeRegex().GetRegex()
				if strings.Contains(re, "("+region+")") || strings.Contains(re, "|"+region+")") || !strings.HasSuffix(re, "/envoy$") {
					t.Errorf("%s: %s admits %s", in, l.Name, re)
				}
				hcm := &hcmv3.HttpConnectionManager{}
				if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
					t.Fatal(err)
				}
				for _, f := range hcm.HttpFilters {
					if f.Name == "envoy.filters.http.ratelimit" {
						t.Errorf("%s: %s counts quotas again", in, l.Name)
					}
				}
			}
		}
	}
}

// An entry region gets no cluster that reaches the provider directly.
func TestEntryRegionHasNoDirectCluster(t *testing.T) {
	all, err := translate.All(load(t, "testdata/in/entry-region.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all["cn"].Clusters {
		if c.Name == translate.ClusterName("gemini") {
			t.Errorf("cn has the direct cluster %s", c.Name)
		}
	}
	if got := hops(t, all["cn"].Routes[0])["gemini"]; got != wire.HopForward {
		t.Errorf("cn's gemini route hop %q, want %q", got, wire.HopForward)
	}
}
