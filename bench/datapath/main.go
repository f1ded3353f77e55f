// Command datapath measures what llmedge's data path costs, on loopback, in one run: the
// latency Envoy, ext_authz and the rate-limit hop add to a request, the highest request rate
// each keeps p99 under 10 ms and 50 ms, CPU per request and peak memory of every process,
// what a streamed answer looks like through the edge, and the same latency figures for peer
// gateways (Portkey, LiteLLM) in front of the same fake upstream.
//
//	go run ./bench/datapath -out docs/bench
//
// writes docs/bench/datapath.json (every raw figure), datapath.md (tables) and datapath.png.
// Scenarios are interleaved: each round runs every scenario once, in a rotated order, and
// the figures are medians across rounds, so drift of the (shared) machine hits all alike.
// Run bench/peers/install.sh first to measure the peers; a peer that is not installed or
// does not start is reported with its error.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/stack"
)

type options struct {
	out          string
	rounds       int
	n            int
	warmup       int
	stepRounds   int
	rates        []int
	peerRates    []int
	stepDur      time.Duration
	streamRounds int
	streamN      int
	chunks       int
	chunkGap     time.Duration
	tolerance    time.Duration
	pin          bool
	peers        bool
	pipeWindow   string
	pipeLimit    int
	keep         bool
	waitQuiet    time.Duration
	render       string
	soak         time.Duration
	soakRate     int
	soakOnly     bool
	overload     []int
	overloadOnly bool
	ceiling      int
	// The ablation (ablation.go): instead of the scenarios, bare Envoy and its variants.
	ablation       bool
	ablationCycles int
	ablationN      int
	ablationRate   int
	ablationWindow time.Duration
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "datapath: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func main() {
	o := parseFlags()
	if o.render != "" {
		if err := render(o); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if o.pin {
		o.pin = pinSelf()
	}
	// Fewer GC pauses in the load generator's own timings.
	debug.SetGCPercent(400)

	root, err := repoRoot()
	if err != nil {
		fatalf("%v", err)
	}
	if err := run(root, o); err != nil {
		fatalf("%v", err)
	}
}

// parseFlags reads the command line.
func parseFlags() options {
	var o options
	var rates, peerRates string
	flag.StringVar(&o.out, "out", "docs/bench", "directory for datapath.json, datapath.md and datapath.png")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds of the concurrency-1 latency measurement")
	flag.IntVar(&o.n, "n", 2000, "sequential requests per scenario and round")
	flag.IntVar(&o.warmup, "warmup", 200, "unmeasured requests before each sequential block")
	flag.IntVar(&o.stepRounds, "step-rounds", 3, "rounds of the open-loop rate ladder")
	flag.StringVar(&rates, "rates", "250,500,1000,2000,4000", "rate ladder (requests per second)")
	flag.StringVar(&peerRates, "peer-rates", "50,100", "lower rungs added to the ladder for the peer gateways")
	flag.DurationVar(&o.stepDur, "step", 5*time.Second, "duration of each rate step")
	flag.IntVar(&o.streamRounds, "stream-rounds", 3, "rounds of the streaming comparison")
	flag.IntVar(&o.streamN, "stream-n", 4, "streamed answers per scenario and round")
	flag.IntVar(&o.chunks, "chunks", 20, "chunks per streamed answer")
	flag.DurationVar(&o.chunkGap, "chunk-interval", 50*time.Millisecond, "pause between streamed chunks")
	flag.DurationVar(&o.tolerance, "hold-tolerance", 5*time.Millisecond, "how much later than direct a streamed chunk may arrive through the edge")
	flag.BoolVar(&o.pin, "pin", true, "pin the load generator, fake and control planes to CPU 0 and the edge (and peers) to CPU 1 with taskset")
	flag.BoolVar(&o.peers, "peers", true, "measure the peer gateways installed by bench/peers/install.sh")
	flag.StringVar(&o.pipeWindow, "pipeline-window", "150us", "REDIS_PIPELINE_WINDOW of the pipelined ratelimit")
	flag.IntVar(&o.pipeLimit, "pipeline-limit", 8, "REDIS_PIPELINE_LIMIT of the pipelined ratelimit")
	flag.BoolVar(&o.keep, "keep", false, "keep the run directory (configs, logs)")
	flag.StringVar(&o.render, "render", "", "measure nothing: rewrite datapath.{json,md,png} in -out from this datapath.json (after a change to the report)")
	flag.DurationVar(&o.waitQuiet, "wait-quiet", 3*time.Minute, "wait at most this long in all (before the start, and before repeating a measurement other processes disturbed) for them to use < 0.25 cores; 0: never wait")
	flag.DurationVar(&o.soak, "soak", 0, "after the other measurements, run the full edge at -soak-rate for this long and write soak.{json,md} (RSS of each process after every 30 s step); 0: no soak")
	flag.IntVar(&o.soakRate, "soak-rate", 1000, "requests per second of the soak")
	flag.BoolVar(&o.soakOnly, "soak-only", false, "measure nothing but the soak (-soak)")
	overloadRates := flag.String("overload", "", "after the other measurements, drive the full edge through these rates in this order, -step each, without pauses (e.g. 2000,4000,8000,1000: past saturation and back), and write overload.{json,md}; empty: no overload phase")
	flag.IntVar(&o.ceiling, "overload-ceiling", admissionCeiling, "regions.<name>.overload.max_requests_per_second of every llmedge region (default: make run's, examples/routes.yaml); 0: no admission ceiling")
	flag.BoolVar(&o.overloadOnly, "overload-only", false, "start only the full edge and measure nothing but the overload phase (-overload)")
	flag.BoolVar(&o.ablation, "ablation", false, "measure nothing but the ablation: bare Envoy beside one copy of itself per filter or log left out, all at once, in alternating windows; writes ablation.{json,md}")
	flag.IntVar(&o.ablationCycles, "ablation-cycles", 8, "ablation: cycles (each measures every variant once)")
	flag.IntVar(&o.ablationN, "ablation-n", 1000, "ablation: sequential requests per variant and cycle")
	flag.IntVar(&o.ablationRate, "ablation-rate", 1000, "ablation: open-loop rate per variant and cycle, for its CPU per request")
	flag.DurationVar(&o.ablationWindow, "ablation-window", 2*time.Second, "ablation: duration of the open-loop window per variant and cycle")
	quick := flag.Bool("quick", false, "smoke run of a few seconds: one short round of each measurement, no peers, no waiting for a quiet machine (the figures mean nothing; use with -out on a temporary directory)")
	flag.Parse()
	o.rates, o.peerRates = parseRates("rates", rates), parseRates("peer-rates", peerRates)
	o.overload = parseRateList("overload", *overloadRates)
	if o.overloadOnly && len(o.overload) == 0 {
		fatalf("-overload-only needs -overload")
	}
	if *quick {
		o.rounds, o.n, o.warmup, o.stepRounds, o.rates, o.peerRates, o.stepDur = 1, 50, 10, 1, []int{100}, nil, time.Second
		o.streamRounds, o.streamN, o.chunks, o.chunkGap, o.peers, o.waitQuiet = 1, 1, 3, 10*time.Millisecond, false, 0
		o.ablationCycles, o.ablationN, o.ablationWindow = 2, 50, 500*time.Millisecond
	}
	return o
}

// pinSelf pins this process (the load generator) to the world CPU by re-executing under
// taskset; every child inherits it unless started with another CPU. It returns whether
// the run is pinned (it does not return when it re-executes).
func pinSelf() bool {
	if os.Getenv("LLMEDGE_BENCH_PINNED") != "" {
		return true
	}
	if runtime.NumCPU() < 2 {
		logf("fewer than 2 CPUs: not pinning")
		return false
	}
	ts, err := exec.LookPath("taskset")
	if err != nil {
		fatalf("taskset not found (util-linux); run with -pin=false")
	}
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}
	args := append([]string{"taskset", "-c", cpuWorld, self}, os.Args[1:]...)
	fatalf("re-exec under taskset: %v", syscall.Exec(ts, args, append(os.Environ(), "LLMEDGE_BENCH_PINNED=1")))
	return false
}

func parseRates(flagName, list string) []int {
	out := parseRateList(flagName, list)
	slices.Sort(out)
	return out
}

// parseRateList reads a comma-separated list of rates, keeping its order.
func parseRateList(flagName, list string) []int {
	var out []int
	for _, f := range strings.Split(list, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fatalf("-%s: bad rate %q", flagName, f)
		}
		out = append(out, n)
	}
	return out
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run from inside the llmedge module")
	}
	return filepath.Dir(mod), nil
}

func run(root string, o options) error {
	began := time.Now()
	res := &Results{Generated: began.UTC().Format(time.RFC3339), Command: commandLine(), Settings: settingsOf(o)}
	dir, err := os.MkdirTemp("", "llmedge-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("run directory (kept): %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx := context.Background()
	paths, err := findPaths(ctx, root, filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	r := newRunner(dir, paths, o.pin, o.pipeWindow, o.pipeLimit)
	r.ceiling = o.ceiling
	defer r.stopAll()
	res.Machine = machineInfo(root, paths)
	guard := &noiseGuard{r: r, budget: o.waitQuiet, ncpu: res.Machine.NProc}
	if o.waitQuiet > 0 {
		t0 := time.Now()
		res.Machine.OtherCPUBefore = guard.waitQuiet()
		res.Machine.WaitedS = time.Since(t0).Seconds()
		logf("other processes used %.2f cores before the start (waited %s)", res.Machine.OtherCPUBefore, time.Since(t0).Round(time.Second))
	}
	if o.ablation {
		return runAblation(ctx, r, guard, res.Machine, o)
	}
	s, err := startRig(ctx, r, o.overloadOnly)
	if err != nil {
		return err
	}
	targets := scenarioTargets(s)
	if o.overloadOnly {
		if err := probeAll(targets); err != nil {
			return err
		}
		return runOverload(r, guard, targets, res, o)
	}
	if o.peers {
		res.Peers, targets = startPeers(r, root, s, targets)
	}
	if err := probeAll(targets); err != nil {
		return err
	}
	res.IdleCPU = idleCPU(r, 3*time.Second)
	// From here on a peer runs only while it is measured: an idle peer that does background
	// work would otherwise take CPU from the edge under test (see idle_cpu_cores).
	freezePeers(targets)
	res.Sanity = sanityChecks(s, targets)
	for _, c := range res.Sanity {
		logf("check: %s", c)
	}
	if o.soakOnly {
		return runSoak(r, targets, res, o)
	}
	noise := takeNoise(r)
	guard.first = guard.scan()
	measureRounds(r, guard, targets, res, o)
	if o.soak > 0 {
		if err := runSoak(r, targets, res, o); err != nil {
			return err
		}
	}
	if len(o.overload) > 0 {
		if err := runOverload(r, guard, targets, res, o); err != nil {
			return err
		}
	}
	finish(res, s, r, noise, guard)
	res.DurationSec = time.Since(began).Seconds()
	aggregate(res, o)
	res.Streaming.aggregate()
	return writeOutputs(o.out, res)
}

// runSoak soaks the full edge (see soak.go).
func runSoak(r *runner, targets []*target, res *Results, o options) error {
	if o.soak <= 0 {
		return fmt.Errorf("-soak-only needs -soak")
	}
	for _, t := range targets {
		if t.Name == "edge_full" {
			return soak(r, t, o.soakRate, o.soak, min(30*time.Second, o.soak), o.out, res.Machine.Commit)
		}
	}
	return fmt.Errorf("no edge_full scenario to soak")
}

// runOverload drives the full edge past saturation and back (see overload.go).
func runOverload(r *runner, guard *noiseGuard, targets []*target, res *Results, o options) error {
	for _, t := range targets {
		if t.Name == "edge_full" {
			return overload(r, guard, t, o.overload, o.stepDur, o.out, res.Machine.Commit, res.Settings.Placement)
		}
	}
	return fmt.Errorf("no edge_full scenario to overload")
}

// scenarioTargets are llmedge's own scenarios over the stack's variants (those started).
func scenarioTargets(s *rig) []*target {
	var out []*target
	for _, sc := range []struct {
		name, label, variant string
		stream, c1Only       bool
		check                string
	}{
		{"direct", "direct to the fake", vDirect, true, false, ""},
		{"envoy_bare", "bare Envoy (no side calls)", vBare, false, false, ""},
		{"envoy_extauthz", "Envoy + ext_authz", vAuthz, false, false, ""},
		{"envoy_ratelimit", "Envoy + its own rate-limit call", vRateLimit, false, false, "x-ratelimit-limit"},
		{"edge_full", "full edge (make run: extauthz inside Envoy, quotas against Redis)", vFull, true, false, "x-ratelimit-limit"},
		// No pipelined row any more: the ratelimit process (where REDIS_PIPELINE_* apply) only
		// charges tokens at stream end; request quotas are checked in extauthz.
		// Only what usage recording costs a request at c=1 (issue 11); no ladder, to keep the run short.
		{"edge_full_nousage", "full edge without usage recording", vNoUsage, false, true, "x-ratelimit-limit"},
		// The full edge with extauthz as a process of its own (LLMEDGE_AUTHZ=process make run):
		// Envoy asks it over gRPC; the same decision, quotas and keys.
		{"edge_full_process", "full edge, extauthz as a process (gRPC ext_authz)", vProcess, true, false, "x-ratelimit-limit"},
	} {
		v, ok := s.variants[sc.variant]
		if !ok {
			continue
		}
		t := &target{Name: sc.name, Label: sc.label, Kind: "llmedge", URL: v.url, Headers: v.headers, Procs: v.procs,
			Stream: sc.stream, Steps: !sc.c1Only, Check: sc.check, Admin: v.admin}
		if v.admin != "" {
			t.Overflows = func() map[string]int64 { return envoyOverflows(v.admin) }
		}
		out = append(out, t)
	}
	return out
}

// startPeers starts the peer gateways and adds a target for each.
func startPeers(r *runner, root string, s *rig, targets []*target) ([]*peer, []*target) {
	logf("starting peers (Portkey, LiteLLM)")
	fake := s.variants[vDirect].procs[0]
	var ports [2]int
	for i := range ports {
		ports[i], _ = stack.FreePort() // a failed start names the port
	}
	peers := []*peer{startPortkey(r, root, s.fakeAddr, ports[0]), startLiteLLM(r, root, s.fakeAddr, ports[1])}
	for _, p := range peers {
		t := &target{Name: peerKey(p.Name), Label: p.Name, Kind: "peer", URL: p.URL, Headers: p.headers, Error: p.Error, Steps: true}
		if p.proc != nil {
			t.Procs = []*proc{p.proc, fake}
			t.Frozen = []*proc{p.proc}
		}
		targets = append(targets, t)
	}
	return peers, targets
}

// probeAll sends every target one request; a failing llmedge scenario is fatal, a failing
// peer is reported.
func probeAll(targets []*target) error {
	probe := &http.Client{Transport: newTransport(2), Timeout: 30 * time.Second}
	for _, t := range targets {
		if t.Error != "" {
			continue
		}
		var err error
		for range 50 { // the Envoys may still be taking their first xDS config
			if err = t.probe(probe); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil && t.Kind != "peer" {
			return err
		}
		if err != nil {
			t.Error = "probe failed: " + err.Error()
		}
	}
	return nil
}

// idleCPU is every process's CPU use with no traffic, in cores.
func idleCPU(r *runner, d time.Duration) map[string]float64 {
	idle0 := cpuSnapshot(r, r.all)
	time.Sleep(d)
	out := map[string]float64{}
	for _, p := range r.all {
		out[p.Name] = (r.cpuSeconds(p) - idle0[p]) / d.Seconds()
	}
	return out
}

func freezePeers(targets []*target) {
	for _, t := range targets {
		for _, p := range t.Frozen {
			p.freeze(true)
		}
	}
}

// finish reads what the run leaves behind: Envoy counters, peak RSS, exits, machine noise.
func finish(res *Results, s *rig, r *runner, noise noiseSnap, guard *noiseGuard) {
	res.Connections = map[string]map[string]int64{}
	for _, name := range sortedKeys(s.variants) {
		v := s.variants[name]
		if v.admin == "" {
			continue
		}
		res.Connections["envoy-"+name] = envoyCounters(v.admin)
		if ov := envoyOverflows(v.admin); len(ov) > 0 {
			if res.Overflows == nil {
				res.Overflows = map[string]map[string]int64{}
			}
			res.Overflows["envoy-"+name] = ov
		}
	}
	res.PeakRSS = map[string]float64{}
	for _, p := range r.all {
		p.freeze(false)
		if !p.Exited() {
			res.PeakRSS[p.Name] = peakRSS(p)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%v; last log lines: %s", p.ExitError(), p.LogTail(5)))
		}
	}
	res.Machine.LoadAvgEnd = loadavg()
	res.Machine.OtherCPU, res.Machine.StealCPU = otherCPU(noise, r)
	res.Machine.Foreign = guard.first.cores(guard.scan())
	res.Machine.Redone, res.Machine.Contended = guard.redone, guard.contended
}

// writeOutputs writes datapath.json, datapath.png and datapath.md into dir.
func writeOutputs(dir string, res *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := host.WriteJSON(dir, "datapath.json", res); err != nil {
		return err
	}
	if err := writePlot(filepath.Join(dir, "datapath.png"), res); err != nil {
		logf("plot: %v", err)
		res.Notes = append(res.Notes, "plot failed: "+err.Error())
	}
	if err := writeMarkdown(filepath.Join(dir, "datapath.md"), res); err != nil {
		return err
	}
	logf("done in %.0f s: %s/datapath.{json,md,png}", res.DurationSec, dir)
	return nil
}

// render recomputes the medians and rewrites the outputs from an existing datapath.json.
func render(o options) error {
	b, err := os.ReadFile(o.render)
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", o.render, err)
	}
	o.rates, o.peerRates = res.Settings.Rates, res.Settings.PeerRates
	o.pipeWindow, o.pipeLimit = res.Settings.PipelineWindow, res.Settings.PipelineLimit
	aggregate(&res, o)
	if res.Streaming != nil {
		res.Streaming.aggregate()
	}
	return writeOutputs(o.out, &res)
}

func peerKey(name string) string {
	switch {
	case strings.HasPrefix(name, "Portkey"):
		return "peer_portkey"
	case strings.HasPrefix(name, "LiteLLM"):
		return "peer_litellm"
	}
	return "peer_" + strings.ToLower(strings.ReplaceAll(name, " ", "_"))
}

func commandLine() string {
	args := []string{"go run ./bench/datapath"}
	for _, a := range os.Args[1:] {
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

// sanityChecks proves the scenarios are what they claim: ext_authz refuses a request without
// a token, the rate-limit filter answers with X-RateLimit headers, the bare Envoy does
// neither.
func sanityChecks(s *rig, targets []*target) []string {
	var out []string
	c := &http.Client{Transport: newTransport(1), Timeout: 10 * time.Second}
	get := func(url string, hdr map[string]string) (*http.Response, error) {
		t := &target{URL: url, Headers: hdr}
		resp, err := c.Do(t.request(chatBody, nil))
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	for _, name := range []string{vAuthz, vFull, vFullPipe, vNoUsage, vProcess} {
		resp, err := get(s.variants[name].url, nil)
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("FAIL %s without a token: %v", name, err))
		case resp.StatusCode == http.StatusUnauthorized:
			out = append(out, fmt.Sprintf("ok: %s refuses a request without a token (401): ext_authz is on the path", name))
		default:
			out = append(out, fmt.Sprintf("FAIL %s without a token: HTTP %d, want 401", name, resp.StatusCode))
		}
	}
	for _, t := range targets {
		if t.Error != "" || t.Kind != "llmedge" || t.Name == "direct" {
			continue
		}
		resp, err := get(t.URL, t.Headers)
		if err != nil {
			out = append(out, fmt.Sprintf("FAIL %s: %v", t.Name, err))
			continue
		}
		has := resp.Header.Get("x-ratelimit-limit") != ""
		want := t.Check == "x-ratelimit-limit"
		if has == want {
			out = append(out, fmt.Sprintf("ok: %s answers 200 %s X-RateLimit-Limit (%q)", t.Name, map[bool]string{true: "with", false: "without"}[has], resp.Header.Get("x-ratelimit-limit")))
		} else {
			out = append(out, fmt.Sprintf("FAIL %s: X-RateLimit-Limit present=%v, want %v", t.Name, has, want))
		}
	}
	return append(out, usageLogChecks(s)...)
}

// usageLogChecks prove the usage rows differ in what they claim: the full edge's Envoy
// hands usage records to its gRPC access log, the Envoy without usage recording has none.
// Envoy counts an entry when it is buffered, so the earlier requests show within the poll.
func usageLogChecks(s *rig) []string {
	written := func(v string) int64 {
		return envoyStats(s.variants[v].admin, "grpc_access_log")["access_logs.grpc_access_log.logs_written"]
	}
	var n int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if n = written(vFull); n > 0 {
			break
		}
	}
	out := []string{fmt.Sprintf("FAIL %s: Envoy's gRPC usage log wrote no entry", vFull)}
	if n > 0 {
		out[0] = fmt.Sprintf("ok: %s records usage (Envoy's access_logs.grpc_access_log.logs_written %d)", vFull, n)
	}
	if stats := envoyStats(s.variants[vNoUsage].admin, "grpc_access_log"); len(stats) > 0 {
		return append(out, fmt.Sprintf("FAIL %s: Envoy has gRPC access log counters %v, want none", vNoUsage, stats))
	}
	return append(out, fmt.Sprintf("ok: %s records no usage (no gRPC access log in its Envoy)", vNoUsage))
}
