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
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "datapath: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func main() {
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
	flag.Parse()
	o.rates, o.peerRates = parseRates("rates", rates), parseRates("peer-rates", peerRates)

	if o.render != "" {
		if err := render(o); err != nil {
			fatalf("%v", err)
		}
		return
	}
	// Pin this process (the load generator) to the world CPU by re-executing under taskset;
	// every child inherits it unless started with another CPU.
	if o.pin && os.Getenv("LLMEDGE_BENCH_PINNED") == "" && runtime.NumCPU() < 2 {
		logf("fewer than 2 CPUs: not pinning")
		o.pin = false
	}
	if o.pin && os.Getenv("LLMEDGE_BENCH_PINNED") == "" {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			fatalf("taskset not found (util-linux); run with -pin=false")
		}
		self, err := os.Executable()
		if err != nil {
			fatalf("%v", err)
		}
		args := append([]string{"taskset", "-c", cpuWorld, self}, os.Args[1:]...)
		if err := syscall.Exec(ts, args, append(os.Environ(), "LLMEDGE_BENCH_PINNED=1")); err != nil {
			fatalf("re-exec under taskset: %v", err)
		}
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

func parseRates(flagName, list string) []int {
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
	slices.Sort(out)
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
	res := &Results{Generated: began.UTC().Format(time.RFC3339), Command: commandLine()}
	res.Settings = settingsOf(o)
	tools := filepath.Join(root, ".tools", "bin")
	if d := os.Getenv("LLMEDGE_TOOLS"); d != "" {
		tools = filepath.Join(d, "bin")
	}
	dir, err := os.MkdirTemp("", "llmedge-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("run directory (kept): %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	r := &runner{dir: dir, pin: o.pin, tick: clockTicks()}
	defer r.stopAll()
	s := &stack{r: r, root: root, bin: filepath.Join(dir, "bin"),
		envoyBin: filepath.Join(tools, "envoy"), rlBin: filepath.Join(tools, "ratelimit"), redisBin: filepath.Join(tools, "redis-server")}
	for _, b := range []string{s.envoyBin, s.rlBin, s.redisBin} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run make tools", b)
		}
	}
	res.Machine = machineInfo(root, s)
	guard := &noiseGuard{r: r, budget: o.waitQuiet, tick: r.tick}
	if o.waitQuiet > 0 {
		t0 := time.Now()
		res.Machine.OtherCPUBefore = guard.waitQuiet()
		res.Machine.WaitedS = time.Since(t0).Seconds()
		logf("other processes used %.2f cores before the start (waited %s)", res.Machine.OtherCPUBefore, time.Since(t0).Round(time.Second))
	}
	logf("building llmedge and fakellm")
	if err := build(root, s.bin); err != nil {
		return err
	}
	logf("starting fake upstream, Redis, control planes, extauthz, ratelimit and 5 Envoys")
	if err := s.startAll(newPorts(), o.pipeWindow, o.pipeLimit); err != nil {
		return err
	}
	ports := mustPorts(2)
	var peers []*peer
	if o.peers {
		logf("starting peers (Portkey, LiteLLM)")
		peers = append(peers, s.startPortkey(ports[0]), s.startLiteLLM(ports[1]))
	}

	fakeKey := map[string]string{"authorization": "Bearer sk-bench-fake-key"}
	edgeTok := map[string]string{"authorization": "Bearer " + s.token}
	edgeURL := func(name string) string {
		return fmt.Sprintf("http://127.0.0.1:%d/openai/v1/chat/completions", s.listen[name])
	}
	rlFull := s.rl["ratelimit-full"]
	envoyOf := map[string]string{"envoy_bare": "bare", "envoy_extauthz": "authz", "envoy_ratelimit": "ratelimit", "edge_full": "full", "edge_full_pipelined": "fullpipe"}
	targets := []*target{
		{Name: "direct", Label: "direct to the fake", Kind: "llmedge", URL: "http://" + s.fakeAddr + "/v1/chat/completions",
			Headers: fakeKey, Procs: []*proc{s.fake}, Stream: true, Steps: true},
		{Name: "envoy_bare", Label: "bare Envoy (router only)", Kind: "llmedge", URL: edgeURL("bare"),
			Headers: fakeKey, Procs: []*proc{s.envoys["bare"], s.fake}, Steps: true},
		{Name: "envoy_extauthz", Label: "Envoy + ext_authz", Kind: "llmedge", URL: edgeURL("authz"),
			Headers: edgeTok, Procs: []*proc{s.envoys["authz"], s.extauthz["authz"], s.fake}, Steps: true},
		{Name: "envoy_ratelimit", Label: "Envoy + rate limit", Kind: "llmedge", URL: edgeURL("ratelimit"),
			Headers: fakeKey, Procs: []*proc{s.envoys["ratelimit"], rlFull, s.redis, s.fake}, Steps: true, Check: "x-ratelimit-limit"},
		{Name: "edge_full", Label: "full edge (ext_authz + rate limit)", Kind: "llmedge", URL: edgeURL("full"),
			Headers: edgeTok, Procs: []*proc{s.envoys["full"], s.extauthz["full"], rlFull, s.redis, s.fake}, Stream: true, Steps: true, Check: "x-ratelimit-limit"},
		{Name: "edge_full_pipelined", Label: "full edge, ratelimit with Redis pipelining", Kind: "llmedge", URL: edgeURL("fullpipe"),
			Headers: edgeTok, Procs: []*proc{s.envoys["fullpipe"], s.extauthz["fullpipe"], s.rl["ratelimit-fullpipe"], s.redis, s.fake}, Steps: true, Check: "x-ratelimit-limit"},
	}
	for _, t := range targets {
		if name, ok := envoyOf[t.Name]; ok {
			t.Overflows = func() map[string]int64 { return s.envoyOverflows(name) }
		}
	}
	for _, p := range peers {
		t := &target{Name: peerKey(p.Name), Label: p.Name, Kind: "peer", URL: p.URL, Headers: p.headers, Error: p.Error, Steps: true}
		if p.proc != nil {
			t.Procs = []*proc{p.proc, s.fake}
			t.Frozen = []*proc{p.proc}
		}
		targets = append(targets, t)
	}
	res.Peers = peers

	// Probe every target once; a failing llmedge scenario is fatal, a failing peer is reported.
	probe := &http.Client{Transport: newTransport(2), Timeout: 30 * time.Second}
	for _, t := range targets {
		if t.Error != "" {
			continue
		}
		var err error
		for i := 0; i < 50; i++ { // the Envoys may still be taking their first xDS config
			if err = t.probe(probe); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			if t.Kind == "peer" {
				t.Error = "probe failed: " + err.Error()
				continue
			}
			return err
		}
	}
	// Idle CPU of every process (no traffic), over 3 s.
	idle0 := cpuSnapshot(r, r.all)
	time.Sleep(3 * time.Second)
	res.IdleCPU = map[string]float64{}
	for _, p := range r.all {
		res.IdleCPU[p.name] = (r.cpuSeconds(p) - idle0[p]) / 3
	}
	// From here on a peer runs only while it is measured: an idle peer that does background
	// work would otherwise take CPU from the edge under test (see idle_cpu_cores).
	for _, t := range targets {
		for _, p := range t.Frozen {
			p.freeze(true)
		}
	}
	res.Sanity = sanityChecks(s, targets, edgeURL)
	for _, c := range res.Sanity {
		logf("check: %s", c)
	}

	sr := map[string]*ScenarioResult{}
	for _, t := range targets {
		x := &ScenarioResult{Name: t.Name, Label: t.Label, Kind: t.Kind, Error: t.Error, URL: t.URL, Rates: ratesFor(t, o)}
		for _, p := range t.Procs {
			x.Processes = append(x.Processes, p.name)
		}
		res.Scenarios = append(res.Scenarios, x)
		sr[t.Name] = x
	}
	live := func(pred func(*target) bool) []*target {
		var out []*target
		for _, t := range targets {
			if t.Error == "" && pred(t) {
				out = append(out, t)
			}
		}
		return out
	}
	clients := map[string]*http.Client{}
	for _, t := range targets {
		clients[t.Name] = &http.Client{Transport: newTransport(1), Timeout: 30 * time.Second}
	}
	stream := &StreamResult{Chunks: o.chunks, IntervalMS: float64(o.chunkGap.Milliseconds()), ToleranceMS: float64(o.tolerance.Milliseconds()),
		Samples: map[string][]streamSample{}}
	res.Streaming = stream

	noise := takeNoise(r)
	guard.first = guard.scan()
	rounds := max(o.rounds, o.stepRounds, o.streamRounds)
	for round := 0; round < rounds; round++ {
		if round < o.rounds {
			order := rotate(live(func(*target) bool { return true }), round)
			logf("round %d/%d: concurrency-1 latency, %d requests each: %s", round+1, o.rounds, o.n, names(order))
			for _, t := range order {
				x, other := guarded(guard, t.Name+" c=1", func() seqResult {
					refreeze := t.thaw()
					defer refreeze()
					return sequential(r, t, clients[t.Name], o.n, o.warmup)
				})
				x.Foreign = other
				sr[t.Name].Latency = append(sr[t.Name].Latency, x)
				logf("  %-22s p50 %7.0f us  p99 %7.0f us  errors %d", t.Name, x.P50, x.P99, x.Errors)
			}
		}
		if round < o.streamRounds {
			st := live(func(t *target) bool { return t.Stream })
			logf("round %d/%d: streaming, %d answers of %d chunks %s apart each: %s", round+1, o.streamRounds, o.streamN, o.chunks, o.chunkGap, names(st))
			got, _ := guarded(guard, "streams", func() map[string][]streamSample {
				m := map[string][]streamSample{}
				for i := 0; i < o.streamN; i++ {
					for _, t := range rotate(st, round+i) {
						m[t.Name] = append(m[t.Name], streamOnce(t, clients[t.Name], o.chunks, o.chunkGap))
					}
				}
				return m
			})
			for name, samples := range got {
				stream.Samples[name] = append(stream.Samples[name], samples...)
			}
		}
		if round == 0 {
			res.PeakRSSLight = map[string]float64{}
			for _, p := range r.all {
				p.freeze(false)
				res.PeakRSSLight[p.name] = peakRSS(p)
			}
			for _, t := range targets {
				for _, p := range t.Frozen {
					p.freeze(true)
				}
			}
		}
		if round < o.stepRounds {
			st := rotate(live(func(t *target) bool { return t.Steps }), round)
			logf("round %d/%d: open-loop rate ladder %v (peers also %v), %s per step: %s", round+1, o.stepRounds, o.rates, o.peerRates, o.stepDur, names(st))
			ladder(r, guard, st, sr, o)
		}
	}

	res.Connections = map[string]map[string]int64{}
	for name := range s.envoys {
		res.Connections["envoy-"+name] = s.envoyCounters(name)
		if ov := s.envoyOverflows(name); len(ov) > 0 {
			if res.Overflows == nil {
				res.Overflows = map[string]map[string]int64{}
			}
			res.Overflows["envoy-"+name] = ov
		}
	}
	res.PeakRSS = map[string]float64{}
	for _, p := range r.all {
		p.freeze(false)
		if !p.exited() {
			res.PeakRSS[p.name] = peakRSS(p)
		} else if p.role != "" {
			res.Notes = append(res.Notes, fmt.Sprintf("%s exited during the run (%v); last log lines: %s", p.name, p.err, p.logTail(5)))
		}
	}
	res.Machine.LoadAvgEnd = loadavg()
	res.Machine.OtherCPU, res.Machine.StealCPU = otherCPU(noise, r)
	res.Machine.Foreign = guard.first.cores(guard.scan())
	res.Machine.Redone, res.Machine.Contended = guard.redone, guard.contended
	res.DurationSec = time.Since(began).Seconds()
	aggregate(res, o)
	stream.aggregate()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(o.out, "datapath.json"), res); err != nil {
		return err
	}
	if err := writePlot(filepath.Join(o.out, "datapath.png"), res); err != nil {
		logf("plot: %v", err)
		res.Notes = append(res.Notes, "plot failed: "+err.Error())
	}
	if err := writeMarkdown(filepath.Join(o.out, "datapath.md"), res); err != nil {
		return err
	}
	logf("done in %.0f s: %s/datapath.{json,md,png}", res.DurationSec, o.out)
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
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(o.out, "datapath.json"), &res); err != nil {
		return err
	}
	if err := writePlot(filepath.Join(o.out, "datapath.png"), &res); err != nil {
		return err
	}
	return writeMarkdown(filepath.Join(o.out, "datapath.md"), &res)
}

// ladder steps every target through the rates, interleaved: at each rate every target that
// is still in the race runs one step before the next rate starts. A target leaves the race
// at its first step with p99 >= 50 ms, an error or a rate it could not sustain.
func ladder(r *runner, guard *noiseGuard, order []*target, sr map[string]*ScenarioResult, o options) {
	all := map[int]bool{}
	for _, t := range order {
		for _, rate := range ratesFor(t, o) {
			all[rate] = true
		}
	}
	rates := sortedKeys(all)
	alive := map[string]bool{}
	steps := map[string][]stepResult{}
	transports := map[string]*http.Transport{}
	for _, t := range order {
		alive[t.Name] = true
		transports[t.Name] = newTransport(4096)
	}
	for _, rate := range rates {
		for _, t := range order {
			if !alive[t.Name] || !slices.Contains(ratesFor(t, o), rate) {
				continue
			}
			refreeze := t.thaw()
			x := step(r, t, transports[t.Name], rate, o.stepDur)
			steps[t.Name] = append(steps[t.Name], x)
			status, pause := "ok", 300*time.Millisecond
			if !x.Pass50 {
				// Let a saturated scenario drain (queued checks, retries) before the next runs.
				alive[t.Name] = false
				status, pause = "stop", 3*time.Second
			}
			time.Sleep(pause)
			refreeze()
			logf("  %-22s %5d rps: got %7.0f/s p50 %7.0f us p99 %8.0f us errors %d %s", t.Name, rate, x.Throughput, x.P50, x.P99, x.Errors, status)
		}
	}
	for _, t := range order {
		transports[t.Name].CloseIdleConnections()
		sr[t.Name].Steps = append(sr[t.Name].Steps, steps[t.Name])
	}
}

// ratesFor is a target's ladder: the peers get lower rungs first.
func ratesFor(t *target, o options) []int {
	if t.Kind != "peer" {
		return o.rates
	}
	r := append(slices.Clone(o.peerRates), o.rates...)
	slices.Sort(r)
	return slices.Compact(r)
}

func rotate(ts []*target, k int) []*target {
	if len(ts) == 0 {
		return ts
	}
	k %= len(ts)
	return append(slices.Clone(ts[k:]), ts[:k]...)
}

func names(ts []*target) string {
	var n []string
	for _, t := range ts {
		n = append(n, t.Name)
	}
	return strings.Join(n, ", ")
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
func sanityChecks(s *stack, targets []*target, edgeURL func(string) string) []string {
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
	for _, name := range []string{"authz", "full", "fullpipe"} {
		resp, err := get(edgeURL(name), nil)
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
	return out
}
