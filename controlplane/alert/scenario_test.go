package alert_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/model"
)

// world is what the sources read, changed by the test between evaluations.
type world struct {
	mu     sync.Mutex
	state  alert.State
	probes []alert.ProbeResult
	// counters served as Prometheus text by the fake Envoy admin and ratelimit endpoints.
	envoy, ratelimit map[string]float64
}

func (w *world) set(f func(w *world)) { w.mu.Lock(); f(w); w.mu.Unlock() }

func (w *world) serve(m func(w *world) map[string]float64) http.HandlerFunc {
	return func(rw http.ResponseWriter, _ *http.Request) {
		w.mu.Lock()
		defer w.mu.Unlock()
		var lines []string
		for k, v := range m(w) {
			lines = append(lines, fmt.Sprintf("%s %g", k, v))
		}
		sort.Strings(lines)
		fmt.Fprintf(rw, "%s\n", strings.Join(lines, "\n"))
	}
}

func (w *world) sources() []alert.Source {
	return []alert.Source{
		alert.SourceFunc(func(_ context.Context, _ time.Time, rule alert.RuleFunc) []alert.Condition {
			w.mu.Lock()
			defer w.mu.Unlock()
			return alert.StateConditions(w.state, rule)
		}),
		alert.SourceFunc(func(_ context.Context, now time.Time, rule alert.RuleFunc) []alert.Condition {
			w.mu.Lock()
			defer w.mu.Unlock()
			return alert.ProbeConditions(w.probes, now, rule)
		}),
	}
}

func healthyRegion() alert.RegionState {
	return alert.RegionState{Name: "eu", RateLimit: true, Nodes: []alert.NodeState{
		{ID: "envoy-eu-1", Kind: alert.KindEnvoy, InSync: true},
		{ID: "extauthz-eu-1", Kind: alert.KindExtAuthz, InSync: true},
		{ID: "ratelimit-eu-1", Kind: alert.KindRatelimit, InSync: true},
	}}
}

const (
	retryStat = `envoy_cluster_upstream_rq_retry_limit_exceeded{envoy_cluster_name="upstream_openai"}`
	rqTotal   = `envoy_cluster_upstream_rq_total{envoy_cluster_name="upstream_openai"}`
	rq5xx     = `envoy_cluster_upstream_rq_xx{envoy_cluster_name="upstream_openai",envoy_response_code_class="5"}`
	rq2xx     = `envoy_cluster_upstream_rq_xx{envoy_cluster_name="upstream_openai",envoy_response_code_class="2"}`
	authzRq   = `envoy_cluster_upstream_rq_total{envoy_cluster_name="extauthz"}`
	ingressRq = `envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_eu"}`
	adminRq   = `envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"}`
	shedStat  = `envoy_http_local_rate_limit_rate_limited{envoy_local_http_ratelimit_prefix="llmedge_overload"}`
	cbFull    = `envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="upstream_openai"}`
	nearLimit = `ratelimit_service_rate_limit_near_limit{domain="llmedge",key1="caller_alice"}`
	overLimit = `ratelimit_service_rate_limit_over_limit{domain="llmedge",key1="caller_alice"}`
)

// TestEveryRuleFiresOnceAndResolvesOnceInEveryFormat drives each condition the issue
// names through the sources (a rejected edit and a disconnected extauthz through the
// control plane's state, a quota past 80 % through ratelimit's metrics, an upstream
// answering 503 until its retries run out and requests shed for load through Envoy's
// stats, a failing probe through
// ProbeResult) and checks that every format receives exactly one firing and one resolved
// message for each, with valid payloads and signatures. The Envoy and ratelimit endpoints
// are local fakes serving their metric names.
func TestEveryRuleFiresOnceAndResolvesOnceInEveryFormat(t *testing.T) {
	w := &world{
		state:     alert.State{Regions: []alert.RegionState{healthyRegion()}},
		envoy:     map[string]float64{rqTotal: 100, rq2xx: 100, retryStat: 0, authzRq: 50, ingressRq: 100, adminRq: 5, shedStat: 0, cbFull: 0},
		ratelimit: map[string]float64{nearLimit: 0, overLimit: 0},
	}
	envoy := httptest.NewServer(w.serve(func(w *world) map[string]float64 { return w.envoy }))
	defer envoy.Close()
	rl := httptest.NewServer(w.serve(func(w *world) map[string]float64 { return w.ratelimit }))
	defer rl.Close()
	e := newEnv(t, w.sources()...)
	cfg := e.a.Engine.Config()
	cfg.Scrape = []model.ScrapeTarget{{Region: "eu", EnvoyAdmin: envoy.URL, RatelimitMetrics: rl.URL + "/metrics"}}
	e.a.SetConfig(cfg)
	ctx := t.Context()

	if msgs := e.a.Step(ctx, e.clk.Now()); len(msgs) != 0 {
		t.Fatalf("healthy world sent %+v", msgs)
	}
	// Everything goes wrong at once.
	w.set(func(w *world) {
		w.state.ConfigErrors = []string{"upstreams.openai.url: must be an absolute http(s) URL"}
		w.state.Regions[0].Nodes = w.state.Regions[0].Nodes[:1:1] // extauthz and ratelimit gone
		w.state.Regions[0].Nodes = append(w.state.Regions[0].Nodes, alert.NodeState{ID: "ratelimit-eu-1", Kind: alert.KindRatelimit, InSync: true})
		w.envoy[rqTotal] += 40
		w.envoy[rq5xx] += 40       // every attempt answered 503...
		w.envoy[retryStat] += 8    // ...and 8 requests ran out of retries
		w.envoy[ingressRq] += 1000 // of 1,000 requests, 15 shed at the admission ceiling
		w.envoy[shedStat] += 15    // and 5 at the upstream's circuit breaker: 2 % shed
		w.envoy[cbFull] += 5
		w.envoy[adminRq] += 5000    // admin requests are not the region's traffic
		w.ratelimit[nearLimit] += 3 // hits past 80 % of caller alice's window
		w.probes = []alert.ProbeResult{{Region: "eu", Upstream: "openai", At: e.clk.Now(), OK: false, Error: "connect: connection refused"}}
	})
	e.clk.Add(15 * time.Second)
	first := e.a.Step(ctx, e.clk.Now())
	// service_down waits out its "for" (1m) before it fires.
	e.clk.Add(time.Minute)
	second := e.a.Step(ctx, e.clk.Now())
	wantRules := []string{"config_rejected", "overloaded", "probe_failed", "quota", "retries_exhausted", "service_down", "upstream_errors"}
	if got := rulesOf(append(first, second...)); strings.Join(got, ",") != strings.Join(wantRules, ",") {
		t.Fatalf("fired %v; want %v", got, wantRules)
	}
	for _, m := range first {
		if want := "region eu shed 2% of 1000 requests in the last 5m0s with 503 overloaded: 15 at the admission ceiling (regions.eu.overload), 5 at upstream circuit breakers (openai 5)"; m.Rule == "overloaded" && m.Summary != want {
			t.Errorf("overloaded summary %q; want %q", m.Summary, want)
		}
	}
	if !slices.Contains(rulesOf(first), "overloaded") {
		t.Errorf("overloaded did not fire at once: %v", rulesOf(first))
	}
	e.delivered(uint64(len(kinds) * len(wantRules)))
	// Held conditions within the repeat interval send nothing more.
	e.clk.Add(time.Minute)
	if msgs := e.a.Step(ctx, e.clk.Now()); len(msgs) != 0 {
		t.Fatalf("held alerts sent again before the repeat interval: %+v", msgs)
	}
	active := e.a.Status(e.clk.Now()).Active
	if len(active) != len(wantRules) {
		t.Errorf("/status shows %d active alerts; want %d: %+v", len(active), len(wantRules), active)
	}

	// Everything recovers; the metric rules clear once the window holds no new failures.
	w.set(func(w *world) {
		w.state = alert.State{Regions: []alert.RegionState{healthyRegion()}}
		w.envoy[rqTotal] += 100
		w.envoy[rq2xx] += 100
		w.envoy[ingressRq] += 1000
		w.probes = []alert.ProbeResult{{Region: "eu", Upstream: "openai", At: e.clk.Now(), OK: true, Status: 200}}
	})
	e.clk.Add(alert.Window + time.Minute)
	e.a.Step(ctx, e.clk.Now())
	e.clk.Add(30 * time.Second)
	e.a.Step(ctx, e.clk.Now())
	e.delivered(uint64(2 * len(kinds) * len(wantRules)))

	gots, bad := e.rv.snapshot()
	for _, b := range bad {
		t.Error(b)
	}
	count := map[got]int{}
	for _, g := range gots {
		g.key = ""
		count[g]++
	}
	for _, k := range kinds {
		for _, r := range wantRules {
			for _, st := range []string{alert.Firing, alert.Resolved} {
				if n := count[got{k, st, r, ""}]; n != 1 {
					t.Errorf("%s received %d %s messages for %s; want exactly 1", k, n, st, r)
				}
			}
		}
	}
	if len(gots) != 2*len(kinds)*len(wantRules) {
		t.Errorf("received %d messages; want %d", len(gots), 2*len(kinds)*len(wantRules))
	}
}

func rulesOf(msgs []alert.Message) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range msgs {
		if m.Status == alert.Firing && !seen[m.Rule] {
			seen[m.Rule] = true
			out = append(out, m.Rule)
		}
	}
	sort.Strings(out)
	return out
}
