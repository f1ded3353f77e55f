package translate_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/internal/wire"
)

func load(t *testing.T, path string) *model.Config {
	t.Helper()
	_, cfg, err := config.LoadConfig(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return cfg
}

// A nested typed_config that breaks Envoy's rules must be caught even though the outer
// message's ValidateAll passes: that is the gap ValidateDeep exists to close.
func TestValidateDeepDescendsIntoAny(t *testing.T) {
	bad, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: ""}) // stat_prefix is required
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{
		Name: "l",
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: bad},
		}}}},
	}
	if err := l.ValidateAll(); err != nil {
		t.Fatalf("precondition: the outer ValidateAll should pass, got %v", err)
	}
	err = translate.ValidateDeep(l)
	if err == nil || !strings.Contains(err.Error(), "StatPrefix") {
		t.Fatalf("ValidateDeep = %v, want an error about StatPrefix", err)
	}
}

// Translation must be byte-for-byte deterministic, or content-hashed versions would change
// on every reload and every Envoy would be re-pushed an unchanged config.
func TestTranslationIsDeterministic(t *testing.T) {
	cfg := load(t, "testdata/in/compliance-regions.yaml")
	enc := func() map[string][]byte {
		all, err := translate.All(cfg)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]byte{}
		for region, res := range all {
			var b bytes.Buffer
			for _, m := range []proto.Message{res.Listeners[0], res.Routes[0]} {
				x, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				b.Write(x)
			}
			for _, c := range res.Clusters {
				x, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
				b.Write(x)
			}
			out[region] = b.Bytes()
		}
		return out
	}
	first := enc()
	for i := 0; i < 20; i++ {
		for region, b := range enc() {
			if !bytes.Equal(b, first[region]) {
				t.Fatalf("run %d: region %s encodes differently", i, region)
			}
		}
	}
}

func TestRegionOnlyHoldsItsUpstreams(t *testing.T) {
	cfg := load(t, "testdata/in/compliance-regions.yaml")
	res, err := translate.Region(cfg, "hk")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range res.Clusters {
		names = append(names, c.GetName())
	}
	if got, want := strings.Join(names, ","), "upstream_groq,upstream_openai,llmedge_extauthz"; got != want {
		t.Errorf("hk clusters = %s, want %s", got, want)
	}
	for _, vh := range res.Routes[0].GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if c := r.GetRoute().GetCluster(); c != "upstream_groq" && c != "upstream_openai" {
				t.Errorf("hk route %s targets %s, which hk does not serve", r.GetName(), c)
			}
		}
	}
	if _, err := translate.Region(cfg, "mars"); err == nil {
		t.Error("translating an unknown region succeeded")
	}
}

// Route order has one owner, config.SortRoutes: translate emits routes in the model's order
// (a route's hosts together in its place) and never re-sorts them, so a change to the
// ordering rule shows in config's tests and in every golden at once.
func TestRoutesFollowModelOrder(t *testing.T) {
	cfg := load(t, "testdata/in/hosts-and-headers.yaml")
	emitted := func(cfg *model.Config) []string {
		res, err := translate.Region(cfg, "us")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range res.Routes[0].GetVirtualHosts()[0].GetRoutes() {
			if len(names) == 0 || names[len(names)-1] != r.GetName() {
				names = append(names, r.GetName())
			}
		}
		return names
	}
	var want []string
	for _, r := range cfg.Routes {
		want = append(want, r.Name)
	}
	if got := emitted(cfg); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("emitted routes %v, want the model's order %v", got, want)
	}
	// A model in another order is emitted in that order: translate has no ordering rule
	// of its own that could drift from config's.
	slices.Reverse(cfg.Routes)
	slices.Reverse(want)
	if got := emitted(cfg); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("emitted routes %v for a reversed model, want %v", got, want)
	}
}

// Quotas (what /status shows) and the RateLimitConfig (what ratelimit enforces) come from
// one decision: they name exactly the same limits, in every region, scoped limits of
// upstreams a region does not serve left out of both.
func TestQuotasAreWhatRatelimitEnforces(t *testing.T) {
	for _, in := range []string{"testdata/in/quotas-scoping.yaml", "testdata/in/token-quotas.yaml"} {
		quotasAreEnforced(t, in)
	}
}

func quotasAreEnforced(t *testing.T, in string) {
	cfg := load(t, in)
	for _, region := range cfg.RegionNames() {
		res, err := translate.Region(cfg, region)
		if err != nil {
			t.Fatal(err)
		}
		var enforced []string
		var walk func(ds []*rlsconfv3.RateLimitDescriptor)
		walk = func(ds []*rlsconfv3.RateLimitDescriptor) {
			for _, d := range ds {
				if p := d.GetRateLimit(); p != nil {
					enforced = append(enforced, p.GetName())
				}
				walk(d.GetDescriptors())
			}
		}
		for _, rl := range res.RateLimits {
			walk(rl.GetDescriptors())
		}
		var listed []string
		for _, q := range translate.Quotas(cfg, region) {
			listed = append(listed, q.Limit.Name)
		}
		slices.Sort(enforced)
		slices.Sort(listed)
		if len(listed) == 0 || !slices.Equal(listed, enforced) {
			t.Errorf("region %s: Quotas lists %v, ratelimit enforces %v", region, listed, enforced)
		}
		if !strings.Contains(in, "quotas-scoping") {
			continue
		}
		// alice.limits[1] is her anthropic limit: hk serves anthropic, sg does not.
		anthropic := slices.ContainsFunc(listed, func(n string) bool { return strings.Contains(n, "alice.limits[1]") })
		if anthropic != (region == "hk") {
			t.Errorf("region %s lists alice's anthropic limit: %v, want %v", region, anthropic, region == "hk")
		}
	}
}

// The local replies of a request no route shaped follow internal/wire's API signs, in their
// order, before OpenAI's catch-all shape: the guess extauthz makes too (decide.GuessAPI).
func TestLocalReplyGuessFollowsWire(t *testing.T) {
	if model.APIOpenAI != wire.APIOpenAI || model.APIAnthropic != wire.APIAnthropic || model.APIGemini != wire.APIGemini {
		t.Fatal("model's API names differ from internal/wire's")
	}
	cfg := load(t, "testdata/in/hosts-and-headers.yaml")
	res, err := translate.Region(cfg, cfg.Regions[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(res.Listeners[0])
	if err != nil {
		t.Fatal(err)
	}
	// Mappers in order, each as the CEL conditions it checks.
	var mappers []string
	var walk func(v any, out *[]string)
	walk = func(v any, out *[]string) {
		switch v := v.(type) {
		case map[string]any:
			if e, ok := v["expression"].(string); ok {
				*out = append(*out, e)
			}
			for _, k := range slices.Sorted(maps.Keys(v)) {
				walk(v[k], out)
			}
		case []any:
			for _, x := range v {
				walk(x, out)
			}
		}
	}
	var doc map[string]any
	if err := json.Unmarshal(js, &doc); err != nil {
		t.Fatal(err)
	}
	var find func(v any)
	find = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ms, ok := v["mappers"].([]any); ok {
				for _, m := range ms {
					var exprs []string
					walk(m.(map[string]any)["filter"], &exprs)
					mappers = append(mappers, strings.Join(exprs, " && "))
				}
				return
			}
			for _, x := range v {
				find(x)
			}
		case []any:
			for _, x := range v {
				find(x)
			}
		}
	}
	find(doc)
	first := func(sub string) int {
		return slices.IndexFunc(mappers, func(m string) bool { return strings.Contains(m, sub) })
	}
	last := -1
	for _, g := range wire.APIGuesses() {
		var signs []string
		for _, h := range g.Headers {
			signs = append(signs, "'"+h+"' in request.headers")
		}
		for _, p := range g.PathContains {
			signs = append(signs, "request.url_path.contains('"+p+"')")
		}
		for _, sign := range signs {
			i := first(sign)
			if i < 0 {
				t.Errorf("%s: no local reply mapper checks %s", g.API, sign)
				continue
			}
			if i < last {
				t.Errorf("%s: %s is tried before the previous family's signs", g.API, sign)
			}
		}
		last = first(signs[0])
	}
	if len(mappers) == 0 {
		t.Fatal("no local reply mappers found")
	}
}
