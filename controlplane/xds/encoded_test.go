package xds

import (
	"bytes"
	"path/filepath"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/translate"
)

// A route configuration assembled from its routes' encodings must be, byte for byte, what
// proto.Marshal makes of it: for every golden input of the translator (hosts, headers,
// peers, quotas...) and a large config, with nothing cached and with everything cached.
func TestEncodeRouteConfigIsDeterministicMarshal(t *testing.T) {
	inputs, err := filepath.Glob("../translate/testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no translator inputs: %v", err)
	}
	check := func(t *testing.T, all map[string]*translate.Resources) {
		t.Helper()
		for region, res := range all {
			enc := routeEncodings{next: map[*routev3.Route][]byte{}}
			for _, rc := range res.Routes {
				want, err := proto.MarshalOptions{Deterministic: true}.Marshal(rc)
				if err != nil {
					t.Fatal(err)
				}
				for _, pass := range []string{"cold", "warm"} {
					got, err := encodeRouteConfig(rc, enc)
					if err != nil {
						t.Fatalf("region %s %s: %v", region, rc.GetName(), err)
					}
					if !bytes.Equal(got, want) {
						t.Errorf("region %s %s (%s): assembled encoding differs from proto.Marshal's", region, rc.GetName(), pass)
					}
					enc = routeEncodings{prev: enc.next, next: map[*routev3.Route][]byte{}}
				}
			}
		}
	}
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			_, cfg, err := config.LoadConfig(in)
			if err != nil {
				t.Fatal(err)
			}
			all, err := translate.All(cfg)
			if err != nil {
				t.Fatal(err)
			}
			check(t, all)
		})
	}
	t.Run("big", func(t *testing.T) { check(t, resources(t, bigFile(300))) })
}

// Update keeps the encodings of the routes the translator reused, and what it serves after
// an edit is the edited config, never a kept encoding of the old one.
func TestUpdateReusesRouteEncodings(t *testing.T) {
	tc := translate.NewCache()
	translateWith := func(f config.File) map[string]*translate.Resources {
		t.Helper()
		cfg, err := config.Validate(f)
		if err != nil {
			t.Fatal(err)
		}
		all, err := tc.All(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return all
	}
	s := newServer(t, nil)
	before := bigFile(20)
	if _, err := s.Update(translateWith(before)); err != nil {
		t.Fatal(err)
	}
	kept := s.routeEnc
	after := bigFile(20)
	r := after.Routes["extra0003"]
	r.Match.Prefix = "/edited"
	after.Routes["extra0003"] = r
	all := translateWith(after)
	if _, err := s.Update(all); err != nil {
		t.Fatal(err)
	}
	for region, res := range all {
		reused, fresh := 0, 0
		for _, rt := range res.Routes[0].GetVirtualHosts()[0].GetRoutes() {
			old, ok := kept[rt]
			switch {
			case !ok:
				fresh++
			case unsafeSame(old, s.routeEnc[rt]):
				reused++
			default:
				t.Errorf("region %s route %s: encoded again although kept", region, rt.GetName())
			}
		}
		if fresh != 1 || reused == 0 {
			t.Errorf("region %s: %d routes encoded anew, %d reused; want 1 and the rest", region, fresh, reused)
		}
		served := cacheResponses(t, s, region, resourcev3.RouteType, []string{translate.RouteConfigName(region)}, 1)[0]
		got := &routev3.RouteConfiguration{}
		if err := served.GetResources()[0].UnmarshalTo(got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, res.Routes[0]) {
			t.Errorf("region %s: served route config is not the edited one", region)
		}
		want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(res.Routes[0])
		if !bytes.Equal(served.GetResources()[0].GetValue(), want) {
			t.Errorf("region %s: served encoding differs from proto.Marshal's", region)
		}
	}
}

func unsafeSame(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
