package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/stack"
)

// Results is everything datapath.json holds.
type Results struct {
	Generated   string                      `json:"generated"`
	Command     string                      `json:"command"`
	DurationSec float64                     `json:"duration_s"`
	Machine     Machine                     `json:"machine"`
	Settings    Settings                    `json:"settings"`
	Sanity      []string                    `json:"sanity_checks"`
	Scenarios   []*ScenarioResult           `json:"scenarios"`
	Peers       []*peer                     `json:"peers"`
	Streaming   *StreamResult               `json:"streaming"`
	Pipelining  *PipelineResult             `json:"ratelimit_pipelining"`
	Overflows   map[string]map[string]int64 `json:"envoy_overflow_counters"`
	PeakRSS     map[string]float64          `json:"peak_rss_mib"`
	// PeakRSSLight is VmHWM after the first round of concurrency-1 requests and streams,
	// before any ladder step pushed a process into overload.
	PeakRSSLight map[string]float64          `json:"peak_rss_mib_before_ladder"`
	Connections  map[string]map[string]int64 `json:"envoy_connection_counters"`
	// IdleCPU is each process's CPU use with no traffic, in cores, over 3 s after start-up.
	IdleCPU map[string]float64 `json:"idle_cpu_cores"`
	Notes   []string           `json:"notes,omitempty"`
}

type Machine struct {
	NProc      int     `json:"nproc"`
	CPUModel   string  `json:"cpu_model"`
	Hypervisor string  `json:"hypervisor,omitempty"`
	MemGiB     float64 `json:"mem_gib"`
	Kernel     string  `json:"kernel"`
	Go         string  `json:"go"`
	Envoy      string  `json:"envoy"`
	Ratelimit  string  `json:"ratelimit"`
	Redis      string  `json:"redis"`
	Node       string  `json:"node,omitempty"`
	Python     string  `json:"python,omitempty"`
	Commit     string  `json:"git_commit"`
	Dirty      bool    `json:"git_dirty"`
	LoadAvg    string  `json:"loadavg_start"`
	LoadAvgEnd string  `json:"loadavg_end"`
	// OtherCPU is the CPU that processes other than this benchmark's used during the
	// measurements, in cores on average (from /proc/stat), and the hypervisor's steal.
	OtherCPU float64 `json:"other_cpu_cores"`
	// OtherCPUBefore is the same, sampled just before the run (after waiting up to -wait-quiet
	// for it to drop below 0.25 cores); WaitedS is how long that took.
	OtherCPUBefore float64 `json:"other_cpu_cores_before"`
	WaitedS        float64 `json:"waited_for_quiet_s"`
	// Foreign is CPU used by processes outside this benchmark (kernel threads excluded)
	// during the measurements, in cores on average; Redone counts measurements repeated
	// because foreign processes used more than 0.25 cores during them, Contended those kept
	// although they did (the waiting budget was spent).
	Foreign float64 `json:"foreign_cpu_cores"`
	// ForeignKept is the median and maximum over the kept measurements.
	ForeignKept [2]float64 `json:"foreign_cpu_cores_kept_median_max"`
	Redone      int        `json:"measurements_redone"`
	Contended   int        `json:"measurements_contended"`
	StealCPU    float64    `json:"steal_cpu_cores"`
}

type Settings struct {
	Pinned          bool     `json:"pinned"`
	Placement       string   `json:"placement"`
	EnvoyFlags      string   `json:"envoy_flags"`
	Rounds          int      `json:"latency_rounds"`
	N               int      `json:"latency_requests_per_round"`
	Warmup          int      `json:"latency_warmup"`
	StepRounds      int      `json:"ladder_rounds"`
	Rates           []int    `json:"ladder_rates"`
	PeerRates       []int    `json:"ladder_extra_rates_peers"`
	StepSeconds     float64  `json:"ladder_step_s"`
	StreamRounds    int      `json:"stream_rounds"`
	StreamN         int      `json:"stream_per_round"`
	PipelineWindow  string   `json:"pipeline_window"`
	PipelineLimit   int      `json:"pipeline_limit"`
	Request         string   `json:"request"`
	LoadGenerator   string   `json:"load_generator"`
	CircuitBreakers string   `json:"circuit_breakers"`
	Method          []string `json:"method"`
}

// ScenarioResult holds a scenario's raw rounds and their medians.
type ScenarioResult struct {
	Name      string   `json:"name"`
	Label     string   `json:"label"`
	Kind      string   `json:"kind"`
	URL       string   `json:"url,omitempty"`
	Error     string   `json:"error,omitempty"`
	Processes []string `json:"processes"`
	Rates     []int    `json:"ladder_rates"`

	Latency []seqResult    `json:"latency_rounds"`
	Steps   [][]stepResult `json:"ladder_rounds"`

	P50         float64            `json:"p50_us"`
	P99         float64            `json:"p99_us"`
	AddedP50    float64            `json:"added_p50_us"`
	AddedP99    float64            `json:"added_p99_us"`
	AddedP50Min float64            `json:"added_p50_us_min"`
	AddedP50Max float64            `json:"added_p50_us_max"`
	AddedP99Min float64            `json:"added_p99_us_min"`
	AddedP99Max float64            `json:"added_p99_us_max"`
	CPUc1       map[string]float64 `json:"cpu_s_per_1k_c1"`
	MaxRPS10    []int              `json:"max_rps_p99_under_10ms_rounds"`
	MaxRPS50    []int              `json:"max_rps_p99_under_50ms_rounds"`
	MedRPS10    int                `json:"max_rps_p99_under_10ms"`
	MedRPS50    int                `json:"max_rps_p99_under_50ms"`
	Ceiling10   bool               `json:"max_rps_10ms_is_ladder_top"`
	Ceiling50   bool               `json:"max_rps_50ms_is_ladder_top"`
	CPURate     int                `json:"cpu_rate_rps"`
	CPU         map[string]float64 `json:"cpu_s_per_1k"`
	StepMedians map[int]stepMedian `json:"ladder_medians"`
	PeakRSS     map[string]float64 `json:"peak_rss_mib"`
	ErrorsTotal int                `json:"errors_total"`
	ErrorsC1    int                `json:"errors_c1"`
}

type stepMedian struct {
	Rounds     int                `json:"rounds"`
	P50        float64            `json:"p50_us"`
	P99        float64            `json:"p99_us"`
	Throughput float64            `json:"throughput_rps"`
	CPU        map[string]float64 `json:"cpu_s_per_1k"`
}

type StreamResult struct {
	Chunks      int                       `json:"chunks"`
	IntervalMS  float64                   `json:"interval_ms"`
	ToleranceMS float64                   `json:"hold_back_tolerance_ms"`
	Samples     map[string][]streamSample `json:"samples"`
	Summary     map[string]streamSummary  `json:"summary"`
	// Added figures: full edge minus direct (medians).
	AddedHeadersUS    float64 `json:"added_headers_us"`
	AddedFirstChunkUS float64 `json:"added_first_chunk_us"`
	AddedMeanGapUS    float64 `json:"added_mean_gap_us"`
	AddedMaxGapUS     float64 `json:"added_max_gap_us"`
	// MinGapEdgeUS is the smallest gap between two content chunks in any answer through the
	// edge: chunks held back and released together would show a gap near 0.
	MinGapEdgeUS      float64   `json:"min_gap_edge_us"`
	PerChunkAddedUS   []float64 `json:"per_chunk_added_us"`
	WorstChunkAddedUS float64   `json:"worst_chunk_added_us"`
	// WorstBeyondFirstUS is the largest added delay of any event beyond the first event's.
	WorstBeyondFirstUS float64  `json:"worst_added_beyond_first_event_us"`
	WorstSingleUS      float64  `json:"worst_single_sample_added_us"`
	NoneHeldBack       bool     `json:"no_chunk_held_back"`
	MinGapOK           bool     `json:"min_gap_ok"`
	Errors             []string `json:"errors,omitempty"`
}

type streamSummary struct {
	N            int       `json:"n"`
	HeadersUS    float64   `json:"headers_us"`
	FirstChunkUS float64   `json:"first_content_chunk_us"`
	MeanGapUS    float64   `json:"mean_gap_us"`
	MaxGapUS     float64   `json:"max_gap_us"`
	MinGapUS     float64   `json:"min_gap_us"`
	EventsUS     []float64 `json:"median_event_arrival_us"`
	Events       int       `json:"events"`
}

type PipelineResult struct {
	Window         string                `json:"window"`
	Limit          int                   `json:"limit"`
	Off            string                `json:"off_scenario"`
	On             string                `json:"on_scenario"`
	C1P50          [2]float64            `json:"c1_p50_us_off_on"`
	C1P99          [2]float64            `json:"c1_p99_us_off_on"`
	AtRate         map[int][2][2]float64 `json:"ladder_p50_p99_us_off_on"`
	RLCPU          map[int][2]float64    `json:"ratelimit_cpu_s_per_1k_off_on"`
	RedisCPU       map[int][2]float64    `json:"redis_cpu_s_per_1k_off_on"`
	MaxRPS10       [2]int                `json:"max_rps_10ms_off_on"`
	MaxRPS50       [2]int                `json:"max_rps_50ms_off_on"`
	Recommendation string                `json:"recommendation"`
}

func settingsOf(o options) Settings {
	s := Settings{
		Pinned:         o.pin,
		EnvoyFlags:     strings.Join(stack.Envoy{Concurrency: stack.LocalEnvoyConcurrency}.Cmd("envoy", "<bootstrap>", "<admin address file>").Args, " "),
		Rounds:         o.rounds,
		N:              o.n,
		Warmup:         o.warmup,
		StepRounds:     o.stepRounds,
		Rates:          o.rates,
		PeerRates:      o.peerRates,
		StepSeconds:    o.stepDur.Seconds(),
		StreamRounds:   o.streamRounds,
		StreamN:        o.streamN,
		PipelineWindow: o.pipeWindow,
		PipelineLimit:  o.pipeLimit,
		Request:        "POST " + chatBody + " (HTTP/1.1 keep-alive); the fake answers a 5-word chat.completion JSON (~450 bytes)",
		LoadGenerator:  "in-process: net/http sequential client for concurrency 1; github.com/tsenart/vegeta/v12 library (open loop, constant rate) for the ladder",
		CircuitBreakers: "static configs (bare, rate limit only): upstream max_connections/pending/requests/retries raised to 1,000,000; " +
			"llmedge's translated clusters keep Envoy's defaults (1024); the overflow counters below show whether they tripped",
	}
	if o.pin {
		s.Placement = "taskset: CPU 0 = load generator + fake upstream + control planes; CPU 1 = Envoy, extauthz, ratelimit, Redis, peer gateways"
	} else {
		s.Placement = "not pinned"
	}
	return s
}

func medianInt(xs []int) int {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2] // the lower middle: never credits a rate most rounds did not reach
}

func medianMaps(ms []map[string]float64) map[string]float64 {
	vals := map[string][]float64{}
	for _, m := range ms {
		for k, v := range m {
			vals[k] = append(vals[k], v)
		}
	}
	out := map[string]float64{}
	for k, v := range vals {
		out[k] = host.Median(v)
	}
	return out
}

// aggregate computes every scenario's medians over the rounds, the pipelining comparison
// and the foreign load over the kept measurements.
func aggregate(res *Results, o options) {
	direct := find(res, "direct")
	for _, s := range res.Scenarios {
		if s.Error != "" || len(s.Latency) == 0 {
			continue
		}
		s.aggregateLatency(direct)
		byRate := s.aggregateLadder()
		s.cpuAtReference(byRate)
		s.PeakRSS = map[string]float64{}
		for _, p := range s.Processes {
			s.PeakRSS[p] = res.PeakRSS[p]
		}
	}
	res.Pipelining = pipelining(res, o)
	var fk []float64
	for _, s := range res.Scenarios {
		for _, l := range s.Latency {
			fk = append(fk, l.Foreign)
		}
		for _, round := range s.Steps {
			for _, st := range round {
				fk = append(fk, st.Foreign)
			}
		}
	}
	if len(fk) > 0 {
		res.Machine.ForeignKept = [2]float64{host.Median(fk), slices.Max(fk)}
	}
}

// aggregateLatency takes the medians of the concurrency-1 rounds, and of the per-round
// differences to direct (measured in the same round).
func (s *ScenarioResult) aggregateLatency(direct *ScenarioResult) {
	var p50, p99, a50, a99 []float64
	var cpu []map[string]float64
	s.ErrorsC1 = 0
	for i, l := range s.Latency {
		s.ErrorsC1 += l.Errors
		p50 = append(p50, l.P50)
		p99 = append(p99, l.P99)
		cpu = append(cpu, l.CPUPer1k)
		if direct != nil && i < len(direct.Latency) {
			a50 = append(a50, l.P50-direct.Latency[i].P50)
			a99 = append(a99, l.P99-direct.Latency[i].P99)
		}
	}
	s.P50, s.P99 = host.Median(p50), host.Median(p99)
	s.AddedP50, s.AddedP99 = host.Median(a50), host.Median(a99)
	s.AddedP50Min, s.AddedP50Max = slices.Min(a50), slices.Max(a50)
	s.AddedP99Min, s.AddedP99Max = slices.Min(a99), slices.Max(a99)
	s.CPUc1 = medianMaps(cpu)
}

// aggregateLadder finds, per round, the highest rate before the first step that missed,
// and the medians of each rate's sustained steps; it returns the steps by rate.
func (s *ScenarioResult) aggregateLadder() map[int][]stepResult {
	s.ErrorsTotal = s.ErrorsC1
	s.MaxRPS10, s.MaxRPS50 = nil, nil
	byRate := map[int][]stepResult{}
	for _, round := range s.Steps {
		m10, m50, all10, all50 := 0, 0, true, true
		for _, st := range round {
			s.ErrorsTotal += st.Errors
			byRate[st.Rate] = append(byRate[st.Rate], st)
			if all10 = all10 && st.Pass10; all10 {
				m10 = st.Rate
			}
			if all50 = all50 && st.Pass50; all50 {
				m50 = st.Rate
			}
		}
		s.MaxRPS10 = append(s.MaxRPS10, m10)
		s.MaxRPS50 = append(s.MaxRPS50, m50)
	}
	s.MedRPS10, s.MedRPS50 = medianInt(s.MaxRPS10), medianInt(s.MaxRPS50)
	top := 0
	if len(s.Rates) > 0 {
		top = s.Rates[len(s.Rates)-1]
	}
	s.Ceiling10, s.Ceiling50 = s.MedRPS10 == top, s.MedRPS50 == top
	s.StepMedians = map[int]stepMedian{}
	for rate, sts := range byRate {
		var p50, p99, thr []float64
		var cpu []map[string]float64
		for _, st := range sts {
			if st.sustained() {
				p50, p99 = append(p50, st.P50), append(p99, st.P99)
				thr, cpu = append(thr, st.Throughput), append(cpu, st.CPUPer1k)
			}
		}
		if len(p50) > 0 {
			s.StepMedians[rate] = stepMedian{Rounds: len(p50), P50: host.Median(p50), P99: host.Median(p99), Throughput: host.Median(thr), CPU: medianMaps(cpu)}
		}
	}
	return byRate
}

// cpuAtReference is CPU per 1,000 requests at 1,000 rps, or below that the highest rate the
// scenario passed (p99 < 50 ms) in the lower-median round; median over the rounds that
// passed it.
func (s *ScenarioResult) cpuAtReference(byRate map[int][]stepResult) {
	ref := min(s.MedRPS50, 1000)
	if ref > 0 && !slices.Contains(s.Rates, ref) {
		ref = 0
	}
	var passCPU []map[string]float64
	for _, st := range byRate[ref] {
		if st.Pass50 {
			passCPU = append(passCPU, st.CPUPer1k)
		}
	}
	if len(passCPU) > 0 {
		s.CPURate, s.CPU = ref, medianMaps(passCPU)
	}
}

func find(res *Results, name string) *ScenarioResult {
	for _, s := range res.Scenarios {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func pipelining(res *Results, o options) *PipelineResult {
	off, on := find(res, "edge_full"), find(res, "edge_full_pipelined")
	if off == nil || on == nil || len(off.Latency) == 0 || len(on.Latency) == 0 {
		return nil
	}
	p := &PipelineResult{Window: o.pipeWindow, Limit: o.pipeLimit, Off: off.Name, On: on.Name,
		C1P50: [2]float64{off.P50, on.P50}, C1P99: [2]float64{off.P99, on.P99},
		AtRate: map[int][2][2]float64{}, RLCPU: map[int][2]float64{}, RedisCPU: map[int][2]float64{},
		MaxRPS10: [2]int{off.MedRPS10, on.MedRPS10}, MaxRPS50: [2]int{off.MedRPS50, on.MedRPS50}}
	for _, rate := range o.rates {
		a, okA := off.StepMedians[rate]
		b, okB := on.StepMedians[rate]
		if !okA || !okB {
			continue
		}
		p.AtRate[rate] = [2][2]float64{{a.P50, a.P99}, {b.P50, b.P99}}
		p.RLCPU[rate] = [2]float64{a.CPU["ratelimit-full"], b.CPU["ratelimit-fullpipe"]}
		p.RedisCPU[rate] = [2]float64{a.CPU["redis"], b.CPU["redis"]}
	}
	// The rule: pipelining earns its place only if it buys throughput (a higher max rate at
	// p99 < 10 ms) or at least 10% less ratelimit+Redis CPU per request at 1,000 rps, without
	// adding more than 100 us to the concurrency-1 p50.
	gainRPS := on.MedRPS10 > off.MedRPS10
	gainCPU := false
	if a, ok := p.RLCPU[1000]; ok {
		ra, rb := p.RedisCPU[1000][0], p.RedisCPU[1000][1]
		gainCPU = a[1]+rb < 0.9*(a[0]+ra)
	}
	cost := on.P50 - off.P50
	switch {
	case (gainRPS || gainCPU) && cost <= 100:
		p.Recommendation = fmt.Sprintf("turn it on (REDIS_PIPELINE_WINDOW=%s, REDIS_PIPELINE_LIMIT=%d): it buys throughput or CPU and changes the concurrency-1 p50 by %s", o.pipeWindow, o.pipeLimit, fmtAdded(cost))
	default:
		p.Recommendation = fmt.Sprintf("keep it off (envoyproxy/ratelimit's default): on this machine it bought no higher rate at p99 < 10 ms and no 10%% CPU saving at 1,000 rps; it changed the concurrency-1 p50 by %s", fmtAdded(cost))
	}
	return p
}

// aggregate summarizes each target's streamed answers and compares the full edge with
// direct, event by event.
func (st *StreamResult) aggregate() {
	st.Summary = map[string]streamSummary{}
	st.Errors, st.PerChunkAddedUS = nil, nil
	st.WorstChunkAddedUS, st.WorstBeyondFirstUS, st.WorstSingleUS = 0, 0, 0
	for name, samples := range st.Samples {
		st.Summary[name] = st.summarize(name, samples)
	}
	d, okD := st.Summary["direct"]
	e, okE := st.Summary["edge_full"]
	if !okD || !okE || d.N == 0 || e.N == 0 {
		return
	}
	st.AddedHeadersUS = e.HeadersUS - d.HeadersUS
	st.AddedFirstChunkUS = e.FirstChunkUS - d.FirstChunkUS
	st.AddedMeanGapUS = e.MeanGapUS - d.MeanGapUS
	st.AddedMaxGapUS = e.MaxGapUS - d.MaxGapUS
	st.MinGapEdgeUS = e.MinGapUS
	k := min(len(d.EventsUS), len(e.EventsUS))
	for i := 0; i < k; i++ {
		a := e.EventsUS[i] - d.EventsUS[i]
		st.PerChunkAddedUS = append(st.PerChunkAddedUS, a)
		st.WorstChunkAddedUS = math.Max(st.WorstChunkAddedUS, a)
		// Held back = later than the first event's offset (the request's own added latency)
		// by more than the tolerance.
		st.WorstBeyondFirstUS = math.Max(st.WorstBeyondFirstUS, a-(e.EventsUS[0]-d.EventsUS[0]))
	}
	st.MinGapOK = st.MinGapEdgeUS > st.IntervalMS*1000/2
	st.NoneHeldBack = st.WorstBeyondFirstUS <= st.ToleranceMS*1000 && st.MinGapOK
	// Worst single sample: each edge sample against the direct median.
	for _, s := range st.Samples["edge_full"] {
		for i := 0; i < min(len(s.Events), k); i++ {
			st.WorstSingleUS = math.Max(st.WorstSingleUS, s.Events[i]-d.EventsUS[i])
		}
	}
}

// summarize is the medians of one target's complete answers; it records the others in
// st.Errors.
func (st *StreamResult) summarize(name string, samples []streamSample) streamSummary {
	var hdr, first, mean, mx, mn []float64
	var events [][]float64
	for _, s := range samples {
		if s.Err != "" {
			st.Errors = append(st.Errors, name+": "+s.Err)
			continue
		}
		// data events: 0 = role, 1..chunks = content, then finish and [DONE].
		if len(s.Events) < st.Chunks+1 {
			st.Errors = append(st.Errors, fmt.Sprintf("%s: %d events, want at least %d", name, len(s.Events), st.Chunks+1))
			continue
		}
		hdr = append(hdr, s.Headers)
		content := s.Events[1 : st.Chunks+1]
		first = append(first, content[0])
		var sum, m float64
		lo := math.Inf(1)
		for i := 1; i < len(content); i++ {
			g := content[i] - content[i-1]
			sum, m, lo = sum+g, math.Max(m, g), math.Min(lo, g)
		}
		mean = append(mean, sum/float64(len(content)-1))
		mx, mn = append(mx, m), append(mn, lo)
		events = append(events, s.Events)
	}
	if len(events) == 0 {
		return streamSummary{}
	}
	sum := streamSummary{N: len(events), HeadersUS: host.Median(hdr), FirstChunkUS: host.Median(first), MeanGapUS: host.Median(mean), MaxGapUS: host.Median(mx), MinGapUS: slices.Min(mn)}
	sum.Events = len(events[0])
	for _, e := range events {
		sum.Events = min(sum.Events, len(e))
	}
	for i := range sum.Events {
		var col []float64
		for _, e := range events {
			col = append(col, e[i])
		}
		sum.EventsUS = append(sum.EventsUS, host.Median(col))
	}
	return sum
}

// --- machine description -------------------------------------------------------------

func machineInfo(root string, t stack.Paths) Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if n, err := strconv.Atoi(host.FirstLine("nproc", "--all")); err == nil {
		m.NProc = n
	}
	m.CPUModel, m.Hypervisor = host.CPUInfo()
	m.MemGiB = math.Round(host.MemKiB()/1024/1024*10) / 10
	m.Kernel = host.FirstLine("uname", "-r")
	m.Envoy = strings.TrimSpace(strings.TrimPrefix(host.FirstLine(t.Envoy, "--version"), t.Envoy))
	if out, err := exec.Command("go", "version", "-m", t.Ratelimit).Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "mod" {
				m.Ratelimit = f[1] + " " + f[2]
			}
		}
	}
	m.Redis = host.FirstLine(t.RedisServer, "--version")
	m.Node = host.FirstLine("node", "--version")
	if py := filepath.Join(peersDir(root), "litellm", "bin", "python"); fileExists(py) {
		m.Python = host.FirstLine(py, "--version")
	} else {
		m.Python = host.FirstLine("python3", "--version")
	}
	m.Commit = host.FirstLine("git", "-C", root, "rev-parse", "--short", "HEAD")
	if out, err := exec.Command("git", "-C", root, "status", "--porcelain").Output(); err == nil {
		m.Dirty = len(strings.TrimSpace(string(out))) > 0
	}
	m.LoadAvg = loadavg()
	return m
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return ""
}

// noiseSnap is what otherCPU needs at the start of the measurements.
type noiseSnap struct {
	at          time.Time
	busy, steal float64 // seconds, whole machine
	ours        float64 // seconds, this benchmark's processes (and itself)
}

func machineBusy() (busy, steal float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	v := func(i int) float64 { x, _ := strconv.ParseFloat(f[i], 64); return x }
	// user nice system idle iowait irq softirq steal. irq and softirq time (much of the
	// loopback TCP work) belongs to no process, so it is left out of both sides.
	busy = v(1) + v(2) + v(3)
	return busy / 100, v(8) / 100
}

func takeNoise(r *runner) noiseSnap {
	n := noiseSnap{at: time.Now()}
	n.busy, n.steal = machineBusy()
	n.ours = host.SelfCPU()
	for _, p := range r.all {
		n.ours += r.cpuSeconds(p)
	}
	return n
}

// otherCPU returns the cores other processes used on average since start, and the steal.
func otherCPU(start noiseSnap, r *runner) (other, steal float64) {
	end := takeNoise(r)
	secs := end.at.Sub(start.at).Seconds()
	if secs <= 0 {
		return 0, 0
	}
	other = ((end.busy - start.busy) - (end.ours - start.ours)) / secs
	return math.Max(0, other), (end.steal - start.steal) / secs
}
