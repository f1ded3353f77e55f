// Command hop measures what one side call costs a request through the real Envoy 1.40, by
// the transport Envoy uses for it, with nothing else on the path: Envoy with only its
// router in front of the fake upstream, then the same Envoy with an ext_authz filter whose
// server answers every check at once, over gRPC (as the edge calls extauthz) and over
// plain HTTP. The two servers are this program (-serve), each its own process on a unix
// socket, so their CPU is counted apart from Envoy's. Last, the same answer given inside
// Envoy by a Go dynamic module (bench/hop/module, built here with -buildmode=c-shared):
// on Envoy's worker, and handed to a goroutine and back through Envoy's scheduler.
//
//	go run ./bench/hop -out docs/bench            # writes hop.json and hop.md
//	go run ./bench/hop -rounds 2 -n 500 -dur 3s -out ''
//
// It measures, alternating the listeners within each round so drift hits all alike:
//   - latency at concurrency 1: -n sequential requests per listener and round, after a
//     warm-up; the median over rounds of each round's p50 and p99;
//   - CPU per request: an open loop at -rate for -dur per listener, utime+stime of Envoy
//     and of the check server from /proc before and after.
//
// Nothing is pinned: processes run where the kernel puts them, as `make run`'s do.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/stack"
)

type options struct {
	out, envoy, fakellm string
	rounds, n, warmup   int
	rate                int
	dur                 time.Duration
	keep                bool
}

// listener is one way through Envoy.
type listener struct {
	Name  string `json:"name"`
	Label string `json:"label"`
	port  int
	proc  string // the check server's process name, "" for none
	// module is the dynamic module's mode ("sync" or "async"), "" for none.
	module string
}

// refuses reports whether the way through checks the caller's token.
func (l listener) refuses() bool { return l.proc != "" || l.module != "" }

type result struct {
	host.Header
	Rounds    int                     `json:"rounds"`
	N         int                     `json:"n_per_round"`
	Rate      int                     `json:"rate"`
	DurS      float64                 `json:"duration_s"`
	Direct    latency                 `json:"direct"`
	Listeners []listenerResult        `json:"listeners"`
	OtherCPU  float64                 `json:"other_cpu_cores"`
	PerRound  map[string][][2]float64 `json:"per_round_p50_p99_us"`
}

type latency struct {
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
}

type listenerResult struct {
	listener
	latency
	AddedP50us  float64 `json:"added_p50_us"`
	AddedP99us  float64 `json:"added_p99_us"`
	EnvoyCPUus  float64 `json:"envoy_cpu_us_per_request"`
	ServerCPUus float64 `json:"server_cpu_us_per_request"`
	OK          int     `json:"ok"`
	Requests    int     `json:"requests"`
	LoadP99ms   float64 `json:"load_p99_ms"`
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "-serve" {
		if err := serve(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "hop:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.StringVar(&o.out, "out", "docs/bench", "directory for hop.json and hop.md ('' writes nothing)")
	flag.StringVar(&o.envoy, "envoy", "", "Envoy binary (default: the one `make tools` installed)")
	flag.StringVar(&o.fakellm, "fakellm", "bin/fakellm", "the fake LLM upstream")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds of the concurrency-1 measurement")
	flag.IntVar(&o.n, "n", 2000, "sequential requests per listener and round")
	flag.IntVar(&o.warmup, "warmup", 200, "unmeasured requests before each sequential block")
	flag.IntVar(&o.rate, "rate", 1000, "requests per second of the CPU measurement")
	flag.DurationVar(&o.dur, "dur", 10*time.Second, "duration of the CPU measurement per listener")
	flag.BoolVar(&o.keep, "keep", false, "keep the run directory (Envoy config and logs)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "hop:", err)
		os.Exit(1)
	}
}

// serve answers every check at once: gRPC with extauthz's allowed response shape, HTTP
// with a 200 carrying the key header.
func serve(kind, sock string) error {
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	switch kind {
	case "grpc", "grpc-windows":
		return serveGRPC(ln, kind == "grpc-windows")
	case "http":
		return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("authorization") != "Bearer "+callerToken {
				w.WriteHeader(http.StatusForbidden)
				return
			}
			w.Header().Set(keyHeader, "Bearer "+benchKey)
			w.WriteHeader(http.StatusOK)
		}))
	}
	return fmt.Errorf("unknown server %q", kind)
}

// rig is the running measurement setup: the fake, the check servers and Envoy, each a
// stack.Process with its log in dir.
type rig struct {
	procs   []*stack.Process
	envoy   *stack.Process
	servers map[string]*stack.Process
	ls      []listener
	urls    map[string]string // "direct" and each listener's name
}

func (r *rig) stop() {
	for _, p := range r.procs {
		p.Stop()
	}
}

// startRig starts everything in dir and waits until every way through answers 200. self
// is a binary that serves checks when run as `self -serve KIND SOCKET`. On error, what
// started is stopped.
func startRig(ctx context.Context, dir, envoyBin, fakellm, self string) (_ *rig, err error) {
	run := &stack.Runner{Paths: stack.Paths{Envoy: envoyBin, Fakellm: fakellm}, Dir: dir}
	r := &rig{servers: map[string]*stack.Process{}, urls: map[string]string{}}
	defer func() {
		if err != nil {
			r.stop()
		}
	}()
	start := func(name string, c stack.Cmd) (*stack.Process, error) {
		p, err := run.Start(name, c)
		if err == nil {
			r.procs = append(r.procs, p)
		}
		return p, err
	}
	ports, err := freePorts(8)
	if err != nil {
		return nil, err
	}
	fakePort, admin := ports[0], ports[1]
	r.ls = []listener{
		{Name: "router", Label: "Envoy, router only", port: ports[2]},
		{Name: "ext_authz_grpc", Label: "Envoy + ext_authz over gRPC (answers at once)", port: ports[3], proc: "grpc"},
		{Name: "ext_authz_grpc_windows", Label: "… gRPC, server set up as extauthz's (fixed windows: no BDP pings)", port: ports[4], proc: "grpc-windows"},
		{Name: "ext_authz_http", Label: "Envoy + ext_authz over HTTP (answers at once)", port: ports[5], proc: "http"},
		{Name: "module_sync", Label: "Envoy + Go dynamic module, on the worker (answers at once)", port: ports[6], module: "sync"},
		{Name: "module_async", Label: "… module, answer from a goroutine through Envoy's scheduler", port: ports[7], module: "async"},
	}
	if err := buildModule(ctx, dir); err != nil {
		return nil, err
	}
	fake, err := run.StartFakellm(ctx, "fakellm", stack.Fakellm{Addr: fmt.Sprintf("127.0.0.1:%d", fakePort), Extra: []string{"--log-level", "warn"}})
	if err != nil {
		return nil, err
	}
	r.procs = append(r.procs, fake)
	for _, k := range []string{"grpc", "grpc-windows", "http"} {
		p, err := start("server-"+k, stack.Cmd{Path: self, Args: []string{"-serve", k, filepath.Join(dir, k+".sock")}, Env: stack.BaseEnv()})
		if err != nil {
			return nil, err
		}
		r.servers[k] = p
	}
	cfg, err := envoyConfig(dir, fakePort, admin, r.ls)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	envoyEnv := append(stack.BaseEnv(), "ENVOY_DYNAMIC_MODULES_SEARCH_PATH="+dir)
	if r.envoy, err = start("envoy", stack.Cmd{Path: envoyBin, Args: []string{"-c", cfgPath, "--concurrency", "2", "-l", "warn", "--base-id", fmt.Sprint(admin)}, Env: envoyEnv}); err != nil {
		return nil, err
	}
	r.urls["direct"] = fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", fakePort)
	for _, l := range r.ls {
		r.urls[l.Name] = fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", l.port)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	if err := waitReady(c, r.urls, 30*time.Second); err != nil {
		return nil, fmt.Errorf("%w (logs in %s)", err, dir)
	}
	return r, nil
}

// moduleName is the dynamic module's name: Envoy loads lib<name>.so from
// ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
const moduleName = "llmedge_hop"

// buildModule builds bench/hop/module (its own Go module, so that `go build ./...` of the
// project needs no C toolchain) as a shared library into dir.
func buildModule(ctx context.Context, dir string) error {
	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-buildmode=c-shared", "-o", filepath.Join(dir, "lib"+moduleName+".so"), ".")
	cmd.Dir = filepath.Join(root, "bench", "hop", "module")
	// Its own module: a GOFLAGS or go.work of the caller's must not reach in.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the dynamic module: %w\n%s", err, out)
	}
	return nil
}

func run(o options) error {
	if o.envoy == "" {
		p, err := stack.ToolPath("envoy")
		if err != nil {
			return err
		}
		o.envoy = p
	}
	dir, err := os.MkdirTemp("", "llmedge-hop-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	} else {
		fmt.Fprintln(os.Stderr, "run directory:", dir)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rg, err := startRig(context.Background(), dir, o.envoy, o.fakellm, self)
	if err != nil {
		return err
	}
	defer rg.stop()
	ls, urls, procs, envoy, servers := rg.ls, rg.urls, rg.procs, rg.envoy, rg.servers
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 5 * time.Second}

	res := result{Header: host.NewHeader("bench/hop"), Rounds: o.rounds, N: o.n, Rate: o.rate, DurS: o.dur.Seconds(),
		PerRound: map[string][][2]float64{}}
	names := append([]string{"direct"}, func() (n []string) {
		for _, l := range ls {
			n = append(n, l.Name)
		}
		return n
	}()...)
	childCPU := func() (sum float64) {
		for _, p := range procs {
			sum += host.ProcCPU(p.Pid())
		}
		return sum
	}
	busy0, self0, children0 := host.SysBusy(), host.SelfCPU(), childCPU()
	t0 := time.Now()
	for r := range o.rounds {
		for i := range names {
			name := names[(i+r)%len(names)] // rotate the order so no listener always goes first
			lat, err := sequential(client, urls[name], o.n, o.warmup)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			res.PerRound[name] = append(res.PerRound[name], [2]float64{host.Us(host.Pct(lat, 0.50)), host.Us(host.Pct(lat, 0.99))})
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done\n", r+1, o.rounds)
	}
	med := func(name string) latency {
		var p50, p99 []float64
		for _, v := range res.PerRound[name] {
			p50, p99 = append(p50, v[0]), append(p99, v[1])
		}
		return latency{P50us: host.Round1(host.Median(p50)), P99us: host.Round1(host.Median(p99))}
	}
	res.Direct = med("direct")
	for _, l := range ls {
		lr := listenerResult{listener: l, latency: med(l.Name)}
		lr.AddedP50us = host.Round1(lr.P50us - res.Direct.P50us)
		lr.AddedP99us = host.Round1(lr.P99us - res.Direct.P99us)
		pids := []int{envoy.Pid()} // a module's work is Envoy's
		if l.proc != "" {
			pids = append(pids, servers[l.proc].Pid())
		}
		before := cpuOf(pids)
		ok, total, p99 := openLoop(urls[l.Name], o.rate, o.dur)
		after := cpuOf(pids)
		lr.OK, lr.Requests, lr.LoadP99ms = ok, total, host.Round3(host.Ms(p99))
		if total > 0 {
			lr.EnvoyCPUus = host.Round1((after[0] - before[0]) * 1e6 / float64(total))
			if l.proc != "" {
				lr.ServerCPUus = host.Round1((after[1] - before[1]) * 1e6 / float64(total))
			}
		}
		res.Listeners = append(res.Listeners, lr)
	}
	// Other processes' CPU over the run: all busy CPU minus this program's and its children's.
	elapsed := time.Since(t0).Seconds()
	res.OtherCPU = host.Round3(max(0, host.SysBusy()-busy0-(host.SelfCPU()-self0)-(childCPU()-children0)) / elapsed)

	fmt.Print(report(res))
	if o.out == "" {
		return nil
	}
	if err := host.WriteJSON(o.out, "hop.json", res); err != nil {
		return err
	}
	return host.ReplaceFile(filepath.Join(o.out, "hop.md"), []byte(report(res)))
}

func cpuOf(pids []int) []float64 {
	out := make([]float64, len(pids))
	for i, p := range pids {
		out[i] = host.ProcCPU(p)
	}
	return out
}

const chatBody = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`

func newRequest(url string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(chatBody))
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Bearer "+callerToken)
	return req
}

func sequential(c *http.Client, url string, n, warmup int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	for i := range n + warmup {
		t := time.Now()
		resp, err := c.Do(newRequest(url))
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		if i >= warmup {
			lat = append(lat, time.Since(t))
		}
	}
	slices.Sort(lat)
	return lat, nil
}

func openLoop(url string, rate int, dur time.Duration) (ok, total int, p99 time.Duration) {
	tg := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodPost, URL: url, Body: []byte(chatBody),
		Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + callerToken}}})
	atk := vegeta.NewAttacker(vegeta.KeepAlive(true), vegeta.Timeout(5*time.Second))
	var m vegeta.Metrics
	for r := range atk.Attack(tg, vegeta.Rate{Freq: rate, Per: time.Second}, dur, "hop") {
		m.Add(r)
	}
	m.Close()
	return m.StatusCodes["200"], int(m.Requests), m.Latencies.P99
}

func waitReady(c *http.Client, urls map[string]string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for name, u := range urls {
		for {
			resp, err := c.Do(newRequest(u))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s never answered 200: %w", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func freePorts(n int) ([]int, error) {
	out := make([]int, 0, n)
	for range n {
		p, err := stack.FreePort()
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// envoyConfig is a static bootstrap: one listener per way through, all routing to the
// fake; the ext_authz ones call their server on its unix socket and put the answered key
// header on the upstream request, as the edge does.
func envoyConfig(dir string, fakePort, admin int, ls []listener) ([]byte, error) {
	router := map[string]any{"name": "envoy.filters.http.router", "typed_config": map[string]any{
		"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
	var listeners []any
	for _, l := range ls {
		filters := []any{}
		if l.module != "" {
			cfg, err := json.Marshal(map[string]string{"mode": l.module, "authorization": "Bearer " + callerToken, "key_header": keyHeader, "key": "Bearer " + benchKey})
			if err != nil {
				return nil, err
			}
			filters = append(filters, map[string]any{"name": "envoy.filters.http.dynamic_modules", "typed_config": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
				// A Go shared library cannot be unloaded.
				"dynamic_module_config": map[string]any{"name": moduleName, "do_not_close": true},
				"filter_name":           "hop",
				"filter_config":         map[string]any{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": string(cfg)},
			}})
		}
		switch l.proc {
		case "grpc", "grpc-windows":
			filters = append(filters, map[string]any{"name": "envoy.filters.http.ext_authz", "typed_config": map[string]any{
				"@type":                 "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
				"transport_api_version": "V3",
				"grpc_service":          map[string]any{"envoy_grpc": map[string]any{"cluster_name": "check_" + l.proc}, "timeout": "1s"},
			}})
		case "http":
			filters = append(filters, map[string]any{"name": "envoy.filters.http.ext_authz", "typed_config": map[string]any{
				"@type":                 "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
				"transport_api_version": "V3",
				"http_service": map[string]any{
					"server_uri":             map[string]any{"uri": "http://check", "cluster": "check_http", "timeout": "1s"},
					"authorization_response": map[string]any{"allowed_upstream_headers": map[string]any{"patterns": []any{map[string]any{"exact": keyHeader}}}},
				},
			}})
		}
		filters = append(filters, router)
		listeners = append(listeners, map[string]any{
			"name":    l.Name,
			"address": map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": l.port}},
			"filter_chains": []any{map[string]any{"filters": []any{map[string]any{
				"name": "envoy.filters.network.http_connection_manager",
				"typed_config": map[string]any{
					"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
					"stat_prefix": l.Name,
					"route_config": map[string]any{"virtual_hosts": []any{map[string]any{"name": "all", "domains": []any{"*"},
						"routes": []any{map[string]any{"match": map[string]any{"prefix": "/"}, "route": map[string]any{"cluster": "fake"}}}}}},
					"http_filters": filters,
				},
			}}}},
		})
	}
	pipe := func(name, sock string, h2 bool) map[string]any {
		c := map[string]any{"name": name, "type": "STATIC", "connect_timeout": "1s",
			"load_assignment": map[string]any{"cluster_name": name, "endpoints": []any{map[string]any{"lb_endpoints": []any{
				map[string]any{"endpoint": map[string]any{"address": map[string]any{"pipe": map[string]any{"path": sock}}}}}}}}}
		if h2 {
			c["typed_extension_protocol_options"] = map[string]any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": map[string]any{"http2_protocol_options": map[string]any{}}}}
		}
		return c
	}
	clusters := []any{
		pipe("check_grpc", filepath.Join(dir, "grpc.sock"), true),
		pipe("check_grpc-windows", filepath.Join(dir, "grpc-windows.sock"), true),
		pipe("check_http", filepath.Join(dir, "http.sock"), false),
		map[string]any{"name": "fake", "type": "STATIC", "connect_timeout": "1s",
			"load_assignment": map[string]any{"cluster_name": "fake", "endpoints": []any{map[string]any{"lb_endpoints": []any{
				map[string]any{"endpoint": map[string]any{"address": map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": fakePort}}}}}}}}},
	}
	return json.MarshalIndent(map[string]any{
		"admin":            map[string]any{"address": map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": admin}}},
		"static_resources": map[string]any{"listeners": listeners, "clusters": clusters},
	}, "", " ")
}
