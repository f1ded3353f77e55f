package translate

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

// memoBase has two regions, two upstreams with routes of every shape (hosts, headers, a
// path), a rate-limit service and a caller with a token quota on one upstream.
const memoBase = `version: 1
regions:
  hk:
    listen: 0.0.0.0:10000
    extauthz: 127.0.0.1:10100
    ratelimit: 127.0.0.1:8081
    xff_trusted_hops: 1
    upstreams: [anthropic, openai]
  sg:
    listen: 0.0.0.0:10000
    extauthz: 127.0.0.1:10100
    ratelimit: 127.0.0.1:8081
    upstreams: [anthropic, openai]
upstreams:
  openai:
    url: https://api.openai.com
    allowed_regions: [hk, sg]
    response_timeout: 30s
  anthropic:
    url: https://api.anthropic.com
    api: anthropic
    allowed_regions: [hk, sg]
callers:
  app:
    tokens: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
    upstreams: [anthropic, openai]
    limits:
      - {tokens: 100000, per: minute, upstream: anthropic}
routes:
  oa-chat: {match: {path: /openai/v1/chat/completions}, upstream: openai, prefix_rewrite: /v1/chat/completions}
  oa-hosts: {match: {prefix: /openai/, hosts: [a.example.com, "*.b.example.com"]}, upstream: openai, prefix_rewrite: /}
  oa-header: {match: {prefix: /openai/, headers: [{name: x-tier, exact: gold}]}, upstream: openai, prefix_rewrite: /}
  oa-all: {match: {prefix: /openai}, upstream: openai, prefix_rewrite: /}
  an-all: {match: {prefix: /anthropic}, upstream: anthropic, prefix_rewrite: /}
`

func memoConfig(t *testing.T, yaml string) *model.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	_, cfg, err := config.LoadConfig(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return cfg
}

// edit replaces old (which must occur) in memoBase.
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if !strings.Contains(memoBase, old) {
		t.Fatalf("memoBase has no %q", old)
	}
	return strings.Replace(memoBase, old, new, 1)
}

// routeEntries is region -> Envoy route name -> the route objects of that name, in order.
func routeEntries(all map[string]*Resources) map[string]map[string][]*routev3.Route {
	out := map[string]map[string][]*routev3.Route{}
	for region, res := range all {
		out[region] = map[string][]*routev3.Route{}
		for _, rc := range res.Routes {
			for _, vh := range rc.GetVirtualHosts() {
				for _, rt := range vh.GetRoutes() {
					out[region][rt.GetName()] = append(out[region][rt.GetName()], rt)
				}
			}
		}
	}
	return out
}

// sameAsUncached fails unless the cache's translation equals a translation without it.
func sameAsUncached(t *testing.T, cfg *model.Config, got map[string]*Resources) {
	t.Helper()
	want, err := All(cfg)
	if err != nil {
		t.Fatalf("uncached translation: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("cached translation has %d regions, a fresh one %d", len(got), len(want))
	}
	for region, w := range want {
		g := got[region]
		if g == nil {
			t.Fatalf("cached translation has no region %s", region)
		}
		// proto.Equal first: cmp with protocmp is slow, and only needed to show a difference.
		if equal := slices.EqualFunc(w.messages(), g.messages(), proto.Equal); !equal {
			if d := cmp.Diff(w.messages(), g.messages(), protocmp.Transform()); d != "" {
				t.Errorf("region %s: cached translation differs from a fresh one (-fresh +cached):\n%s", region, d)
			}
		}
	}
}

// TestCacheRetranslatesWhatChanged translates the base config, then an edit, with one
// Cache: the edit's output must equal a fresh translation (a stale route fails this), the
// routes whose inputs changed must be new objects and all others the cached ones.
func TestCacheRetranslatesWhatChanged(t *testing.T) {
	allRoutes := []string{"oa-chat", "oa-hosts", "oa-header", "oa-all", "an-all"}
	openai := []string{"oa-chat", "oa-hosts", "oa-header", "oa-all"}
	both := []string{"hk", "sg"}
	cases := []struct {
		name string
		yaml string
		// rebuilt lists, per region, the routes whose output must be made anew;
		// listeners, the regions whose listener must be.
		rebuilt   map[string][]string
		listeners []string
	}{
		{"unchanged", memoBase, nil, nil},
		{"route prefix",
			edit(t, "oa-all: {match: {prefix: /openai}", "oa-all: {match: {prefix: /oai}"),
			map[string][]string{"hk": {"oa-all"}, "sg": {"oa-all"}}, nil},
		{"route renamed",
			edit(t, "an-all:", "an-every:"),
			map[string][]string{"hk": {"an-every"}, "sg": {"an-every"}}, nil},
		{"route host added",
			edit(t, `hosts: [a.example.com, "*.b.example.com"]`, `hosts: [a.example.com, c.example.com, "*.b.example.com"]`),
			map[string][]string{"hk": {"oa-hosts"}, "sg": {"oa-hosts"}}, nil},
		{"upstream setting",
			edit(t, "response_timeout: 30s", "response_timeout: 45s"),
			map[string][]string{"hk": openai, "sg": openai}, nil},
		{"upstream default made explicit",
			// 10 s is the default connect timeout: the model, and so the output, is the
			// same, and nothing is rebuilt.
			edit(t, "    response_timeout: 30s\n", "    response_timeout: 30s\n    connect_timeout: 10s\n"),
			nil, nil},
		{"upstream default overridden",
			edit(t, "    response_timeout: 30s\n", "    response_timeout: 30s\n    retries: {attempts: 4}\n"),
			map[string][]string{"hk": openai, "sg": openai}, nil},
		{"upstream URL",
			edit(t, "url: https://api.anthropic.com", "url: https://anthropic.example.com/api"),
			map[string][]string{"hk": {"an-all"}, "sg": {"an-all"}}, nil},
		{"caller quota",
			edit(t, "{tokens: 100000, per: minute, upstream: anthropic}", "{tokens: 100000, per: minute}"),
			map[string][]string{"hk": allRoutes, "sg": allRoutes}, nil},
		{"region setting",
			edit(t, "xff_trusted_hops: 1", "xff_trusted_hops: 2"),
			map[string][]string{"hk": allRoutes}, []string{"hk"}},
		{"region checks inside Envoy",
			edit(t, "    xff_trusted_hops: 1\n", "    xff_trusted_hops: 1\n    extauthz_in_envoy: true\n"),
			map[string][]string{"hk": allRoutes}, []string{"hk"}},
		{"region upstreams",
			edit(t, "    upstreams: [anthropic, openai]\nupstreams:", "    upstreams: [openai]\nupstreams:"),
			map[string][]string{"sg": openai}, []string{"sg"}},
		{"usage ledger off",
			memoBase + "usage: {enabled: false}\n",
			nil, both},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCache()
			base := memoConfig(t, memoBase)
			first, err := c.All(base)
			if err != nil {
				t.Fatal(err)
			}
			sameAsUncached(t, base, first)
			cfg := memoConfig(t, tc.yaml)
			got, err := c.All(cfg)
			if err != nil {
				t.Fatal(err)
			}
			sameAsUncached(t, cfg, got)
			for _, region := range both {
				rebuilt := slices.Contains(tc.listeners, region)
				if reused := first[region].Listeners[0] == got[region].Listeners[0]; reused == rebuilt {
					t.Errorf("region %s: listener reused %v, want %v", region, reused, !rebuilt)
				}
			}
			before, after := routeEntries(first), routeEntries(got)
			for _, region := range both {
				for name, rts := range after[region] {
					rebuilt := slices.Contains(tc.rebuilt[region], name)
					for i, rt := range rts {
						prev := before[region][name]
						reused := i < len(prev) && prev[i] == rt
						switch {
						case rebuilt && reused:
							t.Errorf("region %s route %s #%d: reused the cached route; its inputs changed", region, name, i)
						case !rebuilt && !reused:
							t.Errorf("region %s route %s #%d: translated again; its inputs did not change", region, name, i)
						}
					}
				}
			}
		})
	}
}

// TestCacheMatchesGolden runs every golden input through one Cache, twice over, so that
// each translation may reuse what the one before left: every output must equal a fresh
// translation.
func TestCacheMatchesGolden(t *testing.T) {
	cases, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	c := NewCache()
	for _, in := range append(cases, cases...) {
		_, cfg, err := config.LoadConfig(in)
		if err != nil {
			t.Fatalf("load %s: %v", in, err)
		}
		got, err := c.All(cfg)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		sameAsUncached(t, cfg, got)
	}
}

func TestAppendKey(t *testing.T) {
	type pair struct{ A, B string }
	type withSlice struct{ S []string }
	type withPtr struct{ P *int }
	type withMap struct{ M map[string]int }
	one := 1
	key := func(v any) string {
		t.Helper()
		b, err := appendKey(nil, reflect.ValueOf(v), 0)
		if err != nil {
			t.Fatalf("appendKey(%#v): %v", v, err)
		}
		return string(b)
	}
	distinct := []any{
		pair{"ab", "c"}, pair{"a", "bc"},
		withSlice{}, withSlice{S: []string{}}, withSlice{S: []string{""}},
		withPtr{}, withPtr{P: new(int)}, withPtr{P: &one},
		withMap{}, withMap{M: map[string]int{}}, withMap{M: map[string]int{"a": 1}}, withMap{M: map[string]int{"a": 2}},
		time.Second, 2 * time.Second,
	}
	seen := map[string]any{}
	for _, v := range distinct {
		k := key(v)
		if prev, dup := seen[k]; dup && reflect.TypeOf(prev) == reflect.TypeOf(v) {
			t.Errorf("%#v and %#v have the same key", prev, v)
		}
		seen[k] = v
	}
	m1 := map[string]int{"a": 1, "b": 2, "c": 3}
	m2 := map[string]int{"c": 3, "b": 2, "a": 1}
	if key(withMap{m1}) != key(withMap{m2}) {
		t.Error("equal maps have different keys")
	}
	if _, err := appendKey(nil, reflect.ValueOf(struct{ F func() }{}), 0); err == nil {
		t.Error("a function was accepted in a key")
	}
	if _, err := appendKey(nil, reflect.ValueOf(model.Config{}), 0); err != nil {
		t.Errorf("the model cannot be keyed: %v", err)
	}
}

// TestValidateTrustsOnlyCachedRoutes: validate skips the routes it is told passed before,
// and reports any other failure exactly as Validate does.
func TestValidateTrustsOnlyCachedRoutes(t *testing.T) {
	all, err := All(memoConfig(t, memoBase))
	if err != nil {
		t.Fatal(err)
	}
	res := all["hk"]
	vh := res.Routes[0].VirtualHosts[0]
	bad := &routev3.Route{Name: "no-match", Action: vh.Routes[0].Action} // match is required
	vh.Routes = append(vh.Routes, bad)
	want := res.Validate()
	if want == nil {
		t.Fatal("Validate accepted a route without a match")
	}
	never := func(*routev3.Route) bool { return false }
	if err := res.validate(never); err == nil || err.Error() != want.Error() {
		t.Errorf("validate with no trusted route = %v, want %v", err, want)
	}
	if err := res.validate(func(rt *routev3.Route) bool { return rt == bad }); err != nil {
		t.Errorf("validate trusting the bad route = %v, want nil", err)
	}
	vh.Routes = vh.Routes[:len(vh.Routes)-1]
	vh.Domains = nil // at least one domain is required, whatever the routes
	want = res.Validate()
	always := func(*routev3.Route) bool { return true }
	if err := res.validate(always); want == nil || err == nil || err.Error() != want.Error() {
		t.Errorf("validate of a bad virtual host = %v, want %v", err, want)
	}
}
