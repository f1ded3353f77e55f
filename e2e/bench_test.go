package e2e

import (
	"bytes"
	"fmt"
	"testing"
	"text/template"
	"time"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/internal/benchconfig"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// benchPollInterval is how often BenchmarkWriteToACK polls /status, so it is also the
// resolution of its figures.
const benchPollInterval = 2 * time.Millisecond

// BenchmarkWriteToACK measures the time from writing an edited routes YAML (write a
// temporary file, rename it over the old one, as editors do) until /status shows every
// region's nodes (Envoy and extauthz) in sync with the new routes versions, with the real
// control plane binary and two real Envoys (hk and sg). Each iteration renames one route and changes its prefix, so
// both regions get new routes. The figure includes the watcher hold-off, which the harness
// sets to 50ms (--watch-holdoff; the production default is 100ms). It reports the
// percentiles of the iterations; run it with a fixed count, e.g. -benchtime 30x.
//
//   - routes=4: the twoRegions config of the e2e tests plus the renamed route.
//   - routes=1000: the shared benchmark config (internal/benchconfig: 5 regions, 20 https
//     upstreams, routes r0000..r0998 plus the renamed route, some bound to hosts or
//     headers), of which hk and sg run an Envoy.
func BenchmarkWriteToACK(b *testing.B) {
	up := startUpstream(b, fakellm.Options{})
	b.Run("routes=4", func(b *testing.B) {
		benchWriteToACK(b, up, twoRegions, "openai")
	})
	b.Run("routes=1000", func(b *testing.B) {
		benchWriteToACK(b, up, benchRoutesTemplate(999), "up00")
	})
}

// benchProbe is the route each iteration renames; tmpl must end in the routes section.
func benchProbe(n int, upstream string) string {
	return fmt.Sprintf("  bench-probe-%d:\n    match: {prefix: /bench-probe-%d/}\n    upstream: %s\n    prefix_rewrite: /\n", n, n, upstream)
}

func benchWriteToACK(b *testing.B, up *upstream, tmpl, probeUpstream string) {
	s := newStack(b, up, tmpl+benchProbe(0, probeUpstream), "hk", "sg")
	// Resolve the template once: an iteration then writes plain text.
	var rendered bytes.Buffer
	if err := template.Must(template.New("routes").Parse(tmpl)).Execute(&rendered, routesData{s}); err != nil {
		b.Fatal(err)
	}
	base := rendered.String()
	st := s.waitInSync(30 * time.Second)
	prev := map[string]string{}
	nodes := map[string]int{} // Envoy, extauthz and any ratelimit: all must catch up
	for r := range s.envoys {
		prev[r] = s.region(st, r).Versions["routes"]
		nodes[r] = len(s.region(st, r).Nodes)
	}

	var took []time.Duration
	n := 0
	for b.Loop() {
		n++
		// Everything writeRoutes does before writing (rendering, adding the test caller) is
		// done before the clock starts; the timed part is the write and rename alone.
		doc := s.withTester([]byte(base + benchProbe(n, probeUpstream)))
		start := time.Now()
		benchReplace(b, s.routes, doc)
		acked := benchWaitACK(b, s, prev, nodes, 30*time.Second)
		took = append(took, time.Since(start))
		for r := range s.envoys {
			prev[r] = s.region(acked, r).Versions["routes"]
		}
	}
	for _, p := range []struct {
		unit string
		q    float64
	}{{"p50-ms", 0.50}, {"p90-ms", 0.90}, {"p99-ms", 0.99}, {"max-ms", 1}} {
		b.ReportMetric(host.Ms(host.Pct(took, p.q)), p.unit)
	}
	// The control plane's own share: the reload (load, validate, translate, snapshot
	// update) it logs for every applied edit, one per iteration after the initial load.
	reloads := benchReloads(b, s, 1+len(took))[1:]
	b.ReportMetric(host.Ms(host.Pct(reloads, 0.50)), "reload-p50-ms")
}

// benchReloads waits until the control plane has logged want applied reloads and returns
// the time each took, in order.
func benchReloads(b *testing.B, s *stack, want int) []time.Duration {
	b.Helper()
	var took []time.Duration
	testenv.Eventually(b, 10*time.Second, 10*time.Millisecond, func() error {
		var err error
		if _, took, err = benchconfig.AppliedReloads(s.cp.Log()); err != nil {
			return err
		}
		if len(took) != want {
			return fmt.Errorf("control plane logged %d applied reloads, want %d", len(took), want)
		}
		return nil
	})
	return took
}

// benchReplace replaces the routes YAML as writeRoutes does: write a temporary file, then
// rename it over the old one.
func benchReplace(b *testing.B, path string, doc []byte) {
	b.Helper()
	if err := host.ReplaceFile(path, doc); err != nil {
		b.Fatal(err)
	}
}

// benchWaitACK polls /status every benchPollInterval until every region with an Envoy
// serves a routes version other than prev's and all its nodes (at least nodes[region] of
// them) run every version they subscribe to (the region's in_sync).
func benchWaitACK(b *testing.B, s *stack, prev map[string]string, nodes map[string]int, timeout time.Duration) controlplane.Status {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := s.status()
		why := ""
		if !st.Config.Valid {
			why = fmt.Sprintf("config not valid: %v", st.Config.Errors)
		}
		for r := range s.envoys {
			rs := s.region(st, r)
			switch {
			case why != "":
			case rs.Versions["routes"] == prev[r]:
				why = fmt.Sprintf("region %s: routes version %s not changed yet", r, prev[r])
			case len(rs.Nodes) < nodes[r] || !rs.InSync:
				why = fmt.Sprintf("region %s: not in sync: %+v", r, rs.Nodes)
			}
		}
		if why == "" {
			return st
		}
		if time.Now().After(deadline) {
			b.Fatalf("edit not ACKed within %v: %s", timeout, why)
		}
		time.Sleep(benchPollInterval)
	}
}

// benchRoutesTemplate is the routes YAML template of the shared benchmark config
// (internal/benchconfig: 5 regions, 20 https upstreams allowed everywhere, host- and
// header-bound routes) with routes routes, every region's listener and extauthz taken from
// the harness and every upstream pointed at the fake's TLS address and CA. Its routes
// section comes last.
func benchRoutesTemplate(routes int) string {
	return benchconfig.YAML(benchconfig.Options{
		Routes:   routes,
		Listen:   func(r string, _ int) string { return fmt.Sprintf("127.0.0.1:{{.Port %q}}", r) },
		ExtAuthz: func(r string) string { return fmt.Sprintf("{{.ExtAuthz %q}}", r) },
		Endpoint: "{{.Upstream}}",
		CAFile:   "{{.CA}}",
	})
}
