package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	setfilterstatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/internal/stack"
)

// The ablation (-ablation): what each of the edge's own filters and logs costs Envoy. Bare
// Envoy (the full edge's listener without its side work, envoyconf.go) runs beside one
// copy of itself per thing left out, all at once; the measurement takes short windows of
// each in turn, cycle after cycle, so that this VM's drift (its speed moves within minutes)
// lands on every variant alike, and reports each variant's difference from bare Envoy in
// the same cycle. Levers of a few tens of µs, which separate runs minutes apart cannot
// tell apart, show up as differences of one sign in most cycles.

// ablationVariant is bare Envoy with edit applied to its HCM (nil: bare Envoy itself).
type ablationVariant struct {
	name, label string
	edit        func(*hcmv3.HttpConnectionManager)
}

// ablationVariants are bare Envoy, bare Envoy without each of filters but the router,
// without its access log, and with the router alone and no access log.
func ablationVariants(filters []string) []ablationVariant {
	out := []ablationVariant{{name: "bare", label: "bare Envoy"}}
	for _, f := range filters {
		if f == routerFilter {
			continue
		}
		out = append(out, ablationVariant{name: "no_" + strings.TrimPrefix(f, "envoy.filters.http."), label: "without " + f,
			edit: func(h *hcmv3.HttpConnectionManager) {
				h.HttpFilters = slices.DeleteFunc(h.HttpFilters, func(hf *hcmv3.HttpFilter) bool { return hf.Name == f })
			}})
	}
	out = append(out,
		ablationVariant{name: "log_usage_fields", label: "with usage.envoy_access_log (the usage facts in the JSON access log)",
			edit: func(h *hcmv3.HttpConnectionManager) {
				editLogFormat(h, func(f *structpb.Struct) {
					for k, v := range translate.EnvoyLogUsageFields {
						f.Fields[k] = structpb.NewStringValue(v)
					}
				})
			}},
		ablationVariant{name: "log_unmasked", label: "the JSON access log's paths and user agent unmasked",
			edit: func(h *hcmv3.HttpConnectionManager) {
				editLogFormat(h, func(f *structpb.Struct) {
					f.Fields["upstream_path"] = structpb.NewStringValue("%REQ(:PATH)%")
					f.Fields["user_agent"] = structpb.NewStringValue("%REQ(USER-AGENT)%")
				})
				editFilterState(h, translate.PathState, "%REQ(:PATH)%")
			}},
		ablationVariant{name: "no_access_log", label: "without the JSON access log",
			edit: func(h *hcmv3.HttpConnectionManager) { h.AccessLog = nil }},
		ablationVariant{name: "router_only", label: "the router alone, no access log",
			edit: func(h *hcmv3.HttpConnectionManager) {
				h.AccessLog = nil
				h.HttpFilters = slices.DeleteFunc(h.HttpFilters, func(hf *hcmv3.HttpFilter) bool { return hf.Name != routerFilter })
			}})
	return out
}

const routerFilter = "envoy.filters.http.router"

// AblationResults is ablation.json.
type AblationResults struct {
	Generated string            `json:"generated"`
	Command   string            `json:"command"`
	Machine   Machine           `json:"machine"`
	Cycles    int               `json:"cycles"`
	N         int               `json:"c1_requests_per_window"`
	Rate      int               `json:"rate"`
	WindowS   float64           `json:"rate_window_s"`
	Variants  []AblationVariant `json:"variants"`
}

// AblationVariant is one variant's figures, one per cycle.
type AblationVariant struct {
	Name    string    `json:"name"`
	Label   string    `json:"label"`
	Filters []string  `json:"filters"`
	C1P50   []float64 `json:"c1_p50_us"`
	C1P99   []float64 `json:"c1_p99_us"`
	C1CPU   []float64 `json:"c1_cpu_us_per_request"`
	RateCPU []float64 `json:"rate_cpu_us_per_request"`
	RateP99 []float64 `json:"rate_p99_us"`
	Errors  int       `json:"errors"`
	// FirstErr is the first error's description (an HTTP status and the edge's error code).
	FirstErr string `json:"first_error,omitempty"`
}

// runAblation starts the fake upstream and the variants, measures them and writes
// ablation.{json,md} into o.out.
func runAblation(ctx context.Context, r *runner, guard *noiseGuard, m Machine, o options) error {
	began := time.Now()
	s := &rig{r: r, variants: map[string]variant{}, named: map[string]*proc{}}
	if err := s.writeKeys(); err != nil {
		return err
	}
	port, err := stack.FreePort()
	if err != nil {
		return err
	}
	s.fakeAddr = stack.Loopback(port)
	fake, err := r.StartFakellm(ctx, "fakellm", stack.Fakellm{Addr: s.fakeAddr})
	if err != nil {
		return err
	}
	s.adopt(fake)
	// The full edge's routes YAML, as the data-path bench writes it; only the translation
	// of its listener is used, so the side services' addresses are never dialled.
	routes, err := s.writeRoutes("routes-full.yaml", callerLimit, false, region{name: vFull, listen: "127.0.0.1:1",
		authz: "127.0.0.1:2", ratelimit: "127.0.0.1:3", inEnvoy: stack.DefaultAuthzInEnvoy})
	if err != nil {
		return err
	}
	res, err := translated(routes, vFull)
	if err != nil {
		return err
	}
	var filters []string
	if err := writeStaticBootstrap(filepath.Join(r.Dir, "probe.json"), res, "probe", 1, 2, staticBare, callerName,
		func(h *hcmv3.HttpConnectionManager) {
			for _, hf := range h.HttpFilters {
				filters = append(filters, hf.Name)
			}
		}); err != nil {
		return err
	}
	out := &AblationResults{Generated: began.UTC().Format(time.RFC3339), Command: commandLine(), Machine: m,
		Cycles: o.ablationCycles, N: o.ablationN, Rate: o.ablationRate, WindowS: o.ablationWindow.Seconds()}
	var targets []*target
	for _, v := range ablationVariants(filters) {
		listen, admin, err := freePair()
		if err != nil {
			return err
		}
		path := filepath.Join(r.Dir, "envoy-abl-"+v.name+".json")
		var kept []string
		edit := func(h *hcmv3.HttpConnectionManager) {
			if v.edit != nil {
				v.edit(h)
			}
			for _, hf := range h.HttpFilters {
				kept = append(kept, hf.Name)
			}
			if len(h.AccessLog) > 0 {
				kept = append(kept, "access log")
			}
		}
		if err := writeStaticBootstrap(path, res, "abl_"+v.name, listen, admin, staticBare, callerName, edit); err != nil {
			return err
		}
		ep, err := s.startEnvoy(ctx, "abl-"+v.name, stack.Envoy{Bootstrap: path})
		if err != nil {
			return err
		}
		addr := stack.Loopback(listen)
		if err := ep.Await(ctx, stack.EnvoyStartTimeout, stack.TCPOpen(addr)); err != nil {
			return err
		}
		targets = append(targets, &target{Name: v.name, Label: v.label, Kind: "llmedge",
			URL: "http://" + addr + "/openai/v1/chat/completions", Headers: fakeHeaders(), Procs: []*proc{s.named["envoy-abl-"+v.name]}})
		out.Variants = append(out.Variants, AblationVariant{Name: v.name, Label: v.label, Filters: kept})
	}
	logf("ablation: %d variants of bare Envoy, %d cycles of c=1 (%d requests) and %d req/s (%s) each", len(targets), o.ablationCycles, o.ablationN, o.ablationRate, o.ablationWindow)
	clients := make([]*http.Client, len(targets))
	transports := make([]*http.Transport, len(targets))
	for i, t := range targets {
		clients[i] = &http.Client{Transport: newTransport(1), Timeout: 10 * time.Second}
		transports[i] = newTransport(512)
		if err := t.probe(clients[i]); err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
		sequential(r, t, clients[i], 10, 200) // warm up
	}
	for c := 0; c < o.ablationCycles; c++ {
		if guard != nil {
			guard.waitQuiet()
		}
		// A different variant first in every cycle, and the order reversed every other one.
		order := make([]int, len(targets))
		for i := range order {
			order[i] = (i + c) % len(targets)
		}
		if c%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			t, v := targets[i], &out.Variants[i]
			seq := sequential(r, t, clients[i], o.ablationN, 20)
			st := step(r, t, transports[i], o.ablationRate, o.ablationWindow)
			name := t.Procs[0].Name
			v.C1P50, v.C1P99 = append(v.C1P50, seq.P50), append(v.C1P99, seq.P99)
			v.C1CPU = append(v.C1CPU, seq.CPUPer1k[name]*1000)
			v.RateCPU, v.RateP99 = append(v.RateCPU, st.CPUPer1k[name]*1000), append(v.RateP99, st.P99)
			v.Errors += seq.Errors + st.Errors
			if v.FirstErr == "" {
				v.FirstErr = cmp.Or(seq.FirstErr, st.FirstErr)
			}
		}
		logf("ablation cycle %d/%d: bare Envoy c=1 p50 %.0f µs, %.0f µs of CPU per request at %d req/s", c+1, o.ablationCycles,
			out.Variants[0].C1P50[c], out.Variants[0].RateCPU[c], o.ablationRate)
	}
	return writeAblation(o.out, out)
}

// freePair is a listener port and an admin port.
func freePair() (int, int, error) {
	a, err := stack.FreePort()
	if err != nil {
		return 0, 0, err
	}
	b, err := stack.FreePort()
	return a, b, err
}

// pairedDiff is the median over cycles of x[i] − base[i], and in how many cycles x was
// below base.
func pairedDiff(x, base []float64) (float64, int) {
	var d []float64
	lower := 0
	for i := range min(len(x), len(base)) {
		d = append(d, x[i]-base[i])
		if x[i] < base[i] {
			lower++
		}
	}
	return host.Median(d), lower
}

func writeAblation(dir string, a *AblationResults) error {
	if err := host.WriteJSON(dir, "ablation.json", a); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ablation.md"), []byte(ablationReport(a)), 0o644)
}

// ablationReport is ablation.md.
func ablationReport(a *AblationResults) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	commit := a.Machine.Commit
	if a.Machine.Dirty {
		commit += " (uncommitted changes)"
	}
	w("# What Envoy pays for each of the edge's filters and logs\n\n")
	w("Bare Envoy — the full edge's listener (`make run`'s translation) without the module, the rate-limit filter and the usage log — "+
		"beside one copy of itself per thing left out, all running at once and measured in turn, cycle after cycle, so that the VM's drift "+
		"lands on every variant alike. Generated by `%s` on %s at commit `%s`. Raw figures: [ablation.json](ablation.json).\n\n",
		a.Command, a.Generated[:10], commit)
	if len(a.Variants) == 0 {
		return b.String()
	}
	base := a.Variants[0]
	w("| variant | c=1 p50 | c=1 p99 | c=1 p50 − bare (median of cycles) | Envoy CPU per request at %s req/s | − bare (median of cycles) | below bare in | errors |\n",
		fmtInt(a.Rate))
	w("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, v := range a.Variants {
		d50, _ := pairedDiff(v.C1P50, base.C1P50)
		dcpu, lower := pairedDiff(v.RateCPU, base.RateCPU)
		diff50, diffCPU, below := fmt.Sprintf("%+.0f µs", d50), fmt.Sprintf("%+.0f µs", dcpu), fmt.Sprintf("%d of %d", lower, len(v.RateCPU))
		if v.Name == base.Name {
			diff50, diffCPU, below = "(baseline)", "(baseline)", ""
		}
		errs := fmt.Sprint(v.Errors)
		if v.FirstErr != "" {
			errs += " (the first: " + v.FirstErr + ")"
		}
		w("| %s | %.0f µs | %.0f µs | %s | %.0f µs | %s | %s | %s |\n", v.Label, host.Median(v.C1P50), host.Median(v.C1P99), diff50,
			host.Median(v.RateCPU), diffCPU, below, errs)
	}
	w("\n- Each cycle measures every variant once: %d sequential requests on one connection (c=1), then %s req/s open loop for %g s "+
		"(vegeta), Envoy's CPU from utime+stime in `/proc/<pid>/stat` (10 ms ticks). %d cycles; the first variant of a cycle moves by one "+
		"every cycle and the order is reversed every other one. Medians over cycles; the differences are medians of the per-cycle "+
		"differences from bare Envoy, and \"below bare in\" counts the cycles where the variant's CPU was lower: a difference of one sign in "+
		"most cycles is a cost, one that changes sign is noise.\n", a.N, fmtInt(a.Rate), a.WindowS, a.Cycles)
	w("- Every Envoy runs `make run`'s worker count on the edge's CPU, the fake upstream and this load generator on the other, as in the " +
		"data-path bench ([datapath.md](datapath.md)); the variants not being measured are idle. What a variant leaves out, it no longer " +
		"does: without set_filter_state the access log has no request id, without set_metadata the usage log (absent here) would record " +
		"nothing; the figures say what each costs, not that it could go. Bare Envoy keeps `make run`'s admission ceiling (2,000 " +
		"requests a second per Envoy, local_ratelimit): a sequential client faster than that, or an open-loop window's burst, is " +
		"refused with 503 `overloaded`, counted under errors; latencies are of the answered requests, CPU per request sent.\n")
	w("- Machine: %d CPUs (%s), %s, %s; Envoy %s.\n", a.Machine.NProc, a.Machine.CPUModel, a.Machine.Kernel, a.Machine.Go, a.Machine.Envoy)
	w("\n## Command\n\n```sh\n%s\n```\n", a.Command)
	return b.String()
}

// editLogFormat applies edit to the JSON format of h's stdout access log (panics on a
// config it cannot read: the bench's own translation).
func editLogFormat(h *hcmv3.HttpConnectionManager, edit func(*structpb.Struct)) {
	for _, l := range h.AccessLog {
		var so streamv3.StdoutAccessLog
		if l.GetTypedConfig().UnmarshalTo(&so) != nil {
			continue
		}
		edit(so.GetLogFormat().GetJsonFormat())
		a, err := anypb.New(&so)
		if err != nil {
			panic(err)
		}
		l.ConfigType = &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}
	}
}

// editFilterState makes h's set_filter_state write format to the object key.
func editFilterState(h *hcmv3.HttpConnectionManager, key, format string) {
	for _, hf := range h.HttpFilters {
		var c setfilterstatev3.Config
		if hf.GetTypedConfig().UnmarshalTo(&c) != nil {
			continue
		}
		for _, v := range c.OnRequestHeaders {
			if v.GetObjectKey() == key {
				v.GetFormatString().Format = &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: format},
				}}
			}
		}
		a, err := anypb.New(&c)
		if err != nil {
			panic(err)
		}
		hf.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}
	}
}
