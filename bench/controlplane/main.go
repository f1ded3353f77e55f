// Command controlplane measures the llmedge control plane at scale: the real
// `llmedge controlplane` binary serving the 1,000-route, 5-region benchmark config to N
// simulated Envoys (SotW ADS streams from this process), and for each routes YAML edit the
// time from the write until every client has ACKed the new routes version, plus the control
// plane's CPU time and peak RSS.
//
//	go run ./bench/controlplane -out docs/bench              # 100 and 1,000 clients, 3 runs x 10 edits
//	go run ./bench/controlplane -clients 100 -runs 1 -out ''  # quick look, no JSON written
//	go run ./bench/controlplane -cpuprofile /tmp/cp           # in-process control plane, CPU profile per N
//	go run ./bench/controlplane -memprofile /tmp/cp           # in-process, live heap mid-push per N
//
// How an ACK is detected: on the client side. Each simulated client records the moment it
// hands gRPC the ACK of a routes response whose version differs from the one it ACKed
// before; an edit is complete when all N clients have done so. The figure for the edit is
// the last of those moments minus the moment just before the YAML was written. /status is
// then read once to check that every client ACKed exactly the routes version the control
// plane serves its region and that every region is in_sync with all its nodes.
//
// With -cpuprofile the control plane runs inside this process (controlplane.New/Run, the
// same code the binary runs) and a CPU profile of the edit phase is written per N. Client
// and harness goroutines carry the pprof label role=client or role=harness, so
// `go tool pprof -tagignore role=client -tagignore role=harness` shows the control plane alone.
// CPU seconds and RSS are not reported in that mode, since they would include the clients.
// -memprofile (also in-process) writes <value>-<clients>.heap.pprof: the live heap after a
// forced GC at the moment half the clients have ACKed the last edit, when the push is in
// flight to the other half. It includes the clients' heap; their allocations are under
// the gRPC client and proto.Unmarshal frames.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/controlplane/watch"
	"github.com/llmedge/llmedge/internal/benchconfig"
	"github.com/llmedge/llmedge/internal/stack"
)

type options struct {
	host.Flags
	clients    []int
	edits      int
	perConn    int
	holdoff    time.Duration
	gap        time.Duration
	cpuprofile string
	memprofile string
}

func main() {
	var o options
	var clients string
	o.Register("controlplane.json", "runs per client count, each with a fresh control plane")
	flag.StringVar(&clients, "clients", "100,1000", "simulated ADS clients per scenario, comma-separated")
	flag.IntVar(&o.edits, "edits", 10, "routes YAML edits per run")
	flag.IntVar(&o.perConn, "streams-per-conn", 100, "ADS streams per gRPC ClientConn")
	flag.DurationVar(&o.holdoff, "watch-holdoff", 0, "passed to llmedge controlplane --watch-holdoff (0: its default, as make run runs it)")
	flag.DurationVar(&o.gap, "gap", 500*time.Millisecond, "pause between edits")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "run the control plane in-process and write a CPU profile of the edit phase to <value>-<clients>.pprof")
	flag.StringVar(&o.memprofile, "memprofile", "", "run the control plane in-process and write the live heap mid-push of the last edit to <value>-<clients>.heap.pprof")
	flag.Parse()
	for _, s := range strings.Split(clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fatalf("-clients %q: want positive integers", clients)
		}
		o.clients = append(o.clients, n)
	}
	if err := run(o); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/controlplane: "+format+"\n", args...)
	os.Exit(1)
}

// Report is what controlplane.json holds.
type Report struct {
	host.Header
	Config       string `json:"config"`
	WatchHoldoff string `json:"watch_holdoff"`
	Detection    string `json:"ack_detection"`
	Target       string `json:"target"`
	// Repeated counts runs discarded and repeated because other processes used more than
	// -max-other-load cores during their edits (the VM is shared).
	Repeated  int        `json:"repeated_runs"`
	Scenarios []Scenario `json:"scenarios"`
}

// Scenario is one client count: every run, and the median of each figure over the runs.
type Scenario struct {
	Clients      int   `json:"clients"`
	ClientConns  int   `json:"client_conns"`
	Runs         []Run `json:"runs"`
	Median       Run   `json:"median"`
	TargetP99Ms  int   `json:"target_p99_ms,omitempty"`
	TargetMetP99 *bool `json:"target_met,omitempty"`
}

// Run is one control plane process serving N clients through the edits.
type Run struct {
	// Write to all clients ACKed, nearest-rank percentiles over the run's edits (with 10
	// edits p99 is the maximum).
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	// Write to the first client's ACK.
	FirstAckP50Ms float64 `json:"first_ack_p50_ms"`
	// Write to the control plane's "routes config applied" log line (hold-off + reload).
	AppliedP50Ms float64 `json:"applied_p50_ms"`
	// The reload's own logged duration (load, validate, translate, snapshot update).
	ReloadP50Ms float64 `json:"reload_p50_ms"`
	// Applied to the last client's ACK: the push to every stream and the ACKs.
	FanoutP50Ms float64 `json:"fanout_p50_ms"`
	FanoutP99Ms float64 `json:"fanout_p99_ms"`
	// Connecting all clients until every one has ACKed clusters, listeners and routes.
	InitialSyncMs float64 `json:"initial_sync_ms"`
	// Control plane CPU (user+system, /proc/<pid>/stat) during the initial sync and during
	// the edit phase (edits plus the gaps between them; idle costs ~0).
	CPUInitialSyncS float64 `json:"cp_cpu_initial_sync_s"`
	CPUEditsS       float64 `json:"cp_cpu_edits_s"`
	CPUPerEditS     float64 `json:"cp_cpu_per_edit_s"`
	// Control plane memory at the end of the run: peak RSS (VmHWM) and current RSS.
	PeakRSSMiB float64 `json:"cp_peak_rss_mib"`
	RSSMiB     float64 `json:"cp_rss_mib"`
	// This process (the simulated clients) during the edit phase, for context: it shares
	// the 2 cores with the control plane.
	ClientCPUEditsS float64 `json:"clients_cpu_edits_s"`

	// Other load on the machine during the edit phase: all busy CPU (/proc/stat) minus the
	// control plane's and this process's, in cores. The VM is shared; a run with a large
	// value was disturbed.
	OtherCPUCores float64 `json:"other_cpu_cores"`

	Edits []Edit `json:"edits,omitempty"`
}

// Edit is one edit of a run, in ms from the moment before the write.
type Edit struct {
	AllAckedMs float64 `json:"all_acked_ms"`
	FirstAckMs float64 `json:"first_ack_ms"`
	AppliedMs  float64 `json:"applied_ms"` // the "routes config applied" log line
	ReloadMs   float64 `json:"reload_ms"`  // the reload's own logged duration
}

func run(o options) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	inProcess := o.cpuprofile != "" || o.memprofile != ""
	if !inProcess && o.LLMedge == "" {
		dir, err := os.MkdirTemp("", "llmedge-bench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
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
	rep := newReport(o)
	for _, n := range o.clients {
		sc, err := scenario(ctx, o, &rep, n, inProcess)
		if err != nil {
			return err
		}
		rep.Scenarios = append(rep.Scenarios, sc)
	}
	printTable(os.Stdout, rep)
	if inProcess {
		return nil
	}
	return host.WriteJSON(o.Out, "controlplane.json", rep)
}

func newReport(o options) Report {
	return Report{
		Header:       host.NewHeader("./bench/controlplane"),
		Config:       fmt.Sprintf("%d routes (every 10th bound to one of %d hosts, every 7th matching a header), %d https upstreams, %d regions (%s); each edit renames route 0 (every region serves it)", benchconfig.Routes, benchconfig.Hosts, benchconfig.Upstreams, len(benchconfig.Regions), strings.Join(benchconfig.Regions, ", ")),
		WatchHoldoff: holdoffText(o.holdoff),
		Detection:    "client side: the moment each simulated client hands gRPC its ACK of a routes response with a new version; the edit's figure is the last such moment minus the moment before the write; /status is then checked (served routes version = the version each client ACKed, every region in_sync)",
		Target:       "write-to-all-ACKed p99 <= 200 ms for 100 clients",
	}
}

// scenario runs -runs fresh control planes serving n clients (repeating disturbed runs).
func scenario(ctx context.Context, o options, rep *Report, n int, inProcess bool) (Scenario, error) {
	sc := Scenario{Clients: n, ClientConns: (n + o.perConn - 1) / o.perConn}
	for r := range o.Runs {
		fmt.Fprintf(os.Stderr, "clients=%d run %d/%d\n", n, r+1, o.Runs)
		res, repeated, err := host.Repeat(o.MaxOther, func() (Run, float64, error) {
			res, err := runOnce(ctx, o, n, inProcess)
			return res, res.OtherCPUCores, err
		})
		if err != nil {
			return sc, fmt.Errorf("clients=%d run %d: %w", n, r+1, err)
		}
		rep.Repeated += repeated
		fmt.Fprintf(os.Stderr, "  p50 %.1f ms  p99 %.1f ms  (applied %.1f, reload %.1f, fan-out %.1f)  cp cpu/edit %.3f s  peak rss %.0f MiB  other load %.2f cores\n",
			res.P50Ms, res.P99Ms, res.AppliedP50Ms, res.ReloadP50Ms, res.FanoutP50Ms, res.CPUPerEditS, res.PeakRSSMiB, res.OtherCPUCores)
		sc.Runs = append(sc.Runs, res)
	}
	sc.Median = host.Medians(sc.Runs)
	if n == 100 {
		sc.TargetP99Ms = 200
		met := sc.Median.P99Ms <= 200
		sc.TargetMetP99 = &met
	}
	return sc, nil
}

func holdoffText(d time.Duration) string {
	if d == 0 {
		return "default"
	}
	return d.String()
}

// cpProcess is a running control plane: a child process, or in-process for profiling.
type cpProcess struct {
	pid      int // 0 in-process
	xdsAddr  string
	httpAddr string
	logPath  string
	stop     func()
}

func startControlPlane(ctx context.Context, o options, dir, cfgPath string, inProcess bool) (*cpProcess, error) {
	if !inProcess {
		a, err := host.FreeAddrs(2)
		if err != nil {
			return nil, err
		}
		// make run's settings; the holdoff only if -watch-holdoff asks for another.
		cp := stack.ControlPlane{Config: cfgPath, XDSAddr: a[0], HTTPAddr: a[1], WatchHoldoff: o.holdoff}
		r := &stack.Runner{Paths: stack.Paths{Llmedge: o.LLMedge}, Dir: dir}
		p, err := r.StartControlPlane(ctx, "controlplane", cp)
		if err != nil {
			return nil, err
		}
		if err := p.Await(ctx, stack.LlmedgeStartTimeout, stack.HTTPStatus(cp.StatusURL()+"/readyz", 200)); err != nil {
			p.Stop()
			return nil, err
		}
		return &cpProcess{pid: p.Pid(), xdsAddr: cp.XDSAddr, httpAddr: cp.HTTPAddr, logPath: p.LogPath(), stop: p.Stop}, nil
	}
	logPath := filepath.Join(dir, "controlplane.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	m, err := controlplane.New(controlplane.Options{
		ConfigPath: cfgPath, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
		Watch:  watch.Options{Holdoff: o.holdoff},
		Logger: slog.New(slog.NewJSONHandler(logf, nil)),
	})
	if err != nil {
		logf.Close()
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(cctx)
	}()
	p := &cpProcess{logPath: logPath, stop: func() {
		cancel()
		<-done
		logf.Close()
	}}
	select {
	case <-m.Ready():
	case <-done:
		p.stop()
		return nil, errors.New("control plane exited at start")
	}
	p.xdsAddr, p.httpAddr = m.XDSAddr(), m.HTTPAddr()
	ready := stack.HTTPStatus("http://"+p.httpAddr+"/readyz", 200)
	if err := stack.Poll(ctx, stack.LlmedgeStartTimeout, 20*time.Millisecond, func(ctx context.Context) error {
		select {
		case <-done:
			return stack.Permanent(errors.New("control plane exited at start"))
		default:
			return ready(ctx)
		}
	}); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// runOnce starts a control plane, connects n clients, waits for their initial sync, and
// times -edits edits.
func runOnce(ctx context.Context, o options, n int, inProcess bool) (Run, error) {
	var res Run
	dir, err := os.MkdirTemp("", "llmedge-bench-cp-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(cfgPath, routesYAML(""), 0o644); err != nil {
		return res, err
	}
	// The control plane's goroutines (in-process mode) must not inherit a label: clear
	// the one an earlier run left on this goroutine.
	pprof.SetGoroutineLabels(ctx)
	cp, err := startControlPlane(ctx, o, dir, cfgPath, inProcess)
	if err != nil {
		return res, err
	}
	defer cp.stop()
	pprof.SetGoroutineLabels(pprof.WithLabels(ctx, pprof.Labels("role", "harness")))

	cctx, cancelClients := context.WithCancel(ctx)
	defer cancelClients()
	f, err := initialSync(cctx, o, cp, n, &res)
	if err != nil {
		return res, err
	}
	defer f.wait()
	defer cancelClients()
	time.Sleep(o.gap)
	if o.cpuprofile != "" {
		stop, err := startProfile(fmt.Sprintf("%s-%d.pprof", o.cpuprofile, n))
		if err != nil {
			return res, err
		}
		defer stop()
	}
	mark := host.MarkCPU(cp.pid)
	edits, err := runEdits(o, cp, f, cfgPath, n)
	if err != nil {
		return res, err
	}
	res.CPUEditsS, res.ClientCPUEditsS, res.OtherCPUCores = mark.Since()
	res.OtherCPUCores = host.Round3(res.OtherCPUCores)
	res.CPUPerEditS = res.CPUEditsS / float64(o.edits)
	if cp.pid != 0 {
		hwm, rss := host.RSS(cp.pid)
		res.PeakRSSMiB, res.RSSMiB = host.Round1(hwm), host.Round1(rss)
	} else {
		// In-process, this process's CPU includes the clients': not the control plane's.
		res.CPUInitialSyncS, res.CPUEditsS, res.CPUPerEditS, res.OtherCPUCores = 0, 0, 0, 0
	}
	return res, editFigures(&res, edits, cp.logPath, o.edits)
}

// initialSync connects every client and waits for all to hold the initial config.
func initialSync(ctx context.Context, o options, cp *cpProcess, n int, res *Run) (*fleet, error) {
	mark := host.MarkCPU(cp.pid)
	start := time.Now()
	// The clients' goroutines, and the gRPC goroutines they start, carry role=client.
	var f *fleet
	var err error
	pprof.Do(ctx, pprof.Labels("role", "client"), func(ctx context.Context) {
		f, err = startFleet(ctx, cp.xdsAddr, n, o.perConn)
	})
	if err != nil {
		return nil, err
	}
	for !f.allSynced() {
		if err := f.err(); err != nil {
			return f, err
		}
		if time.Since(start) > 120*time.Second {
			return f, errors.New("clients not synced within 120s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	res.InitialSyncMs = ms(time.Since(start))
	res.CPUInitialSyncS, _, _ = mark.Since()
	if _, err := checkStatus(cp.httpAddr, f); err != nil {
		return f, fmt.Errorf("after the initial sync: %w", err)
	}
	return f, nil
}

func startProfile(path string) (stop func(), err error) {
	pf, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(pf); err != nil {
		pf.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); pf.Close() }, nil
}

func writeHeap(path string) error {
	pf, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(pf); err != nil {
		pf.Close()
		return err
	}
	return pf.Close()
}

// editTimes is one edit: the moment before the write, the first and the last client's ACK.
type editTimes struct{ write, first, last time.Time }

// runEdits renames route 0 -edits times, each time waiting until every client has ACKed
// the new routes version and /status agrees.
func runEdits(o options, cp *cpProcess, f *fleet, cfgPath string, n int) ([]editTimes, error) {
	var out []editTimes
	for k := 1; k <= o.edits; k++ {
		doc := routesYAML(fmt.Sprintf("r0000-e%d", k))
		base := f.routeChanges.Load()
		t0 := time.Now()
		if err := host.ReplaceFile(cfgPath, doc); err != nil {
			return nil, err
		}
		if k == o.edits && o.memprofile != "" {
			if err := waitAtLeast(f, base+int64(n/2), 60*time.Second); err != nil {
				return nil, fmt.Errorf("edit %d: %w", k, err)
			}
			if err := writeHeap(fmt.Sprintf("%s-%d.heap.pprof", o.memprofile, n)); err != nil {
				return nil, err
			}
		}
		if err := waitAcks(f, base+int64(n), 60*time.Second); err != nil {
			return nil, fmt.Errorf("edit %d: %w", k, err)
		}
		e := editTimes{write: t0}
		for i, c := range f.clients {
			at := time.Unix(0, c.routesAckAt.Load())
			if i == 0 || at.Before(e.first) {
				e.first = at
			}
			if at.After(e.last) {
				e.last = at
			}
		}
		if e.first.Before(t0) {
			return nil, fmt.Errorf("edit %d: a client ACKed before the write", k)
		}
		out = append(out, e)
		if _, err := checkStatus(cp.httpAddr, f); err != nil {
			return nil, fmt.Errorf("edit %d: %w", k, err)
		}
		time.Sleep(o.gap)
	}
	return out, nil
}

// waitAcks waits until the fleet has counted want routes-version changes in all.
func waitAcks(f *fleet, want int64, timeout time.Duration) error {
	if err := waitAtLeast(f, want, timeout); err != nil {
		return err
	}
	if got := f.routeChanges.Load(); got != want {
		return fmt.Errorf("%d more routes versions ACKed than clients", got-want)
	}
	return nil
}

// waitAtLeast waits until the fleet has counted at least want routes-version changes.
func waitAtLeast(f *fleet, want int64, timeout time.Duration) error {
	deadline := time.After(timeout)
	for f.routeChanges.Load() < want {
		select {
		case <-f.poke:
		case <-deadline:
			return fmt.Errorf("%d clients short of ACKing new routes within %v", want-f.routeChanges.Load(), timeout)
		}
		if err := f.err(); err != nil {
			return err
		}
	}
	return nil
}

// editFigures fills res's per-edit and percentile figures from the edit times and the
// control plane's "routes config applied" log lines (the first is the initial load).
func editFigures(res *Run, edits []editTimes, logPath string, n int) error {
	applied, reloads, err := appliedLog(logPath, 1+n)
	if err != nil {
		return err
	}
	var took, first, appliedD, fanout []time.Duration
	for k, e := range edits {
		at := applied[k+1]
		took = append(took, e.last.Sub(e.write))
		first = append(first, e.first.Sub(e.write))
		appliedD = append(appliedD, at.Sub(e.write))
		fanout = append(fanout, e.last.Sub(at))
		res.Edits = append(res.Edits, Edit{
			AllAckedMs: ms(took[k]), FirstAckMs: ms(first[k]), AppliedMs: ms(appliedD[k]), ReloadMs: ms(reloads[k+1]),
		})
	}
	res.P50Ms, res.P90Ms, res.P99Ms = pct(took, 0.5), pct(took, 0.9), pct(took, 0.99)
	res.FirstAckP50Ms = pct(first, 0.5)
	res.AppliedP50Ms = pct(appliedD, 0.5)
	res.ReloadP50Ms = pct(reloads[1:], 0.5)
	res.FanoutP50Ms, res.FanoutP99Ms = pct(fanout, 0.5), pct(fanout, 0.99)
	return nil
}

// pct is the nearest-rank percentile in milliseconds, rounded to 0.1.
func pct(ds []time.Duration, q float64) float64 { return ms(host.Pct(ds, q)) }

func ms(d time.Duration) float64 { return host.Round1(host.Ms(d)) }

// checkStatus polls /status (every 5 ms, for up to 5 s: a client's ACK is on the wire
// before the control plane has read it) until the config is valid, every region has its
// clients, all in sync, and each client's last ACKed routes version is the one served to
// its region.
func checkStatus(httpAddr string, f *fleet) (*controlplane.Status, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := readStatus(httpAddr, f)
		if err == nil || time.Now().After(deadline) {
			return st, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readStatus(httpAddr string, f *fleet) (*controlplane.Status, error) {
	resp, err := http.Get("http://" + httpAddr + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st controlplane.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("/status: %w", err)
	}
	if !st.Config.Valid {
		return nil, errors.New("/status: config not valid")
	}
	want := map[string]int{}
	for _, c := range f.clients {
		want[c.region]++
	}
	served := map[string]string{}
	for _, r := range st.Regions {
		served[r.Name] = r.Versions["routes"]
		if len(r.Nodes) != want[r.Name] {
			return nil, fmt.Errorf("/status: region %s has %d nodes, want %d", r.Name, len(r.Nodes), want[r.Name])
		}
		if !r.InSync {
			return nil, fmt.Errorf("/status: region %s not in_sync", r.Name)
		}
	}
	for _, c := range f.clients {
		if v := *c.routesVersion.Load(); v != served[c.region] {
			return nil, fmt.Errorf("/status: client %s ACKed routes %s, region %s serves %s", c.node.Id, v, c.region, served[c.region])
		}
	}
	return &st, nil
}

// appliedLog waits for want "routes config applied" lines in the control plane's JSON log
// and returns when each was logged and the reload time it reports.
func appliedLog(path string, want int) ([]time.Time, []time.Duration, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, err
		}
		at, took, err := benchconfig.AppliedReloads(string(b))
		if err != nil || len(at) == want {
			return at, took, err
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("control plane logged %d applied reloads, want %d", len(at), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func printTable(w io.Writer, rep Report) {
	fmt.Fprintf(w, "\nwrite-to-all-ACKed, %s, --watch-holdoff %s (medians over runs; ms)\n", rep.Config, rep.WatchHoldoff)
	fmt.Fprintf(w, "%8s %6s %8s %8s %8s %9s %9s %8s %9s %9s %10s %10s %9s %9s %6s\n",
		"clients", "runs", "p50", "p90", "p99", "first-p50", "applied", "reload", "fanout50", "fanout99", "sync-ms", "cpu/edit-s", "cpu-sync", "hwm-MiB", "other")
	for _, sc := range rep.Scenarios {
		m := sc.Median
		fmt.Fprintf(w, "%8d %6d %8.1f %8.1f %8.1f %9.1f %9.1f %8.1f %9.1f %9.1f %10.1f %10.3f %9.3f %9.1f %6.2f\n",
			sc.Clients, len(sc.Runs), m.P50Ms, m.P90Ms, m.P99Ms, m.FirstAckP50Ms, m.AppliedP50Ms, m.ReloadP50Ms, m.FanoutP50Ms, m.FanoutP99Ms,
			m.InitialSyncMs, m.CPUPerEditS, m.CPUInitialSyncS, m.PeakRSSMiB, m.OtherCPUCores)
	}
}
