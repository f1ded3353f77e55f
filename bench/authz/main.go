// Command authz measures extauthz's Check path as Envoy uses it: the real `llmedge extauthz`
// binary, given a 1,000-caller policy by the real `llmedge controlplane`, answering gRPC
// Checks over loopback.
//
//	go run ./bench/authz -out docs/bench        # everything, 3 runs
//	go run ./bench/authz -runs 1 -gotest=false -out ''
//
// It measures, per run (each with a fresh extauthz):
//   - latency: 50,000 sequential Checks (one in flight) from one gRPC client, each timed
//     on the client from the call to the answer; p50/p90/p99/p99.9/max;
//   - throughput: -concurrency Checks in flight for -duration, checks/s, and the extauthz
//     process's CPU time (/proc/<pid>/stat) per check, whose inverse is checks/s per core.
//
// extauthz runs with GOMAXPROCS=1. With -pin (the default on 2+ CPUs) it is pinned to CPU 0
// (taskset) and this process, the load generator, to CPU 1, so the two do not share a core.
// Each request is an allowed OpenAI chat call shaped like Envoy's CheckRequest, cycling
// through the 1,000 callers' tokens. With -floor (the default) each run then measures, the
// same way, a server that answers every Check with a fixed response (this program with
// -serve-floor): the cost of gRPC, HTTP/2 and protobuf alone for this RPC on this machine,
// under extauthz's figures. With -gotest it first runs
// `go test -bench Check -benchmem -count 5 ./extauthz/` and records the medians.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/benchconfig"
	"github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/token"
)

type options struct {
	host.Flags
	checks       int
	warmup       int
	concurrency  int
	conns        int
	duration     time.Duration
	callers      int
	pin          bool
	gotest       bool
	floor        bool
	serverEnv    []string
	floorWorkers int
}

func main() {
	var o options
	o.Register("authz.json", "runs, each with a fresh extauthz")
	flag.IntVar(&o.checks, "checks", 50000, "sequential Checks timed per run")
	flag.IntVar(&o.warmup, "warmup", 5000, "Checks before each measurement, not timed")
	flag.IntVar(&o.concurrency, "concurrency", 32, "Checks in flight in the throughput phase")
	flag.IntVar(&o.conns, "conns", 2, "gRPC connections in the throughput phase (Envoy opens one per worker)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of the throughput phase")
	flag.IntVar(&o.callers, "callers", 1000, "callers in the policy")
	flag.BoolVar(&o.pin, "pin", runtime.NumCPU() >= 2, "pin extauthz to CPU 0 and this process to CPU 1")
	flag.BoolVar(&o.gotest, "gotest", true, "also run the extauthz Check benchmarks (go test) and record their medians")
	flag.BoolVar(&o.floor, "floor", true, "also measure the floor: a server answering every Check with a fixed response, run like extauthz")
	serverEnv := flag.String("server-env", "", "extra environment for the servers, comma-separated (e.g. GOGC=400), for experiments")
	floorGRPC := flag.String("serve-floor", "", "internal: serve the floor Authorization service on this address")
	floorHTTP := flag.String("serve-floor-http", "", "internal: its /readyz address")
	flag.IntVar(&o.floorWorkers, "floor-stream-workers", 0, "experiment: grpc.NumStreamWorkers for the floor server (0: a goroutine per RPC, as extauthz)")
	flag.Parse()
	if *floorGRPC != "" {
		if err := serveFloor(*floorGRPC, *floorHTTP, o.floorWorkers); err != nil {
			fmt.Fprintf(os.Stderr, "bench/authz floor: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if *serverEnv != "" {
		o.serverEnv = strings.Split(*serverEnv, ",")
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "bench/authz: %v\n", err)
		os.Exit(1)
	}
}

// Report is what authz.json holds.
type Report struct {
	host.Header
	Setup   string `json:"setup"`
	Targets struct {
		P99Us          float64 `json:"p99_us"`
		ChecksPerSCore float64 `json:"checks_per_s_per_core"`
	} `json:"targets"`
	GoTest []GoBench `json:"go_test_benchmarks,omitempty"`
	// Repeated counts runs discarded and repeated because other processes used more than
	// -max-other-load cores during them (the VM is shared).
	Repeated int   `json:"repeated_runs"`
	Runs     []Run `json:"runs"`
	Median   Run   `json:"median"`
	Met      struct {
		P99            bool `json:"p99"`
		ChecksPerSCore bool `json:"checks_per_s_per_core"`
	} `json:"target_met"`
}

// GoBench is one `go test` benchmark: medians over -count 5.
type GoBench struct {
	Name        string  `json:"name"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
	Samples     int     `json:"samples"`
}

// Run is one extauthz process, and the floor server measured right after it.
type Run struct {
	Measure
	Floor *Measure `json:"floor,omitempty"`
}

// maxOther is the largest other-load figure of the run's phases.
func (r Run) maxOther() float64 {
	v := max(r.OtherCPUCoresSeq, r.OtherCPUCoresThroughput)
	if r.Floor != nil {
		v = max(v, r.Floor.OtherCPUCoresSeq, r.Floor.OtherCPUCoresThroughput)
	}
	return v
}

// Measure is one server's figures.
type Measure struct {
	// Sequential: client-side latency of -checks Checks, one in flight.
	P50Us  float64 `json:"p50_us"`
	P90Us  float64 `json:"p90_us"`
	P99Us  float64 `json:"p99_us"`
	P999Us float64 `json:"p99_9_us"`
	MaxUs  float64 `json:"max_us"`
	MeanUs float64 `json:"mean_us"`
	// extauthz CPU per Check during the sequential phase.
	SeqServerCPUUs float64 `json:"seq_server_cpu_us_per_check"`
	// Throughput phase.
	ChecksPerS     float64 `json:"checks_per_s"`
	ServerCPUUtil  float64 `json:"server_cpu_util"` // CPU seconds per second, 1.0 = one core
	ServerCPUUs    float64 `json:"server_cpu_us_per_check"`
	ChecksPerSCore float64 `json:"checks_per_s_per_core"` // 1e6 / ServerCPUUs
	ClientCPUUtil  float64 `json:"client_cpu_util"`
	ServerRSSMiB   float64 `json:"server_peak_rss_mib"`
	// Other load on the machine (all busy CPU in /proc/stat, steal included, minus
	// extauthz's and this process's), in cores, during each phase. The VM is shared; a run
	// with a large value was disturbed.
	OtherCPUCoresSeq        float64 `json:"other_cpu_cores_latency"`
	OtherCPUCoresThroughput float64 `json:"other_cpu_cores_throughput"`
}

func run(o options) error {
	if o.pin {
		if _, err := exec.LookPath("taskset"); err != nil {
			return errors.New("-pin needs taskset (util-linux); run with -pin=false")
		}
	}
	rep := newReport(o)
	if o.gotest {
		fmt.Fprintln(os.Stderr, "go test -run '^$' -bench Check -benchmem -count 5 ./extauthz/")
		gb, err := goTestBenchmarks()
		if err != nil {
			return err
		}
		rep.GoTest = gb
	}
	dir, err := os.MkdirTemp("", "llmedge-bench-authz-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	if o.LLMedge == "" {
		root, err := stack.RepoRoot()
		if err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "building llmedge")
		o.LLMedge = filepath.Join(dir, "llmedge")
		if err := stack.GoBuild(ctx, root, "./cmd/llmedge", o.LLMedge); err != nil {
			return err
		}
	}
	toks, err := writeFixtures(dir, o.callers)
	if err != nil {
		return err
	}
	r := &stack.Runner{Paths: stack.Paths{Llmedge: o.LLMedge}, Dir: dir, Override: o.override}
	a, err := host.FreeAddrs(2)
	if err != nil {
		return err
	}
	cp := stack.ControlPlane{Config: filepath.Join(dir, "routes.yaml"), XDSAddr: a[0], HTTPAddr: a[1]}
	p, err := r.StartControlPlane(ctx, "controlplane", cp)
	if err != nil {
		return err
	}
	defer p.Stop()
	if err := p.Await(ctx, stack.LlmedgeStartTimeout, stack.HTTPStatus(cp.StatusURL()+"/readyz", 200)); err != nil {
		return err
	}
	// Pin only now: children inherit the affinity, and go test, go build and the control
	// plane should not be confined to one CPU.
	if o.pin {
		if err := pinSelf(1); err != nil {
			return fmt.Errorf("pin to CPU 1: %w", err)
		}
		runtime.GOMAXPROCS(1)
	}
	if err := runAll(o, &rep, r, cp.XDSAddr, benchconfig.CheckRequests(toks)); err != nil {
		return err
	}
	printSummary(o, rep)
	return host.WriteJSON(o.Out, "authz.json", rep)
}

func newReport(o options) Report {
	pinned := func(s string) string {
		if o.pin {
			return s
		}
		return ""
	}
	rep := Report{
		Header: host.NewHeader("./bench/authz"),
		Setup: fmt.Sprintf("llmedge extauthz (GOMAXPROCS=1%s) with a %d-caller policy from llmedge controlplane; client: this process%s; "+
			"%d sequential Checks per run (after %d warm-up) for latency; %d in flight over %d connections for %v for throughput; "+
			"allowed OpenAI chat requests shaped like Envoy's CheckRequest, cycling through the callers' tokens; "+
			"floor: the same measurements against a server answering every Check with a fixed response, run the same way",
			pinned(", pinned to CPU 0"), o.callers, pinned(", pinned to CPU 1, GOMAXPROCS=1"),
			o.checks, o.warmup, o.concurrency, o.conns, o.duration),
	}
	rep.Targets.P99Us, rep.Targets.ChecksPerSCore = 200, 20000
	return rep
}

// runAll runs -runs fresh extauthz processes (repeating disturbed ones) and takes the medians.
func runAll(o options, rep *Report, r *stack.Runner, cpXDS string, reqs []*authv3.CheckRequest) error {
	for i := range o.Runs {
		fmt.Fprintf(os.Stderr, "run %d/%d\n", i+1, o.Runs)
		res, repeated, err := host.Repeat(o.MaxOther, func() (Run, float64, error) {
			res, err := runOnce(o, r, cpXDS, reqs)
			return res, res.maxOther(), err
		})
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		rep.Repeated += repeated
		logMeasure("extauthz", &res.Measure)
		logMeasure("floor", res.Floor)
		rep.Runs = append(rep.Runs, res)
	}
	rep.Median = Run{Measure: host.Medians(measures(rep.Runs, false))}
	if rep.Runs[0].Floor != nil {
		m := host.Medians(measures(rep.Runs, true))
		rep.Median.Floor = &m
	}
	rep.Met.P99 = rep.Median.P99Us < rep.Targets.P99Us
	rep.Met.ChecksPerSCore = rep.Median.ChecksPerSCore > rep.Targets.ChecksPerSCore
	return nil
}

func measures(runs []Run, floor bool) []Measure {
	out := make([]Measure, len(runs))
	for i, r := range runs {
		if out[i] = r.Measure; floor {
			out[i] = *r.Floor
		}
	}
	return out
}

func logMeasure(name string, m *Measure) {
	if m == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "  %-8s p50 %.1f µs  p99 %.1f µs  p99.9 %.1f µs  |  %.0f checks/s at %.2f server cores, %.1f µs server CPU/check = %.0f checks/s/core  |  other load %.2f / %.2f cores\n",
		name, m.P50Us, m.P99Us, m.P999Us, m.ChecksPerS, m.ServerCPUUtil, m.ServerCPUUs, m.ChecksPerSCore, m.OtherCPUCoresSeq, m.OtherCPUCoresThroughput)
}

func printSummary(o options, rep Report) {
	m := rep.Median
	fmt.Printf("\nextauthz Check over loopback gRPC, %d callers, server GOMAXPROCS=1 (median of %d runs)\n", o.callers, len(rep.Runs))
	fmt.Printf("  latency (sequential, %d checks): p50 %.1f µs  p90 %.1f µs  p99 %.1f µs (target < 200)  p99.9 %.1f µs  max %.1f µs\n",
		o.checks, m.P50Us, m.P90Us, m.P99Us, m.P999Us, m.MaxUs)
	fmt.Printf("  throughput (%d in flight): %.0f checks/s wall at %.2f server cores; %.1f µs server CPU/check = %.0f checks/s per core (target > 20000)\n",
		o.concurrency, m.ChecksPerS, m.ServerCPUUtil, m.ServerCPUUs, m.ChecksPerSCore)
	if f := m.Floor; f != nil {
		fmt.Printf("  floor (fixed response, same gRPC server setup): p50 %.1f µs  p90 %.1f µs  p99 %.1f µs  p99.9 %.1f µs | %.0f checks/s wall, %.1f µs server CPU/check = %.0f checks/s per core\n",
			f.P50Us, f.P90Us, f.P99Us, f.P999Us, f.ChecksPerS, f.ServerCPUUs, f.ChecksPerSCore)
	}
	for _, g := range rep.GoTest {
		fmt.Printf("  %-40s %10.0f ns/op %8.0f B/op %6.0f allocs/op\n", g.Name, g.NsPerOp, g.BytesPerOp, g.AllocsPerOp)
	}
}

// writeFixtures writes the routes YAML (one region, one upstream, n callers) and the keys
// directory, and returns the callers' tokens.
func writeFixtures(dir string, n int) ([]string, error) {
	keys := filepath.Join(dir, "keys", benchconfig.CheckUpstream)
	if err := os.MkdirAll(keys, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(keys, "k1"), []byte(benchconfig.CheckKey), 0o600); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(`version: 1
regions:
  hk:
    listen: 127.0.0.1:10000
    extauthz: 127.0.0.1:10100
    upstreams: [openai]
upstreams:
  openai:
    url: http://127.0.0.1:8090
    allowed_regions: [hk]
routes:
  openai-chat:
    match: {prefix: /openai}
    upstream: openai
    prefix_rewrite: /
callers:
`)
	toks := make([]string, n)
	for i := range toks {
		t, err := token.New()
		if err != nil {
			return nil, err
		}
		toks[i] = t
		name, tenant := benchconfig.Caller(i)
		fmt.Fprintf(&b, "  %s:\n    tokens: [%s]\n    upstreams: [openai]\n    tenant: %s\n", name, token.DigestRef(t), tenant)
	}
	return toks, os.WriteFile(filepath.Join(dir, "routes.yaml"), []byte(b.String()), 0o644)
}

// override is what this benchmark changes on top of the stack's settings: extauthz and
// the floor get GOMAXPROCS=1 and -server-env, and with -pin run on CPU 0; the control
// plane keeps both CPUs.
func (o options) override(name string, c stack.Cmd) (stack.Cmd, error) {
	if name == "controlplane" {
		return c, nil
	}
	c = c.WithEnv(append([]string{"GOMAXPROCS=1"}, o.serverEnv...)...)
	if !o.pin {
		return c, nil
	}
	return c.OnCPUs("0")
}

// runOnce measures a fresh extauthz, run as `make run` runs it, then (with -floor) the
// floor server, each pinned and at GOMAXPROCS=1 as set.
func runOnce(o options, r *stack.Runner, cpXDS string, reqs []*authv3.CheckRequest) (Run, error) {
	var res Run
	ctx := context.Background()
	a, err := host.FreeAddrs(4)
	if err != nil {
		return res, err
	}
	// Ready once it holds the policy from the control plane.
	ea, err := r.StartExtAuthz(ctx, "extauthz", stack.ExtAuthz{Region: benchconfig.CheckRegion, XDSAddr: cpXDS,
		GRPCAddr: a[0], HTTPAddr: a[1], KeysDir: filepath.Join(r.Dir, "keys")})
	if err != nil {
		return res, err
	}
	res.Measure, err = measure(o, ea.Pid(), a[0], reqs)
	ea.Stop()
	if err != nil || !o.floor {
		return res, err
	}
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	fl, err := r.Start("floor", stack.Cmd{Path: self, Env: stack.BaseEnv(),
		Args: []string{"-serve-floor", a[2], "-serve-floor-http", a[3], "-floor-stream-workers", strconv.Itoa(o.floorWorkers)}})
	if err != nil {
		return res, err
	}
	defer fl.Stop()
	if err := fl.Await(ctx, stack.LlmedgeStartTimeout, stack.HTTPStatus("http://"+a[3]+"/readyz", 200)); err != nil {
		return res, err
	}
	m, err := measure(o, fl.Pid(), a[2], reqs)
	res.Floor = &m
	return res, err
}

func dial(addr string) (authv3.AuthorizationClient, func(), error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return authv3.NewAuthorizationClient(cc), func() { cc.Close() }, nil
}

func check(c authv3.AuthorizationClient, r *authv3.CheckRequest) error {
	resp, err := c.Check(context.Background(), r)
	if err != nil {
		return err
	}
	return benchconfig.Allowed(resp)
}

// measure runs the latency and throughput phases against the server pid at grpcAddr.
func measure(o options, pid int, grpcAddr string, reqs []*authv3.CheckRequest) (Measure, error) {
	var res Measure
	if err := latency(o, &res, pid, grpcAddr, reqs); err != nil {
		return res, err
	}
	if err := throughput(o, &res, pid, grpcAddr, reqs); err != nil {
		return res, err
	}
	res.ServerRSSMiB, _ = host.RSS(pid)
	res.ServerRSSMiB = host.Round1(res.ServerRSSMiB)
	return res, nil
}

// latency times -checks sequential Checks on one connection, one in flight.
func latency(o options, res *Measure, pid int, grpcAddr string, reqs []*authv3.CheckRequest) error {
	client, closeConn, err := dial(grpcAddr)
	if err != nil {
		return err
	}
	defer closeConn()
	for i := range o.warmup {
		if err := check(client, reqs[i%len(reqs)]); err != nil {
			return err
		}
	}
	lat := make([]time.Duration, o.checks)
	mark := host.MarkCPU(pid)
	for i := range o.checks {
		t := time.Now()
		if err := check(client, reqs[i%len(reqs)]); err != nil {
			return err
		}
		lat[i] = time.Since(t)
	}
	server, _, other := mark.Since()
	res.SeqServerCPUUs = host.Round1(server * 1e6 / float64(o.checks))
	res.OtherCPUCoresSeq = host.Round3(other)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	us := func(d time.Duration) float64 { return host.Round1(host.Us(d)) }
	res.P50Us, res.P90Us, res.P99Us, res.P999Us = us(host.Pct(lat, 0.5)), us(host.Pct(lat, 0.9)), us(host.Pct(lat, 0.99)), us(host.Pct(lat, 0.999))
	res.MaxUs, res.MeanUs = us(host.Pct(lat, 1)), us(sum/time.Duration(len(lat)))
	return nil
}

// throughput keeps -concurrency Checks in flight over -conns connections for -duration
// (after a second of warm-up) and counts them.
func throughput(o options, res *Measure, pid int, grpcAddr string, reqs []*authv3.CheckRequest) error {
	clients := make([]authv3.AuthorizationClient, o.conns)
	for i := range clients {
		c, closeConn, err := dial(grpcAddr)
		if err != nil {
			return err
		}
		defer closeConn()
		clients[i] = c
	}
	var (
		count, measuring atomic.Int64
		stop             atomic.Bool
		wg               sync.WaitGroup
		firstErr         atomic.Pointer[error]
	)
	for g := range o.concurrency {
		wg.Go(func() {
			c := clients[g%len(clients)]
			for i := g; !stop.Load(); i += o.concurrency {
				if err := check(c, reqs[i%len(reqs)]); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				count.Add(measuring.Load())
			}
		})
	}
	time.Sleep(time.Second) // warm up
	mark, t0 := host.MarkCPU(pid), time.Now()
	measuring.Store(1)
	time.Sleep(o.duration)
	measuring.Store(0)
	n, el := count.Load(), time.Since(t0).Seconds()
	server, client, other := mark.Since()
	stop.Store(true)
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	res.OtherCPUCoresThroughput = host.Round3(other)
	res.ChecksPerS = host.Round1(float64(n) / el)
	res.ServerCPUUtil = host.Round3(server / el)
	res.ClientCPUUtil = host.Round3(client / el)
	res.ServerCPUUs = host.Round1(server * 1e6 / float64(n))
	res.ChecksPerSCore = host.Round1(float64(n) / server)
	return nil
}

// goTestBenchmarks runs the extauthz Check benchmarks and returns each one's medians.
func goTestBenchmarks() ([]GoBench, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "Check", "-benchmem", "-count", "5", "./extauthz/")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go test: %w\n%s", err, out.String())
	}
	os.Stderr.Write(out.Bytes())
	samples := map[string][][3]float64{}
	var order []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 || !strings.HasPrefix(f[0], "Benchmark") || f[3] != "ns/op" {
			continue
		}
		var v [3]float64
		for i, col := range []int{2, 4, 6} {
			v[i], _ = strconv.ParseFloat(f[col], 64)
		}
		if _, ok := samples[f[0]]; !ok {
			order = append(order, f[0])
		}
		samples[f[0]] = append(samples[f[0]], v)
	}
	var res []GoBench
	for _, name := range order {
		s := samples[name]
		col := func(i int) float64 {
			v := make([]float64, len(s))
			for j := range s {
				v[j] = s[j][i]
			}
			return host.Median(v)
		}
		res = append(res, GoBench{Name: name, NsPerOp: col(0), BytesPerOp: col(1), AllocsPerOp: col(2), Samples: len(s)})
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("no benchmark results in:\n%s", out.String())
	}
	return res, nil
}

// pinSelf sets the CPU affinity of every thread of this process (threads created later
// inherit it).
func pinSelf(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return err
		}
	}
	return nil
}
