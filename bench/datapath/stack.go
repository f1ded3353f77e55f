package main

// This file is the benchmark's one seam to the processes under test; internal/stack
// starts them all. The rest of the program uses only:
//   - newRunner and findPaths: tools, binaries and the CPU placement;
//   - startRig(ctx, r, edgeOnly): starts every component (or make run's edge alone);
//   - rig.variants[vDirect, vBare, vAuthz, vRateLimit, vFull, vFullPipe, vNoUsage]: URL, headers,
//     the processes on the data path (for CPU and RSS accounting) and the Envoy admin URL
//     (read with envoyCounters and envoyOverflows);
//   - rig.fakeAddr for the peer gateways.
//
// The full edge (vFull) is a stack.Edge, which is what `make run` runs: the same
// components with the same settings and Envoy worker count. Every other variant is the
// stack's settings plus a difference named here: runner.override changes commands (one
// ratelimit setting, the fake's pacing, the CPUs), startOwn runs a region on a routes YAML
// of its own (without limits; without usage recording), startStatics runs Envoys on static
// bootstraps.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/token"
)

// CPU placement on the 2-core machine (-pin): the load generator (this program), the fake
// upstream and the control planes share CPU 0 ("the world"); every process of the edge
// under test (Envoy, extauthz, ratelimit, Redis) and each peer gateway get CPU 1. So the
// figures are what one core of edge does, and the load generator never competes with the
// proxy it measures.
const (
	cpuWorld = "0"
	cpuEdge  = "1"
)

// callerName is the benchmark's caller; its limit is generous enough never to refuse.
const (
	callerName  = "bench"
	callerLimit = 1_000_000_000 // requests per minute
)

// admissionCeiling is make run's regions.<name>.overload.max_requests_per_second
// (examples/routes.yaml; stack_test.go keeps the two equal); -overload-ceiling changes it.
const admissionCeiling = 2000

// The variants startRig returns. Each Envoy process is called envoy-<variant>.
const (
	vDirect    = "direct"    // the fake upstream itself
	vBare      = "bare"      // static Envoy, no side calls
	vAuthz     = "authz"     // llmedge Envoy + ext_authz (a region without limits)
	vRateLimit = "ratelimit" // static Envoy, rate limit + router
	vFull      = "full"      // make run's edge: Envoy + ext_authz + rate limit
	vFullPipe  = "fullpipe"  // the same with Redis pipelining in ratelimit
	vNoUsage   = "nousage"   // the full edge with usage.enabled: false
	vProcess   = "process"   // the full edge with extauthz as a process (LLMEDGE_AUTHZ=process make run)
)

// runner starts every process of the benchmark and keeps them for CPU and RSS accounting.
type runner struct {
	stack.Runner
	pin  bool
	pipe []string // ratelimit environment of the fullpipe variant
	// ceiling is the llmedge regions' overload.max_requests_per_second (0: none).
	ceiling int
	all     []*proc
}

func newRunner(dir string, paths stack.Paths, pin bool, pipeWindow string, pipeLimit int) *runner {
	r := &runner{
		Runner: stack.Runner{Paths: paths, Dir: dir, LogDir: filepath.Join(dir, "logs")},
		pin:    pin,
		pipe:   []string{"REDIS_PIPELINE_WINDOW=" + pipeWindow, "REDIS_PIPELINE_LIMIT=" + strconv.Itoa(pipeLimit)},
	}
	r.Override = r.override
	return r
}

// override is everything the benchmark changes on top of the stack's settings, by
// process name.
func (r *runner) override(name string, c stack.Cmd) (stack.Cmd, error) {
	switch name {
	case "ratelimit-" + vFullPipe: // the variant's point: Redis implicit pipelining
		c = c.WithEnv(r.pipe...)
	case "fakellm": // no pause between chunks unless a request asks; no log line per request
		c = c.WithArgs("--chunk-interval", "0", "--log-level", "warn")
	}
	if !r.pin {
		return c, nil
	}
	cpu := cpuEdge
	if name == "fakellm" || strings.HasPrefix(name, "controlplane") {
		cpu = cpuWorld
	}
	return c.OnCPUs(cpu)
}

// findPaths finds Envoy, ratelimit and Redis and builds llmedge and fakellm into dir.
func findPaths(ctx context.Context, root, dir string) (stack.Paths, error) {
	var p stack.Paths
	if err := p.FindTools(); err != nil {
		return p, err
	}
	logf("building llmedge and fakellm")
	return p, p.BuildBinaries(ctx, root, dir)
}

// variant is one way for a request to reach the fake upstream.
type variant struct {
	url     string            // chat completions URL
	headers map[string]string // the credential it needs
	procs   []*proc           // the processes on its path, Envoy first, the fake last
	admin   string            // Envoy admin URL ("": no Envoy)
}

// rig is the running processes; variants is what the measurements use.
type rig struct {
	r        *runner
	keys     string
	token    string // the caller's llmedge token
	fakeAddr string
	redis    string // the full edge's Redis, shared by every ratelimit
	variants map[string]variant
	named    map[string]*proc
}

// startRig starts make run's edge for the full variants (its fake upstream serves every
// variant), then the ext_authz-only region with its own control plane, then the static
// Envoys; edgeOnly starts make run's edge alone.
func startRig(ctx context.Context, r *runner, edgeOnly bool) (*rig, error) {
	s := &rig{r: r, variants: map[string]variant{}, named: map[string]*proc{}}
	if err := s.writeKeys(); err != nil {
		return nil, err
	}
	logf("starting make run's edge (regions %s, %s; extauthz inside Envoy: %v), the ext_authz-only region, the region without usage recording, the region with extauthz as a process and 2 static Envoys", vFull, vFullPipe, stack.DefaultAuthzInEnvoy)
	steps := []func(context.Context) error{
		s.startEdge,
		func(ctx context.Context) error { return s.startOwn(ctx, ownRegion{name: vAuthz}) },
		func(ctx context.Context) error {
			return s.startOwn(ctx, ownRegion{name: vNoUsage, limit: callerLimit, noUsage: true, state: true, inEnvoy: stack.DefaultAuthzInEnvoy})
		},
		func(ctx context.Context) error {
			return s.startOwn(ctx, ownRegion{name: vProcess, limit: callerLimit, state: true, inEnvoy: false})
		},
		s.startStatics,
	}
	if edgeOnly {
		steps = steps[:1]
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// adopt records a started process.
func (s *rig) adopt(p *stack.Process) *proc {
	pr := &proc{p}
	s.r.all = append(s.r.all, pr)
	s.named[p.Name] = pr
	return pr
}

// variant records a variant served by the Envoy called envoy-<name> on listen, with the
// processes besides Envoy and the fake on its path.
func (s *rig) variant(name, listen, admin string, headers map[string]string, others ...string) {
	v := variant{url: "http://" + listen + "/openai/v1/chat/completions", headers: headers, admin: admin}
	for _, n := range append(append([]string{"envoy-" + name}, others...), "fakellm") {
		v.procs = append(v.procs, s.named[n])
	}
	s.variants[name] = v
}

// writeKeys writes the key extauthz injects for the upstream (the fake accepts any) and
// makes the caller's token.
func (s *rig) writeKeys() error {
	s.keys = filepath.Join(s.r.Dir, "keys")
	if err := os.MkdirAll(filepath.Join(s.keys, "fake"), 0o700); err != nil {
		return err
	}
	var err error
	if s.token, err = token.New(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.keys, "fake", "key-1"), []byte("sk-bench-fake-key\n"), 0o600)
}

func (s *rig) callerHeaders() map[string]string {
	return map[string]string{"authorization": "Bearer " + s.token}
}

func fakeHeaders() map[string]string {
	return map[string]string{"authorization": "Bearer sk-bench-fake-key"}
}

// startEdge starts a stack.Edge, as make run does, for the regions full and fullpipe
// (one control plane, limits for the caller).
func (s *rig) startEdge(ctx context.Context) error {
	regions := []string{vFull, vFullPipe}
	ports := map[stack.PortKey]int{}
	for _, k := range stack.PortKeys(regions) {
		p, err := stack.FreePort()
		if err != nil {
			return err
		}
		ports[k] = p
	}
	at := func(component, region, role string) string {
		return stack.Loopback(ports[stack.PortKey{Component: component, Region: region, Role: role}])
	}
	s.fakeAddr = at("fakellm", "", stack.RoleHTTP)
	// The internal hops on unix sockets, as make run has them.
	socks, err := stack.MakeSockets(s.r.Dir, regions)
	if err != nil {
		return err
	}
	var rs []region
	for _, name := range regions {
		rs = append(rs, region{name: name, listen: at("envoy", name, stack.RoleEdge),
			authz: stack.Unix(socks.ExtAuthz(name)), ratelimit: stack.Unix(socks.Ratelimit(name)), inEnvoy: stack.DefaultAuthzInEnvoy})
	}
	s.redis = stack.Unix(socks.Redis())
	routes, err := s.writeRoutes("routes-full.yaml", callerLimit, false, rs...)
	if err != nil {
		return err
	}
	edge := &stack.Edge{Runner: s.r.Runner, Regions: regions, Ports: ports, Routes: routes, KeysDir: s.keys,
		Sockets: socks, EnvoyConcurrency: stack.LocalEnvoyConcurrency, AuthzInEnvoy: stack.DefaultAuthzInEnvoy}
	err = edge.Start(ctx)
	for _, p := range edge.Processes() {
		s.adopt(p)
	}
	if err != nil {
		return err
	}
	s.variants[vDirect] = variant{url: "http://" + s.fakeAddr + "/v1/chat/completions", headers: fakeHeaders(),
		procs: []*proc{s.named["fakellm"]}}
	for _, r := range rs {
		others := []string{stack.ProcessName("ratelimit", r.name), "redis"}
		if !r.inEnvoy { // inside Envoy, its work is Envoy's: no process of its own
			others = append(others, stack.ProcessName("extauthz", r.name))
		}
		s.variant(r.name, r.listen, "http://"+at("envoy", r.name, stack.RoleAdmin), s.callerHeaders(), others...)
	}
	return nil
}

// ownRegion is a region served by a control plane of its own, on a routes YAML that
// differs from make run's in what the region is for.
type ownRegion struct {
	name    string
	limit   int  // the caller's requests a minute; 0: no limits, so no ratelimit
	noUsage bool // usage.enabled: false
	state   bool // --state-dir for the control plane and extauthz, as make run gives them
	inEnvoy bool // extauthz inside the region's Envoy (make run's default; false: LLMEDGE_AUTHZ=process)
}

// startOwn starts a region's control plane, extauthz, ratelimit (with limits; on the full
// edge's Redis) and Envoy, each with the settings the edge uses. The ext_authz-only region
// needs its own control plane because one that serves limits requires a ratelimit address
// in every region; the region without usage recording because usage.enabled is global.
func (s *rig) startOwn(ctx context.Context, o ownRegion) error {
	a, err := host.FreeAddrs(3)
	if err != nil {
		return err
	}
	dir := filepath.Join(s.r.Dir, o.name)
	socks, err := stack.MakeSockets(dir, []string{o.name})
	if err != nil {
		return err
	}
	rg := region{name: o.name, listen: a[0], authz: stack.Unix(socks.ExtAuthz(o.name)), inEnvoy: o.inEnvoy}
	if o.limit > 0 {
		rg.ratelimit = stack.Unix(socks.Ratelimit(o.name))
	}
	routes, err := s.writeRoutes("routes-"+o.name+".yaml", o.limit, o.noUsage, rg)
	if err != nil {
		return err
	}
	stateDir := func(p string) string {
		if !o.state {
			return ""
		}
		return filepath.Join(dir, "state", p)
	}
	// Niced as make run's (stack.Edge): the variants differ from the full edge only where
	// their names say.
	cp := stack.ControlPlane{Config: routes, XDSAddr: stack.Unix(socks.XDS()), HTTPAddr: a[1], StateDir: stateDir("controlplane"),
		CPUNice: stack.LocalControlPlaneNice}
	p, err := s.r.StartControlPlane(ctx, "controlplane-"+o.name, cp)
	if err != nil {
		return err
	}
	s.adopt(p)
	if err := p.Await(ctx, stack.LlmedgeStartTimeout, stack.HTTPStatus(cp.StatusURL()+"/readyz", 200)); err != nil {
		return err
	}
	authzName := stack.ProcessName("extauthz", o.name)
	ea := stack.ExtAuthz{Region: o.name, XDSAddr: cp.XDSAddr, GRPCAddr: rg.authz, HTTPAddr: a[2], KeysDir: s.keys, StateDir: stateDir(authzName)}
	if o.limit > 0 { // quotas are checked in extauthz, against the full edge's Redis, as make run does
		ea.RedisAddr = s.redis
	}
	var others []string
	envoy := stack.Envoy{Region: o.name, XDSAddr: cp.XDSAddr}
	if o.inEnvoy { // its work is Envoy's: no process of its own
		envoy.Env = ea.EnvoyEnv(filepath.Dir(s.r.Paths.Module))
	} else {
		eap, err := s.r.StartExtAuthz(ctx, authzName, ea)
		if err != nil {
			return err
		}
		s.adopt(eap)
		others = append(others, authzName)
	}
	if o.limit > 0 {
		if err := s.startRatelimit(ctx, o.name, cp.XDSAddr, socks.Ratelimit(o.name)); err != nil {
			return err
		}
		others = append(others, stack.ProcessName("ratelimit", o.name), "redis")
	}
	ep, err := s.startEnvoy(ctx, o.name, envoy)
	if err != nil {
		return err
	}
	if o.inEnvoy {
		if err := ep.Await(ctx, stack.LlmedgeStartTimeout, stack.HTTPStatus("http://"+ea.HTTPAddr+"/readyz", 200)); err != nil {
			return err
		}
	}
	s.variant(o.name, a[0], ep.AdminURL(), s.callerHeaders(), others...)
	return nil
}

// startRatelimit runs a region's ratelimit on the full edge's Redis, as the Edge runs it.
func (s *rig) startRatelimit(ctx context.Context, name, xds, socket string) error {
	var ports [3]int
	for i := range ports {
		p, err := stack.FreePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	rl, err := s.r.StartRatelimit(ctx, stack.ProcessName("ratelimit", name), stack.Ratelimit{
		Region: name, XDSAddr: xds, RedisAddr: s.redis, GRPCSocket: socket,
		HTTPPort: ports[0], DebugPort: ports[1], MetricsPort: ports[2],
	})
	if err != nil {
		return err
	}
	s.adopt(rl.Process)
	return rl.WaitHealthy(ctx, stack.RatelimitStartTimeout)
}

// startStatics starts the bare and rate-limit-only Envoys on static bootstraps made from
// the control plane's translation of the full edge's region (envoyconf.go), make run's:
// the same listener, route and cluster, fewer filters. Bare Envoy is thus the full edge
// without the module, the rate-limit filter and the usage log, and full edge − bare Envoy
// is what they cost. The rate-limit Envoy calls the full edge's
// ratelimit and Redis, so the same descriptors reach the same processes.
func (s *rig) startStatics(ctx context.Context) error {
	for _, st := range []struct {
		name, routes, region string
		mode                 staticMode
		others               []string
	}{
		{vBare, "routes-full.yaml", vFull, staticBare, nil},
		{vRateLimit, "routes-full.yaml", vFull, staticRateLimit, []string{stack.ProcessName("ratelimit", vFull), "redis"}},
	} {
		res, err := translated(filepath.Join(s.r.Dir, st.routes), st.region)
		if err != nil {
			return err
		}
		listenPort, admin, err := freePair()
		if err != nil {
			return err
		}
		path := filepath.Join(s.r.Dir, "envoy-"+st.name+".json")
		if err := writeStaticBootstrap(path, res, st.name, listenPort, admin, st.mode, callerName, nil); err != nil {
			return err
		}
		listen := stack.Loopback(listenPort)
		ep, err := s.startEnvoy(ctx, st.name, stack.Envoy{Bootstrap: path})
		if err != nil {
			return err
		}
		if err := ep.Await(ctx, stack.EnvoyStartTimeout, stack.TCPOpen(listen)); err != nil {
			return err
		}
		s.variant(st.name, listen, ep.AdminURL(), fakeHeaders(), st.others...)
	}
	return nil
}

// startEnvoy runs envoy-<name> with make run's worker count and waits until it is live.
func (s *rig) startEnvoy(ctx context.Context, name string, e stack.Envoy) (*stack.EnvoyProcess, error) {
	e.Concurrency = stack.LocalEnvoyConcurrency
	ep, err := s.r.StartEnvoy(ctx, "envoy-"+name, e)
	if err != nil {
		return nil, err
	}
	s.adopt(ep.Process)
	return ep, ep.WaitLive(ctx)
}

// region is one llmedge region of a benchmark routes YAML: its listener, extauthz and
// (with limits) ratelimit addresses.
type region struct {
	name, listen, authz, ratelimit string
	inEnvoy                        bool // extauthz_in_envoy
}

// writeRoutes writes a routes YAML serving the fake through the regions, for the caller
// (limited to limit requests a minute when limit > 0), with usage recording unless noUsage.
func (s *rig) writeRoutes(name string, limit int, noUsage bool, regions ...region) (string, error) {
	var b strings.Builder
	var names []string
	b.WriteString("version: 1\nregions:\n")
	for _, r := range regions {
		fmt.Fprintf(&b, "  %s:\n    listen: %s\n    extauthz: %s\n    upstreams: [fake]\n", r.name, r.listen, r.authz)
		if s.r.ceiling > 0 {
			fmt.Fprintf(&b, "    overload: {max_requests_per_second: %d}\n", s.r.ceiling)
		}
		if r.ratelimit != "" {
			fmt.Fprintf(&b, "    ratelimit: %s\n", r.ratelimit)
		}
		if r.inEnvoy {
			b.WriteString("    extauthz_in_envoy: true\n")
		}
		names = append(names, r.name)
	}
	fmt.Fprintf(&b, "upstreams:\n  fake:\n    url: http://%s\n    allowed_regions: [%s]\n", s.fakeAddr, strings.Join(names, ", "))
	b.WriteString("routes:\n  openai:\n    match: {prefix: /openai}\n    upstream: fake\n    prefix_rewrite: /\n")
	fmt.Fprintf(&b, "callers:\n  %s:\n    tokens: [%s]\n    upstreams: [fake]\n", callerName, token.DigestRef(s.token))
	if limit > 0 {
		fmt.Fprintf(&b, "    limits:\n      - {requests: %d, per: minute}\n", limit)
	}
	if noUsage {
		b.WriteString("usage:\n  enabled: false\n")
	}
	path := filepath.Join(s.r.Dir, name)
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// envoyStats reads an Envoy's non-zero counters matching filter (a regular expression).
func envoyStats(admin, filter string) map[string]int64 {
	out := map[string]int64{}
	if admin == "" {
		return out
	}
	status, body, err := stack.Get(context.Background(), admin+"/stats?filter="+filter)
	if err != nil || status != 200 {
		return out
	}
	for _, line := range strings.Split(string(body), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n != 0 {
			out[k] = n
		}
	}
	return out
}

// envoyCounters are the connection counters that show whether keep-alive held: how many
// downstream and upstream connections an Envoy opened over the whole run.
func envoyCounters(admin string) map[string]int64 {
	out := envoyStats(admin, "(downstream_cx_total|downstream_rq_total|upstream_cx_total|upstream_rq_total)$")
	for k := range out {
		if strings.HasPrefix(k, "cluster.llmedge_xds") || strings.Contains(k, "admin") {
			delete(out, k)
		}
	}
	return out
}

// envoyOverflows are the counters that show circuit breakers or queues refusing work.
func envoyOverflows(admin string) map[string]int64 {
	return envoyStats(admin, "overflow|rq_pending_failure_eject|upstream_rq_retry$|upstream_rq_timeout$")
}
