package xds

import (
	"bytes"
	"maps"
	"regexp"
	"slices"
	"testing"
	"time"
	"unsafe"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/translate"
)

var versionRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestUpdateFirstLoad(t *testing.T) {
	s := newServer(t, nil)
	changed, err := s.Update(resources(t, testFile()))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"hk", "sg"}, changed); diff != "" {
		t.Errorf("changed regions (-want +got):\n%s", diff)
	}
	v := s.Versions()
	if diff := cmp.Diff([]string{"hk", "sg"}, sortedKeys(v)); diff != "" {
		t.Fatalf("regions served (-want +got):\n%s", diff)
	}
	for region, types := range v {
		if diff := cmp.Diff([]string{"authz_policy", "clusters", "listeners", "ratelimit_config", "routes", "secrets"}, sortedKeys(types)); diff != "" {
			t.Errorf("region %s types (-want +got):\n%s", region, diff)
		}
		for typ, ver := range types {
			if !versionRE.MatchString(ver) {
				t.Errorf("region %s %s version %q is not a 16-hex-digit content hash", region, typ, ver)
			}
		}
	}
	// hk and sg serve different upstreams, so none of their versions may coincide except
	// by a content collision, which the translator's region-specific names rule out.
	for typ := range v["hk"] {
		if typ == "ratelimit_config" || typ == "secrets" {
			continue // no limits and no TLS upstreams in this config: both regions serve the same empty list
		}
		if v["hk"][typ] == v["sg"][typ] {
			t.Errorf("hk and sg share the %s version %q although their content differs", typ, v["hk"][typ])
		}
	}
}

// TestUpdateVersions applies the base config, then an edit, and checks exactly which
// regions and which types changed version.
func TestUpdateVersions(t *testing.T) {
	tests := []struct {
		name        string
		edit        func(*config.File)
		wantChanged []string
		wantDiff    map[string][]string // region -> types whose version changed, or added/removed
	}{
		{
			name:     "identical input",
			edit:     nil,
			wantDiff: map[string][]string{},
		},
		{
			name: "route served only in sg",
			edit: func(f *config.File) {
				r := f.Routes["gemini"]
				r.PrefixRewrite = "/v1beta/"
				f.Routes["gemini"] = r
			},
			wantChanged: []string{"sg"},
			wantDiff:    map[string][]string{"sg": {"routes"}},
		},
		{
			name: "route served in both regions",
			edit: func(f *config.File) {
				r := f.Routes["openai"]
				r.Match.Prefix = "/oai"
				f.Routes["openai"] = r
			},
			wantChanged: []string{"hk", "sg"},
			wantDiff:    map[string][]string{"hk": {"routes"}, "sg": {"routes"}},
		},
		{
			name: "hk listen port",
			edit: func(f *config.File) {
				r := f.Regions["hk"]
				r.Listen = "127.0.0.1:10100"
				f.Regions["hk"] = r
			},
			wantChanged: []string{"hk"},
			wantDiff:    map[string][]string{"hk": {"listeners"}},
		},
		{
			name: "upstream connect timeout",
			edit: func(f *config.File) {
				u := f.Upstreams["gemini"]
				u.ConnectTimeout = 3 * time.Second
				f.Upstreams["gemini"] = u
			},
			wantChanged: []string{"sg"},
			wantDiff:    map[string][]string{"sg": {"clusters"}},
		},
		{
			name:        "remove sg",
			edit:        withoutSG,
			wantChanged: []string{"sg"},
			wantDiff:    map[string][]string{"sg": {"removed"}},
		},
		{
			name: "add us",
			edit: func(f *config.File) {
				f.Regions["us"] = config.Region{Listen: "127.0.0.1:10002", ExtAuthz: "127.0.0.1:10100", Upstreams: []string{"gemini"}}
				u := f.Upstreams["gemini"]
				u.AllowedRegions = []string{"sg", "us"}
				f.Upstreams["gemini"] = u
			},
			wantChanged: []string{"us"},
			wantDiff:    map[string][]string{"us": {"added"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, nil)
			if _, err := s.Update(resources(t, testFile())); err != nil {
				t.Fatal(err)
			}
			before := s.Versions()

			// Translate afresh: equal content in new proto objects must hash the same.
			changed, err := s.Update(resources(t, edited(tc.edit)))
			if err != nil {
				t.Fatal(err)
			}
			after := s.Versions()
			if diff := cmp.Diff(tc.wantChanged, changed, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("changed regions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantDiff, versionDiff(before, after)); diff != "" {
				t.Errorf("version changes (-want +got):\n%s\nbefore: %v\nafter:  %v", diff, before, after)
			}

			// Applying the same edit again is a no-op.
			changed, err = s.Update(resources(t, edited(tc.edit)))
			if err != nil {
				t.Fatal(err)
			}
			if len(changed) != 0 {
				t.Errorf("second identical Update changed %v", changed)
			}
			if diff := cmp.Diff(after, s.Versions()); diff != "" {
				t.Errorf("versions moved on an identical Update (-first +second):\n%s", diff)
			}
		})
	}
}

func TestUpdateDeterministicAcrossServers(t *testing.T) {
	a, b := newServer(t, nil), newServer(t, nil)
	if _, err := a.Update(resources(t, testFile())); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Update(resources(t, testFile())); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a.Versions(), b.Versions()); diff != "" {
		t.Errorf("two servers fed the same config disagree on versions (-a +b):\n%s", diff)
	}
	// The order resources arrive in does not matter either: versions hash by name order.
	res := resources(t, testFile())
	sg := res["sg"]
	for i, j := 0, len(sg.Clusters)-1; i < j; i, j = i+1, j-1 {
		sg.Clusters[i], sg.Clusters[j] = sg.Clusters[j], sg.Clusters[i]
	}
	c := newServer(t, nil)
	if _, err := c.Update(res); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a.Versions(), c.Versions()); diff != "" {
		t.Errorf("reordering clusters changed versions (-want +got):\n%s", diff)
	}
}

// An inconsistent snapshot for one region rejects the whole update: no region moves.
func TestUpdateInconsistentPushesNothing(t *testing.T) {
	s := newServer(t, nil)
	if _, err := s.Update(resources(t, testFile())); err != nil {
		t.Fatal(err)
	}
	before := s.Versions()

	next := resources(t, edited(func(f *config.File) {
		r := f.Regions["hk"]
		r.Listen = "127.0.0.1:10100" // hk would change...
		f.Regions["hk"] = r
	}))
	next["sg"] = &translate.Resources{ // ...but sg's listener names a route config it lacks
		Region:    "sg",
		Listeners: next["sg"].Listeners,
		Clusters:  next["sg"].Clusters,
	}
	changed, err := s.Update(next)
	if err == nil {
		t.Fatal("Update accepted a listener whose route configuration is missing")
	}
	if len(changed) != 0 {
		t.Errorf("failed Update reports changed regions %v", changed)
	}
	if diff := cmp.Diff(before, s.Versions()); diff != "" {
		t.Errorf("failed Update moved versions (-before +after):\n%s", diff)
	}
}

func TestShortType(t *testing.T) {
	for in, want := range map[string]string{
		"type.googleapis.com/envoy.config.listener.v3.Listener":              "listeners",
		"type.googleapis.com/envoy.config.route.v3.RouteConfiguration":       "routes",
		"type.googleapis.com/envoy.config.cluster.v3.Cluster":                "clusters",
		"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
	} {
		if got := ShortType(in); got != want {
			t.Errorf("ShortType(%q) = %q, want %q", in, got, want)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// Encoding once must not change a byte of what Envoy receives, and every marshal must hand
// out that one encoding (a copy per stream is what it exists to avoid).
func TestEncodedRoutes(t *testing.T) {
	for region, res := range resources(t, bigFile(50)) {
		for _, rc := range res.Routes {
			enc, err := encodeOnce(rc, routeEncodings{})
			if err != nil {
				t.Fatal(err)
			}
			want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(rc)
			if enc.GetName() != rc.GetName() {
				t.Errorf("region %s: name %q, want %q", region, enc.GetName(), rc.GetName())
			}
			// The way go-control-plane marshals a resource, twice: the same bytes, the same array.
			got1, err1 := cachev3.MarshalResource(enc)
			got2, err2 := cachev3.MarshalResource(enc)
			if err1 != nil || err2 != nil || !bytes.Equal(got1, want) {
				t.Fatalf("region %s: encoded route config differs from its encoding (err %v, %v)", region, err1, err2)
			}
			if unsafe.SliceData(got1) != unsafe.SliceData(got2) {
				t.Errorf("region %s: two marshals gave two copies, want one shared encoding", region)
			}
			if n := proto.Size(enc); n != len(want) {
				t.Errorf("region %s: proto.Size = %d, want %d", region, n, len(want))
			}
			// A caller appending to what it got must not write into the shared encoding.
			_ = append(got1, 0xff)
			if again, _ := cachev3.MarshalResource(enc); !bytes.Equal(again, want) {
				t.Fatalf("region %s: appending to a marshal changed the shared encoding", region)
			}
			prefixed, err := proto.MarshalOptions{}.MarshalAppend([]byte("x"), enc)
			if err != nil || !bytes.Equal(prefixed, append([]byte("x"), want...)) {
				t.Errorf("region %s: MarshalAppend after a prefix is not prefix+encoding (err %v)", region, err)
			}
			back := &routev3.RouteConfiguration{}
			if err := proto.Unmarshal(got1, back); err != nil || !proto.Equal(back, rc) {
				t.Fatalf("region %s: decoding the encoding does not give the route config back", region)
			}
			// Reflection (what anything else in the process would see) holds the same message.
			clone := &routev3.RouteConfiguration{}
			proto.Merge(clone, enc)
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(clone)
			if err := proto.Unmarshal(b, back); err != nil || !proto.Equal(back, rc) {
				t.Errorf("region %s: a merge through reflection does not give the route config back", region)
			}
		}
	}
}
