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
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/llmedge/llmedge/bench/host"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/sys/unix"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

type options struct {
	out         string
	llmedge     string
	runs        int
	checks      int
	warmup      int
	concurrency int
	conns       int
	duration    time.Duration
	callers     int
	pin         bool
	gotest      bool
	floor       bool
	serverEnv   []string
	maxOther    float64
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "docs/bench", "directory for authz.json ('' writes nothing)")
	flag.StringVar(&o.llmedge, "llmedge", "", "llmedge binary (default: go build ./cmd/llmedge into a temporary directory)")
	flag.IntVar(&o.runs, "runs", 3, "runs, each with a fresh extauthz")
	flag.IntVar(&o.checks, "checks", 50000, "sequential Checks timed per run")
	flag.IntVar(&o.warmup, "warmup", 5000, "Checks before each measurement, not timed")
	flag.IntVar(&o.concurrency, "concurrency", 32, "Checks in flight in the throughput phase")
	flag.IntVar(&o.conns, "conns", 2, "gRPC connections in the throughput phase (Envoy opens one per worker)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of the throughput phase")
	flag.IntVar(&o.callers, "callers", 1000, "callers in the policy")
	flag.BoolVar(&o.pin, "pin", runtime.NumCPU() >= 2, "pin extauthz to CPU 0 and this process to CPU 1")
	flag.BoolVar(&o.gotest, "gotest", true, "also run the extauthz Check benchmarks (go test) and record their medians")
	flag.BoolVar(&o.floor, "floor", true, "also measure the floor: a server answering every Check with a fixed response, run like extauthz")
	flag.Float64Var(&o.maxOther, "max-other-load", 0.25, "a run during which other processes used more CPU than this (cores) is repeated, at most twice")
	serverEnv := flag.String("server-env", "", "extra environment for the servers, comma-separated (e.g. GOGC=400), for experiments")
	floorGRPC := flag.String("serve-floor", "", "internal: serve the floor Authorization service on this address")
	floorHTTP := flag.String("serve-floor-http", "", "internal: its /readyz address")
	flag.IntVar(&floorWorkers, "floor-stream-workers", 0, "experiment: grpc.NumStreamWorkers for the floor server (0: a goroutine per RPC, as extauthz)")
	flag.Parse()
	if *floorGRPC != "" {
		if err := serveFloor(*floorGRPC, *floorHTTP); err != nil {
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
	Machine host.Machine `json:"machine"`
	Commit  string       `json:"commit"`
	Date    time.Time    `json:"date"`
	Command string       `json:"command"`
	Setup   string       `json:"setup"`
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
	rep := Report{
		Machine: host.Describe(),
		Commit:  host.GitCommit(),
		Date:    time.Now().UTC().Truncate(time.Second),
		Command: strings.Join(append([]string{"go run ./bench/authz"}, os.Args[1:]...), " "),
		Setup: fmt.Sprintf("llmedge extauthz (GOMAXPROCS=1%s) with a %d-caller policy from llmedge controlplane; client: this process%s; "+
			"%d sequential Checks per run (after %d warm-up) for latency; %d in flight over %d connections for %v for throughput; "+
			"allowed OpenAI chat requests shaped like Envoy's CheckRequest, cycling through the callers' tokens; "+
			"floor: the same measurements against a server answering every Check with a fixed response, run the same way",
			map[bool]string{true: ", pinned to CPU 0", false: ""}[o.pin], o.callers,
			map[bool]string{true: ", pinned to CPU 1, GOMAXPROCS=1", false: ""}[o.pin],
			o.checks, o.warmup, o.concurrency, o.conns, o.duration),
	}
	rep.Targets.P99Us, rep.Targets.ChecksPerSCore = 200, 20000

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
	if o.llmedge == "" {
		o.llmedge = filepath.Join(dir, "llmedge")
		fmt.Fprintf(os.Stderr, "building %s\n", o.llmedge)
		cmd := exec.Command("go", "build", "-o", o.llmedge, "./cmd/llmedge")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/llmedge (run from the repository root): %w", err)
		}
	}
	toks, err := writeFixtures(dir, o.callers)
	if err != nil {
		return err
	}
	cp, cpAddrs, err := startServer(dir, "controlplane", nil, func(a []string) []string {
		return []string{o.llmedge, "controlplane", "--config", filepath.Join(dir, "routes.yaml"), "--xds-listen", a[0], "--http-listen", a[1]}
	}, 2, 1)
	if err != nil {
		return err
	}
	defer cp.stop()
	cpXDS := cpAddrs[0]
	reqs := make([]*authv3.CheckRequest, len(toks))
	for i, t := range toks {
		reqs[i] = checkRequest(t)
	}
	// Pin only now: children inherit the affinity, and go test, go build and the control
	// plane should not be confined to one CPU.
	if o.pin {
		if err := pinSelf(1); err != nil {
			return fmt.Errorf("pin to CPU 1: %w", err)
		}
		runtime.GOMAXPROCS(1)
	}
	for r := range o.runs {
		fmt.Fprintf(os.Stderr, "run %d/%d\n", r+1, o.runs)
		var res Run
		for attempt := 1; ; attempt++ {
			res, err = runOnce(o, dir, cpXDS, reqs)
			if err != nil {
				return fmt.Errorf("run %d: %w", r+1, err)
			}
			other := res.maxOther()
			if other <= o.maxOther || attempt == 3 {
				break
			}
			fmt.Fprintf(os.Stderr, "  other processes used %.2f cores during the run; repeating it\n", other)
			rep.Repeated++
		}
		for _, m := range []*Measure{&res.Measure, res.Floor} {
			if m == nil {
				continue
			}
			name := "extauthz"
			if m != &res.Measure {
				name = "floor"
			}
			fmt.Fprintf(os.Stderr, "  %-8s p50 %.1f µs  p99 %.1f µs  p99.9 %.1f µs  |  %.0f checks/s at %.2f server cores, %.1f µs server CPU/check = %.0f checks/s/core  |  other load %.2f / %.2f cores\n",
				name, m.P50Us, m.P99Us, m.P999Us, m.ChecksPerS, m.ServerCPUUtil, m.ServerCPUUs, m.ChecksPerSCore, m.OtherCPUCoresSeq, m.OtherCPUCoresThroughput)
		}
		rep.Runs = append(rep.Runs, res)
	}
	rep.Median = medianRun(rep.Runs)
	rep.Met.P99 = rep.Median.P99Us < rep.Targets.P99Us
	rep.Met.ChecksPerSCore = rep.Median.ChecksPerSCore > rep.Targets.ChecksPerSCore
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
	if o.out == "" {
		return nil
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(o.out, "authz.json")
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeFixtures writes the routes YAML (one region, one upstream, n callers) and the keys
// directory, and returns the callers' tokens.
func writeFixtures(dir string, n int) ([]string, error) {
	keys := filepath.Join(dir, "keys", "openai")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(keys, "k1"), []byte("sk-bench-key"), 0o600); err != nil {
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
		fmt.Fprintf(&b, "  caller-%04d:\n    tokens: [%s]\n    upstreams: [openai]\n    tenant: tenant-%02d\n", i, token.DigestRef(t), i%50)
	}
	return toks, os.WriteFile(filepath.Join(dir, "routes.yaml"), []byte(b.String()), 0o644)
}

// checkRequest is an allowed request shaped like the CheckRequest Envoy sends for an
// OpenAI chat call through the edge (as in extauthz/bench_test.go).
func checkRequest(tok string) *authv3.CheckRequest {
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Address: addr("10.1.2.3", 51234)},
		Destination:       &authv3.AttributeContext_Peer{Address: addr("127.0.0.1", 10000)},
		ContextExtensions: map[string]string{wire.ContextRegion: "hk", wire.ContextUpstream: "openai", wire.ContextRoute: "openai-chat"},
		Request: &authv3.AttributeContext_Request{Time: timestamppb.Now(), Http: &authv3.AttributeContext_HttpRequest{
			Id:     "5f0c7f1e-7a0d-4f0e-9c1b-1c2d3e4f5a6b",
			Method: "POST",
			// The edge's ext_authz filter sends only the credential headers and x-llmedge-*
			// (allowed_headers in controlplane/translate/extauthz.go).
			Headers:  map[string]string{"authorization": "Bearer " + tok},
			Path:     "/openai/v1/chat/completions",
			Host:     "edge.example.com",
			Scheme:   "https",
			Protocol: "HTTP/1.1",
			Size:     97,
		}},
	}}
}

func runOnce(o options, dir, cpXDS string, reqs []*authv3.CheckRequest) (Run, error) {
	var res Run
	env := append([]string{"GOMAXPROCS=1"}, o.serverEnv...)
	pinned := func(argv []string) []string {
		if o.pin {
			return append([]string{"taskset", "-c", "0"}, argv...)
		}
		return argv
	}
	// extauthz is ready once it holds the policy from the control plane.
	ea, addrs, err := startServer(dir, "extauthz", env, func(a []string) []string {
		return pinned([]string{o.llmedge, "extauthz", "--region", "hk", "--xds", cpXDS, "--grpc-listen", a[0],
			"--http-listen", a[1], "--keys-dir", filepath.Join(dir, "keys")})
	}, 2, 1)
	if err != nil {
		return res, err
	}
	res.Measure, err = measure(o, ea.pid, addrs[0], reqs)
	ea.stop()
	if err != nil || !o.floor {
		return res, err
	}
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	fl, addrs, err := startServer(dir, "floor", env, func(a []string) []string {
		return pinned([]string{self, "-serve-floor", a[0], "-serve-floor-http", a[1], "-floor-stream-workers", strconv.Itoa(floorWorkers)})
	}, 2, 1)
	if err != nil {
		return res, err
	}
	defer fl.stop()
	m, err := measure(o, fl.pid, addrs[0], reqs)
	res.Floor = &m
	return res, err
}

// measure runs the latency and throughput phases against the server pid at grpcAddr.
func measure(o options, pid int, grpcAddr string, reqs []*authv3.CheckRequest) (Measure, error) {
	var res Measure
	ctx := context.Background()

	// Latency: one connection, one Check in flight.
	cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer cc.Close()
	client := authv3.NewAuthorizationClient(cc)
	check := func(c authv3.AuthorizationClient, r *authv3.CheckRequest) error {
		resp, err := c.Check(ctx, r)
		if err != nil {
			return err
		}
		if resp.GetStatus().GetCode() != int32(codes.OK) || resp.GetOkResponse() == nil {
			return fmt.Errorf("check denied: %v", resp)
		}
		return nil
	}
	for i := range o.warmup {
		if err := check(client, reqs[i%len(reqs)]); err != nil {
			return res, err
		}
	}
	lat := make([]time.Duration, o.checks)
	cpu0, self0, sys0, wall0 := procCPU(pid), host.SelfCPU(), sysBusy(), time.Now()
	for i := range o.checks {
		t := time.Now()
		if err := check(client, reqs[i%len(reqs)]); err != nil {
			return res, err
		}
		lat[i] = time.Since(t)
	}
	cpu1 := procCPU(pid)
	res.SeqServerCPUUs = (cpu1 - cpu0) * 1e6 / float64(o.checks)
	res.OtherCPUCoresSeq = round3(max(0, (sysBusy()-sys0)-(cpu1-cpu0)-(host.SelfCPU()-self0)) / time.Since(wall0).Seconds())
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	us := func(d time.Duration) float64 { return round1(float64(d) / float64(time.Microsecond)) }
	res.P50Us, res.P90Us, res.P99Us, res.P999Us = us(pct(lat, 0.5)), us(pct(lat, 0.9)), us(pct(lat, 0.99)), us(pct(lat, 0.999))
	res.MaxUs, res.MeanUs = us(lat[len(lat)-1]), us(sum/time.Duration(len(lat)))

	// Throughput: -concurrency Checks in flight over -conns connections.
	clients := make([]authv3.AuthorizationClient, o.conns)
	for i := range clients {
		c, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return res, err
		}
		defer c.Close()
		clients[i] = authv3.NewAuthorizationClient(c)
	}
	var (
		count    atomic.Int64
		measure  atomic.Bool
		stop     atomic.Bool
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	for g := range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[g%len(clients)]
			for i := g; !stop.Load(); i += o.concurrency {
				if err := check(c, reqs[i%len(reqs)]); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				if measure.Load() {
					count.Add(1)
				}
			}
		}()
	}
	time.Sleep(time.Second) // warm up
	cpuA, selfA, sysA, t0 := procCPU(pid), host.SelfCPU(), sysBusy(), time.Now()
	measure.Store(true)
	time.Sleep(o.duration)
	measure.Store(false)
	n, cpuB, selfB, sysB, el := count.Load(), procCPU(pid), host.SelfCPU(), sysBusy(), time.Since(t0)
	res.OtherCPUCoresThroughput = round3(max(0, (sysB-sysA)-(cpuB-cpuA)-(selfB-selfA)) / el.Seconds())
	stop.Store(true)
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return res, *p
	}
	res.ChecksPerS = round1(float64(n) / el.Seconds())
	res.ServerCPUUtil = round3((cpuB - cpuA) / el.Seconds())
	res.ClientCPUUtil = round3((selfB - selfA) / el.Seconds())
	res.ServerCPUUs = round1((cpuB - cpuA) * 1e6 / float64(n))
	res.ChecksPerSCore = round1(float64(n) / (cpuB - cpuA))
	res.SeqServerCPUUs = round1(res.SeqServerCPUUs)
	res.ServerRSSMiB = procHWM(pid)
	return res, nil
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
		v[0], _ = strconv.ParseFloat(f[2], 64)
		v[1], _ = strconv.ParseFloat(f[4], 64)
		v[2], _ = strconv.ParseFloat(f[6], 64)
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
			return median(v)
		}
		res = append(res, GoBench{Name: name, NsPerOp: col(0), BytesPerOp: col(1), AllocsPerOp: col(2), Samples: len(s)})
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("no benchmark results in:\n%s", out.String())
	}
	return res, nil
}

// proc is a child process with its output in a log file.
type proc struct {
	pid     int
	logPath string
	exited  chan struct{}
	stop    func()
}

// log is the end of the process's output.
func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4000 {
		b = append([]byte("..."), b[len(b)-4000:]...)
	}
	return string(b)
}

// startServer starts a server whose listen addresses argv takes from addrs (picked free
// here), waits until its HTTP endpoint answers 200 on /readyz, and retries with new ports
// when another process took one in between.
func startServer(dir, name string, env []string, argv func(addrs []string) []string, naddrs, httpIdx int) (*proc, []string, error) {
	for attempt := 1; ; attempt++ {
		addrs := make([]string, naddrs)
		for i := range addrs {
			addrs[i] = freeAddr()
		}
		a := argv(addrs)
		p, err := start(dir, name, env, a[0], a[1:]...)
		if err != nil {
			return nil, nil, err
		}
		err = waitHTTP(addrs[httpIdx], "/readyz", 30*time.Second, p.exited)
		if err == nil {
			return p, addrs, nil
		}
		p.stop()
		if attempt == 5 || !strings.Contains(p.log(), "address already in use") {
			return nil, nil, fmt.Errorf("%s: %w\n%s", name, err, p.log())
		}
	}
}

func start(dir, name string, env []string, path string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	return &proc{pid: cmd.Process.Pid, logPath: logPath, exited: exited, stop: func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
	}}, nil
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitHTTP(addr, path string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			return errors.New("exited")
		default:
		}
		resp, err := http.Get("http://" + addr + path)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", path, resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// procCPU is a process's user+system CPU seconds (/proc/<pid>/stat, clock ticks of 10 ms).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// sysBusy is the machine's busy CPU seconds since boot (/proc/stat: all but idle, iowait
// and the guest columns, which user already counts).
func sysBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	busy := 0.0
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100
}

func procHWM(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return round1(kb / 1024)
		}
	}
	return 0
}

// pct is the nearest-rank percentile of sorted durations.
func pct(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

func medianRun(runs []Run) Run {
	out := Run{Measure: medianMeasure(runs, func(r Run) *Measure { return &r.Measure })}
	if runs[0].Floor != nil {
		m := medianMeasure(runs, func(r Run) *Measure { return r.Floor })
		out.Floor = &m
	}
	return out
}

func medianMeasure(runs []Run, of func(Run) *Measure) Measure {
	med := func(get func(*Measure) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = get(of(r))
		}
		return median(v)
	}
	return Measure{
		P50Us:          round1(med(func(r *Measure) float64 { return r.P50Us })),
		P90Us:          round1(med(func(r *Measure) float64 { return r.P90Us })),
		P99Us:          round1(med(func(r *Measure) float64 { return r.P99Us })),
		P999Us:         round1(med(func(r *Measure) float64 { return r.P999Us })),
		MaxUs:          round1(med(func(r *Measure) float64 { return r.MaxUs })),
		MeanUs:         round1(med(func(r *Measure) float64 { return r.MeanUs })),
		SeqServerCPUUs: round1(med(func(r *Measure) float64 { return r.SeqServerCPUUs })),
		ChecksPerS:     round1(med(func(r *Measure) float64 { return r.ChecksPerS })),
		ServerCPUUtil:  round3(med(func(r *Measure) float64 { return r.ServerCPUUtil })),
		ServerCPUUs:    round1(med(func(r *Measure) float64 { return r.ServerCPUUs })),
		ChecksPerSCore: round1(med(func(r *Measure) float64 { return r.ChecksPerSCore })),
		ClientCPUUtil:  round3(med(func(r *Measure) float64 { return r.ClientCPUUtil })),
		ServerRSSMiB:   round1(med(func(r *Measure) float64 { return r.ServerRSSMiB })),

		OtherCPUCoresSeq:        round3(med(func(r *Measure) float64 { return r.OtherCPUCoresSeq })),
		OtherCPUCoresThroughput: round3(med(func(r *Measure) float64 { return r.OtherCPUCoresThroughput })),
	}
}

// serveFloor answers every Check with the same allowed response, shaped like extauthz's
// (the injected key header, dynamic metadata caller/tenant/upstream), on a gRPC server set
// up as extauthz's. Run like extauthz, it is the floor under extauthz's figures: gRPC,
// HTTP/2 and protobuf for this RPC on this machine, with no decision.
func serveFloor(grpcAddr, httpAddr string) error {
	ln, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}
	md, err := structpb.NewStruct(map[string]any{wire.MetadataCaller: "caller-0001", wire.MetadataTenant: "tenant-01", wire.MetadataUpstream: "openai"})
	if err != nil {
		return err
	}
	resp := &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "authorization", Value: "Bearer sk-bench-key"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
		DynamicMetadata: md,
	}
	opts := []grpc.ServerOption{grpc.MaxConcurrentStreams(10000)}
	if floorWorkers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(uint32(floorWorkers)))
	}
	g := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(g, floorServer{resp: resp})
	go func() {
		_ = http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	}()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		g.Stop()
	}()
	return g.Serve(ln)
}

// floorWorkers is -floor-stream-workers.
var floorWorkers int

type floorServer struct {
	authv3.UnimplementedAuthorizationServer
	resp *authv3.CheckResponse
}

func (f floorServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return f.resp, nil
}
