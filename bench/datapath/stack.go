package main

// This file is the benchmark's one seam to the processes under test. The rest of the
// program uses only:
//   - findTools(root): the Envoy, ratelimit and Redis binaries;
//   - startStack(r, root, tools, pipeWindow, pipeLimit): builds llmedge and fakellm and
//     starts every component;
//   - stack.variants[vDirect, vBare, vAuthz, vRateLimit, vFull, vFullPipe]: URL, headers,
//     the processes on the data path (for CPU and RSS accounting) and the Envoy admin port
//     (read with envoyCounters and envoyOverflows);
//   - stack.fakeAddr and stack.port() for the peer gateways.
//
// Component settings (routes YAMLs, extauthz and ratelimit settings, Envoy flags) are
// written here only. When a shared stack package owns processes, ports, tool paths,
// builds and settings, this is the file to rewrite on top of it: its processes become
// *proc values (runner, procs.go) by their process group.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/token"

	"github.com/llmedge/llmedge/bench/host"
)

// CPU placement on the 2-core machine (-pin): the load generator (this program), the fake
// upstream and the control planes share CPU 0 ("the world"); every process of the edge
// under test (Envoy, extauthz, ratelimit, Redis) and each peer gateway get CPU 1. Envoy
// runs with --concurrency 1. So the figures are what one core of edge does, and the load
// generator never competes with the proxy it measures.
const (
	cpuWorld = "0"
	cpuEdge  = "1"
)

// callerName is the benchmark's caller; its limit is generous enough never to refuse.
const (
	callerName  = "bench"
	callerLimit = 1_000_000_000 // requests per minute
)

// The variants startStack returns.
const (
	vDirect    = "direct"    // the fake upstream itself
	vBare      = "bare"      // static Envoy, router only
	vAuthz     = "authz"     // llmedge Envoy + ext_authz (a region without limits)
	vRateLimit = "ratelimit" // static Envoy, rate limit + router
	vFull      = "full"      // llmedge Envoy + ext_authz + rate limit
	vFullPipe  = "fullpipe"  // the same with Redis pipelining in ratelimit
)

// tools are the third-party binaries the stack runs.
type tools struct{ envoy, ratelimit, redis string }

func findTools(root string) (tools, error) {
	dir := filepath.Join(root, ".tools", "bin")
	if d := os.Getenv("LLMEDGE_TOOLS"); d != "" {
		dir = filepath.Join(d, "bin")
	}
	t := tools{envoy: filepath.Join(dir, "envoy"), ratelimit: filepath.Join(dir, "ratelimit"), redis: filepath.Join(dir, "redis-server")}
	for _, b := range []string{t.envoy, t.ratelimit, t.redis} {
		if _, err := os.Stat(b); err != nil {
			return t, fmt.Errorf("%s missing: run make tools", b)
		}
	}
	return t, nil
}

// variant is one way for a request to reach the fake upstream.
type variant struct {
	url     string            // chat completions URL
	headers map[string]string // the credential it needs
	procs   []*proc           // the processes on its path, the fake included
	admin   int               // Envoy admin port (0: no Envoy)
}

// stack is the running processes; variants is what the measurements use.
type stack struct {
	r        *runner
	tools    tools
	pipe     []string // extra ratelimit environment of the fullpipe variant
	bin      string   // built llmedge and fakellm
	keys     string
	token    string // the caller's llmedge token
	fakeAddr string
	variants map[string]variant

	fake, redis *proc
	redisAt     string
	seen        map[int]bool
}

// startStack builds llmedge and fakellm and starts the fake upstream, Redis, two control
// planes, extauthz and ratelimit per region, and an Envoy per variant.
func startStack(r *runner, root string, t tools, pipeWindow string, pipeLimit int) (*stack, error) {
	s := &stack{r: r, tools: t, bin: filepath.Join(r.dir, "bin"), seen: map[int]bool{}, variants: map[string]variant{},
		pipe: []string{"REDIS_PIPELINE_WINDOW=" + pipeWindow, "REDIS_PIPELINE_LIMIT=" + strconv.Itoa(pipeLimit)}}
	logf("building llmedge and fakellm")
	if err := build(root, s.bin); err != nil {
		return nil, err
	}
	logf("starting fake upstream, Redis, control planes, extauthz, ratelimit and 5 Envoys")
	for _, step := range []func() error{s.startFake, s.writeKeys, s.startRedis, s.startEdges} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// port is a free loopback port not handed out before (they are bound later, by the
// processes, so the kernel could hand one out twice).
func (s *stack) port() int {
	for {
		p, err := host.FreePort()
		if err != nil {
			fatalf("free port: %v", err)
		}
		if !s.seen[p] {
			s.seen[p] = true
			return p
		}
	}
}

func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// build compiles llmedge and fakellm into dir.
func build(root, dir string) error {
	for _, pkg := range []string{"llmedge", "fakellm"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, pkg), "./cmd/"+pkg)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/%s: %w", pkg, err)
		}
	}
	return nil
}

// startFake starts the fake upstream: tiny fixed JSON answers (5 words), no pacing unless
// asked per request.
func (s *stack) startFake() error {
	s.fakeAddr = addr(s.port())
	var err error
	if s.fake, err = s.r.start("fakellm", "fake", cpuWorld, os.Environ(), "", filepath.Join(s.bin, "fakellm"),
		"--listen", s.fakeAddr, "--chunks", "5", "--chunk-interval", "0", "--log-level", "warn"); err != nil {
		return err
	}
	fakeKey := map[string]string{"authorization": "Bearer sk-bench-fake-key"}
	s.variants[vDirect] = variant{url: "http://" + s.fakeAddr + "/v1/chat/completions", headers: fakeKey, procs: []*proc{s.fake}}
	return waitFor("fakellm", s.fake, 15*time.Second, host.HTTPOK("http://"+s.fakeAddr+"/_fake/healthz"))
}

// writeKeys writes the key extauthz injects for the upstream (the fake accepts any) and
// makes the caller's token.
func (s *stack) writeKeys() error {
	s.keys = filepath.Join(s.r.dir, "keys")
	if err := os.MkdirAll(filepath.Join(s.keys, "fake"), 0o700); err != nil {
		return err
	}
	var err error
	if s.token, err = token.New(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.keys, "fake", "key-1"), []byte("sk-bench-fake-key\n"), 0o600)
}

// startRedis starts Redis first: envoyproxy/ratelimit exits when Redis does not answer at
// its start.
func (s *stack) startRedis() error {
	port := s.port()
	s.redisAt = addr(port)
	dir := filepath.Join(s.r.dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var err error
	if s.redis, err = s.r.start("redis", "redis", cpuEdge, []string{}, "", s.tools.redis,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--logfile", ""); err != nil {
		return err
	}
	return waitFor("redis", s.redis, 10*time.Second, tcpOpen(s.redisAt))
}

// region is one llmedge region of the benchmark: its listener, extauthz and (with limits)
// ratelimit ports.
type region struct {
	name                     string
	listen, authz, ratelimit int
}

// startEdges starts the two control planes (one per routes YAML: the authz-only region
// has no limits anywhere, so its listener gets no rate-limit filter, and a control plane
// that serves limits requires a ratelimit address in every region) with their extauthz,
// ratelimit and Envoy processes, then the static Envoys built from the same translation.
func (s *stack) startEdges() error {
	authz := region{name: vAuthz, listen: s.port(), authz: s.port()}
	full := region{name: vFull, listen: s.port(), authz: s.port(), ratelimit: s.port()}
	pipe := region{name: vFullPipe, listen: s.port(), authz: s.port(), ratelimit: s.port()}
	authzYAML, err := s.writeRoutes("routes-authz.yaml", 0, authz)
	if err != nil {
		return err
	}
	fullYAML, err := s.writeRoutes("routes-full.yaml", callerLimit, full, pipe)
	if err != nil {
		return err
	}
	if err := s.startRegions("controlplane-authz", authzYAML, authz); err != nil {
		return err
	}
	if err := s.startRegions("controlplane-full", fullYAML, full, pipe); err != nil {
		return err
	}
	if err := s.startStatic(vBare, authzYAML, vAuthz, staticBare); err != nil {
		return err
	}
	// ratelimit-full and Redis: the same descriptors reach the same processes.
	fp := s.variants[vFull].procs
	return s.startStatic(vRateLimit, fullYAML, vFull, staticRateLimit, fp[2], fp[3])
}

// writeRoutes writes a routes YAML serving the fake through the regions, for the caller
// (limited to limit requests a minute when limit > 0).
func (s *stack) writeRoutes(name string, limit int, regions ...region) (string, error) {
	var b strings.Builder
	var names []string
	b.WriteString("version: 1\nregions:\n")
	for _, r := range regions {
		fmt.Fprintf(&b, "  %s:\n    listen: %s\n    extauthz: %s\n    upstreams: [fake]\n", r.name, addr(r.listen), addr(r.authz))
		if r.ratelimit != 0 {
			fmt.Fprintf(&b, "    ratelimit: %s\n", addr(r.ratelimit))
		}
		names = append(names, r.name)
	}
	fmt.Fprintf(&b, "upstreams:\n  fake:\n    url: http://%s\n    allowed_regions: [%s]\n", s.fakeAddr, strings.Join(names, ", "))
	b.WriteString("routes:\n  openai:\n    match: {prefix: /openai}\n    upstream: fake\n    prefix_rewrite: /\n")
	fmt.Fprintf(&b, "callers:\n  %s:\n    tokens: [%s]\n    upstreams: [fake]\n", callerName, token.DigestRef(s.token))
	if limit > 0 {
		fmt.Fprintf(&b, "    limits:\n      - {requests: %d, per: minute}\n", limit)
	}
	path := filepath.Join(s.r.dir, name)
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// startRegions starts a control plane for the routes YAML at cfg (idle during the
// measurements, on the world CPU) and, per region, extauthz, ratelimit (if the region has
// one) and an Envoy from `llmedge bootstrap`.
func (s *stack) startRegions(name, cfg string, regions ...region) error {
	xds, httpPort := s.port(), s.port()
	cp, err := s.r.start(name, "controlplane", cpuWorld, os.Environ(), "", s.llmedge(), "controlplane", "--config", cfg,
		"--xds-listen", addr(xds), "--http-listen", addr(httpPort), "--log-format", "json")
	if err != nil {
		return err
	}
	if err := waitFor(name, cp, 20*time.Second, host.HTTPOK(fmt.Sprintf("http://%s/readyz", addr(httpPort)))); err != nil {
		return err
	}
	for _, r := range regions {
		v := variant{url: fmt.Sprintf("http://%s/openai/v1/chat/completions", addr(r.listen)),
			headers: map[string]string{"authorization": "Bearer " + s.token}}
		ea, err := s.startExtAuthz(r, xds)
		if err != nil {
			return err
		}
		v.procs = append(v.procs, ea)
		if r.ratelimit != 0 {
			rl, err := s.startRateLimit(r, xds)
			if err != nil {
				return err
			}
			v.procs = append(v.procs, rl, s.redis)
		}
		if v.admin, err = s.bootstrapEnvoy(r, xds); err != nil {
			return err
		}
		if err := s.startEnvoy(r.name, s.envoyConfig(r.name, ".yaml"), r.listen, v); err != nil {
			return err
		}
	}
	return nil
}

func (s *stack) llmedge() string { return filepath.Join(s.bin, "llmedge") }

func (s *stack) startExtAuthz(r region, xds int) (*proc, error) {
	httpPort := s.port()
	p, err := s.r.start("extauthz-"+r.name, "extauthz", cpuEdge, os.Environ(), "", s.llmedge(), "extauthz",
		"--region", r.name, "--xds", addr(xds), "--keys-dir", s.keys,
		"--grpc-listen", addr(r.authz), "--http-listen", addr(httpPort))
	if err != nil {
		return nil, err
	}
	return p, waitFor("extauthz "+r.name, p, 20*time.Second, host.HTTPOK(fmt.Sprintf("http://%s/readyz", addr(httpPort))))
}

// startRateLimit starts envoyproxy/ratelimit configured as compose.yaml does (Prometheus
// stats, warn logs); the fullpipe region's with Redis implicit pipelining.
func (s *stack) startRateLimit(r region, xds int) (*proc, error) {
	httpPort, debug, prom := s.port(), s.port(), s.port()
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(),
		"CONFIG_TYPE=GRPC_XDS_SOTW", "CONFIG_GRPC_XDS_SERVER_URL=" + addr(xds),
		"CONFIG_GRPC_XDS_NODE_ID=ratelimit-" + r.name, "CONFIG_GRPC_XDS_NODE_METADATA=region=" + r.name,
		"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL=500ms", "XDS_CLIENT_BACKOFF_MAX_INTERVAL=5s",
		"FORCE_START_WITHOUT_INITIAL_CONFIG=true", "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true",
		"REDIS_SOCKET_TYPE=tcp", "REDIS_TYPE=SINGLE", "REDIS_URL=" + s.redisAt,
		"USE_STATSD=false", "USE_PROMETHEUS=true", "PROMETHEUS_ADDR=" + addr(prom),
		"LOG_LEVEL=warn", "LOG_FORMAT=json",
		"HOST=127.0.0.1", "PORT=" + strconv.Itoa(httpPort),
		"GRPC_HOST=127.0.0.1", "GRPC_PORT=" + strconv.Itoa(r.ratelimit),
		"DEBUG_HOST=127.0.0.1", "DEBUG_PORT=" + strconv.Itoa(debug),
	}
	if r.name == vFullPipe {
		env = append(env, s.pipe...)
	}
	name := "ratelimit-" + r.name
	p, err := s.r.start(name, "ratelimit", cpuEdge, env, "", s.tools.ratelimit)
	if err != nil {
		return nil, err
	}
	return p, waitFor(name, p, 30*time.Second, host.HTTPOK(fmt.Sprintf("http://127.0.0.1:%d/healthcheck", httpPort)))
}

// bootstrapEnvoy writes `llmedge bootstrap`'s config for the region; it returns the
// admin port.
func (s *stack) bootstrapEnvoy(r region, xds int) (int, error) {
	admin := s.port()
	out, err := exec.Command(s.llmedge(), "bootstrap", "--region", r.name, "--admin-port", strconv.Itoa(admin),
		"--xds", addr(xds)).Output()
	if err != nil {
		return 0, fmt.Errorf("llmedge bootstrap %s: %w", r.name, err)
	}
	return admin, os.WriteFile(s.envoyConfig(r.name, ".yaml"), out, 0o644)
}

func (s *stack) envoyConfig(name, ext string) string {
	return filepath.Join(s.r.dir, "envoy-"+name+ext)
}

// startStatic starts a static Envoy for the variant name from the control plane's
// translation of region in the routes YAML at cfg, with filters removed (envoyconf.go);
// procs are the variant's processes besides Envoy and the fake.
func (s *stack) startStatic(name, cfg, region string, mode staticMode, procs ...*proc) error {
	res, err := translated(cfg, region)
	if err != nil {
		return err
	}
	listen, admin := s.port(), s.port()
	path := s.envoyConfig(name, ".json")
	if err := writeStaticBootstrap(path, res, name, listen, admin, mode, callerName); err != nil {
		return err
	}
	v := variant{url: fmt.Sprintf("http://%s/openai/v1/chat/completions", addr(listen)),
		headers: s.variants[vDirect].headers, procs: procs, admin: admin}
	return s.startEnvoy(name, path, listen, v)
}

// startEnvoy runs Envoy on the config at path for the variant name (access logs to
// /dev/null) and waits for its admin and listener.
func (s *stack) startEnvoy(name, path string, listen int, v variant) error {
	p, err := s.r.start("envoy-"+name, "envoy", cpuEdge, os.Environ(), os.DevNull, s.tools.envoy, "-c", path,
		"--concurrency", "1", "--disable-hot-restart", "-l", "warning")
	if err != nil {
		return err
	}
	v.procs = append(append([]*proc{p}, v.procs...), s.fake)
	s.variants[name] = v
	if err := waitFor("envoy "+name, p, 30*time.Second, host.HTTPOK(fmt.Sprintf("http://127.0.0.1:%d/ready", v.admin))); err != nil {
		return err
	}
	return waitFor("envoy "+name+" listener", p, 30*time.Second, tcpOpen(addr(listen)))
}

// envoyStats reads an Envoy's non-zero counters matching filter (a regular expression).
func envoyStats(admin int, filter string) map[string]int64 {
	out := map[string]int64{}
	if admin == 0 {
		return out
	}
	resp, err := plainClient.Get(fmt.Sprintf("http://127.0.0.1:%d/stats?filter=%s", admin, filter))
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return out
	}
	body, _ := io.ReadAll(resp.Body)
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
func envoyCounters(admin int) map[string]int64 {
	out := envoyStats(admin, "(downstream_cx_total|downstream_rq_total|upstream_cx_total|upstream_rq_total)$")
	for k := range out {
		if strings.HasPrefix(k, "cluster.llmedge_xds") || strings.Contains(k, "admin") {
			delete(out, k)
		}
	}
	return out
}

// envoyOverflows are the counters that show circuit breakers or queues refusing work.
func envoyOverflows(admin int) map[string]int64 {
	return envoyStats(admin, "overflow|rq_pending_failure_eject|upstream_rq_retry$|upstream_rq_timeout$")
}
