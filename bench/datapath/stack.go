package main

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

type stack struct {
	r        *runner
	root     string // repository root
	bin      string // built llmedge and fakellm
	envoyBin string
	rlBin    string
	redisBin string
	token    string // the caller's llmedge token

	fakeAddr string
	fake     *proc

	redis     *proc
	redisAddr string

	// One control plane per routes YAML: authz-only (no limits anywhere) and full (limits).
	cpAuthz, cpFull *proc

	envoys   map[string]*proc // scenario name -> Envoy
	admin    map[string]int   // scenario name -> admin port
	listen   map[string]int   // scenario name -> listener port
	extauthz map[string]*proc // region -> extauthz
	rl       map[string]*proc // ratelimit name -> process
}

// edgePorts are the ports the routes YAMLs name.
type edgePorts struct {
	authzListen, fullListen, pipeListen              int
	authzAuthz, fullAuthz, pipeAuthz                 int
	authzAuthzHTTP, fullAuthzHTTP, pipeAuthzHTTP     int
	fullRL, pipeRL                                   int
	fullRLHTTP, pipeRLHTTP, fullRLDebug, pipeRLDebug int
	fullRLProm, pipeRLProm                           int
	cpAuthzXDS, cpAuthzHTTP, cpFullXDS, cpFullHTTP   int
	bareListen, rlListen                             int
	adminBare, adminAuthz, adminRL, adminFull        int
	adminPipe, redis, fake                           int
}

func newPorts() edgePorts {
	p := mustPorts(34)
	return edgePorts{
		authzListen: p[0], fullListen: p[1], pipeListen: p[2],
		authzAuthz: p[3], fullAuthz: p[4], pipeAuthz: p[5],
		authzAuthzHTTP: p[6], fullAuthzHTTP: p[7], pipeAuthzHTTP: p[8],
		fullRL: p[9], pipeRL: p[10],
		fullRLHTTP: p[11], pipeRLHTTP: p[12], fullRLDebug: p[13], pipeRLDebug: p[14],
		fullRLProm: p[15], pipeRLProm: p[16],
		cpAuthzXDS: p[17], cpAuthzHTTP: p[18], cpFullXDS: p[19], cpFullHTTP: p[20],
		bareListen: p[21], rlListen: p[22],
		adminBare: p[23], adminAuthz: p[24], adminRL: p[25], adminFull: p[26],
		adminPipe: p[27], redis: p[28], fake: p[29],
	}
}

// Routes YAMLs. The authz-only edge has no limits anywhere, so the control plane gives its
// listener no rate-limit filter (the translator adds it only to regions with a ratelimit
// address, which is required as soon as any limit exists: hence two control planes).
const routesAuthz = `version: 1
regions:
  authz:
    listen: 127.0.0.1:%d
    extauthz: 127.0.0.1:%d
    upstreams: [fake]
upstreams:
  fake:
    url: http://127.0.0.1:%d
    allowed_regions: [authz]
routes:
  openai:
    match: {prefix: /openai}
    upstream: fake
    prefix_rewrite: /
callers:
  bench:
    tokens: [%s]
    upstreams: [fake]
`

// The full edge, twice: region full uses envoyproxy/ratelimit as configured by default
// (no Redis pipelining), region fullpipe one with implicit pipelining on.
const routesFull = `version: 1
regions:
  full:
    listen: 127.0.0.1:%d
    extauthz: 127.0.0.1:%d
    ratelimit: 127.0.0.1:%d
    upstreams: [fake]
  fullpipe:
    listen: 127.0.0.1:%d
    extauthz: 127.0.0.1:%d
    ratelimit: 127.0.0.1:%d
    upstreams: [fake]
upstreams:
  fake:
    url: http://127.0.0.1:%d
    allowed_regions: [full, fullpipe]
routes:
  openai:
    match: {prefix: /openai}
    upstream: fake
    prefix_rewrite: /
callers:
  bench:
    tokens: [%s]
    upstreams: [fake]
    limits:
      - {requests: %d, per: minute}
`

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

func (s *stack) startAll(p edgePorts, pipeWindow string, pipeLimit int) error {
	s.envoys, s.admin, s.listen = map[string]*proc{}, map[string]int{}, map[string]int{}
	s.extauthz, s.rl = map[string]*proc{}, map[string]*proc{}
	tok, err := token.New()
	if err != nil {
		return err
	}
	s.token = tok
	digest := token.DigestRef(tok)
	env := os.Environ()

	// The fake upstream: tiny fixed JSON answers (5 words), no pacing unless asked per request.
	s.fakeAddr = fmt.Sprintf("127.0.0.1:%d", p.fake)
	if s.fake, err = s.r.start("fakellm", "fake", cpuWorld, env, "", filepath.Join(s.bin, "fakellm"),
		"--listen", s.fakeAddr, "--chunks", "5", "--chunk-interval", "0", "--log-level", "warn"); err != nil {
		return err
	}
	if err := waitFor("fakellm", s.fake, 15*time.Second, httpOK("http://"+s.fakeAddr+"/_fake/healthz")); err != nil {
		return err
	}

	// Keys: extauthz injects one for the upstream; the fake accepts any.
	keys := filepath.Join(s.r.dir, "keys")
	if err := os.MkdirAll(filepath.Join(keys, "fake"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(keys, "fake", "key-1"), []byte("sk-bench-fake-key\n"), 0o600); err != nil {
		return err
	}

	authzYAML := filepath.Join(s.r.dir, "routes-authz.yaml")
	fullYAML := filepath.Join(s.r.dir, "routes-full.yaml")
	if err := os.WriteFile(authzYAML, fmt.Appendf(nil, routesAuthz, p.authzListen, p.authzAuthz, p.fake, digest), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(fullYAML, fmt.Appendf(nil, routesFull, p.fullListen, p.fullAuthz, p.fullRL,
		p.pipeListen, p.pipeAuthz, p.pipeRL, p.fake, digest, callerLimit), 0o644); err != nil {
		return err
	}

	// Redis first: envoyproxy/ratelimit exits when Redis does not answer at its start.
	s.redisAddr = fmt.Sprintf("127.0.0.1:%d", p.redis)
	redisDir := filepath.Join(s.r.dir, "redis")
	if err := os.MkdirAll(redisDir, 0o755); err != nil {
		return err
	}
	if s.redis, err = s.r.start("redis", "redis", cpuEdge, []string{}, "", s.redisBin,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(p.redis), "--save", "", "--appendonly", "no",
		"--dir", redisDir, "--daemonize", "no", "--logfile", ""); err != nil {
		return err
	}
	if err := waitFor("redis", s.redis, 10*time.Second, tcpOpen(s.redisAddr)); err != nil {
		return err
	}

	// Control planes: idle during the measurements (no edits), on the world CPU.
	llmedge := filepath.Join(s.bin, "llmedge")
	for _, cp := range []struct {
		name, yaml string
		xds, http  int
		dst        **proc
	}{{"controlplane-authz", authzYAML, p.cpAuthzXDS, p.cpAuthzHTTP, &s.cpAuthz}, {"controlplane-full", fullYAML, p.cpFullXDS, p.cpFullHTTP, &s.cpFull}} {
		pr, err := s.r.start(cp.name, "controlplane", cpuWorld, env, "", llmedge, "controlplane", "--config", cp.yaml,
			"--xds-listen", fmt.Sprintf("127.0.0.1:%d", cp.xds), "--http-listen", fmt.Sprintf("127.0.0.1:%d", cp.http),
			"--log-format", "json")
		if err != nil {
			return err
		}
		*cp.dst = pr
		if err := waitFor(cp.name, pr, 20*time.Second, httpOK(fmt.Sprintf("http://127.0.0.1:%d/readyz", cp.http))); err != nil {
			return err
		}
	}

	// extauthz per region.
	for _, a := range []struct {
		region     string
		grpc, http int
		xds        int
	}{{"authz", p.authzAuthz, p.authzAuthzHTTP, p.cpAuthzXDS}, {"full", p.fullAuthz, p.fullAuthzHTTP, p.cpFullXDS}, {"fullpipe", p.pipeAuthz, p.pipeAuthzHTTP, p.cpFullXDS}} {
		pr, err := s.r.start("extauthz-"+a.region, "extauthz", cpuEdge, env, "", llmedge, "extauthz",
			"--region", a.region, "--xds", fmt.Sprintf("127.0.0.1:%d", a.xds), "--keys-dir", keys,
			"--grpc-listen", fmt.Sprintf("127.0.0.1:%d", a.grpc), "--http-listen", fmt.Sprintf("127.0.0.1:%d", a.http))
		if err != nil {
			return err
		}
		s.extauthz[a.region] = pr
		if err := waitFor("extauthz "+a.region, pr, 20*time.Second, httpOK(fmt.Sprintf("http://127.0.0.1:%d/readyz", a.http))); err != nil {
			return err
		}
	}

	// envoyproxy/ratelimit, configured as compose.yaml does (Prometheus stats, warn logs),
	// once as is and once with Redis implicit pipelining.
	for _, rl := range []struct {
		name, region            string
		grpc, http, debug, prom int
		extra                   []string
	}{
		{"ratelimit-full", "full", p.fullRL, p.fullRLHTTP, p.fullRLDebug, p.fullRLProm, nil},
		{"ratelimit-fullpipe", "fullpipe", p.pipeRL, p.pipeRLHTTP, p.pipeRLDebug, p.pipeRLProm,
			[]string{"REDIS_PIPELINE_WINDOW=" + pipeWindow, "REDIS_PIPELINE_LIMIT=" + strconv.Itoa(pipeLimit)}},
	} {
		rlEnv := append([]string{
			"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(),
			"CONFIG_TYPE=GRPC_XDS_SOTW", fmt.Sprintf("CONFIG_GRPC_XDS_SERVER_URL=127.0.0.1:%d", p.cpFullXDS),
			"CONFIG_GRPC_XDS_NODE_ID=ratelimit-" + rl.region, "CONFIG_GRPC_XDS_NODE_METADATA=region=" + rl.region,
			"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL=500ms", "XDS_CLIENT_BACKOFF_MAX_INTERVAL=5s",
			"FORCE_START_WITHOUT_INITIAL_CONFIG=true", "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true",
			"REDIS_SOCKET_TYPE=tcp", "REDIS_TYPE=SINGLE", "REDIS_URL=" + s.redisAddr,
			"USE_STATSD=false", "USE_PROMETHEUS=true", fmt.Sprintf("PROMETHEUS_ADDR=127.0.0.1:%d", rl.prom),
			"LOG_LEVEL=warn", "LOG_FORMAT=json",
			"HOST=127.0.0.1", "PORT=" + strconv.Itoa(rl.http),
			"GRPC_HOST=127.0.0.1", "GRPC_PORT=" + strconv.Itoa(rl.grpc),
			"DEBUG_HOST=127.0.0.1", "DEBUG_PORT=" + strconv.Itoa(rl.debug),
		}, rl.extra...)
		pr, err := s.r.start(rl.name, "ratelimit", cpuEdge, rlEnv, "", s.rlBin)
		if err != nil {
			return err
		}
		s.rl[rl.name] = pr
		if err := waitFor(rl.name, pr, 30*time.Second, httpOK(fmt.Sprintf("http://127.0.0.1:%d/healthcheck", rl.http))); err != nil {
			return err
		}
	}

	// Envoys: the llmedge ones from `llmedge bootstrap` over xDS; the static ones from the
	// same translation with filters removed.
	envoy := func(name, cfgPath string, admin, listen int) error {
		pr, err := s.r.start("envoy-"+name, "envoy", cpuEdge, env, os.DevNull, s.envoyBin, "-c", cfgPath,
			"--concurrency", "1", "--disable-hot-restart", "-l", "warning")
		if err != nil {
			return err
		}
		s.envoys[name], s.admin[name], s.listen[name] = pr, admin, listen
		return nil
	}
	for _, e := range []struct {
		scenario, region   string
		admin, listen, xds int
	}{{"authz", "authz", p.adminAuthz, p.authzListen, p.cpAuthzXDS}, {"full", "full", p.adminFull, p.fullListen, p.cpFullXDS}, {"fullpipe", "fullpipe", p.adminPipe, p.pipeListen, p.cpFullXDS}} {
		out, err := exec.Command(llmedge, "bootstrap", "--region", e.region, "--admin-port", strconv.Itoa(e.admin),
			"--xds", fmt.Sprintf("127.0.0.1:%d", e.xds)).Output()
		if err != nil {
			return fmt.Errorf("llmedge bootstrap %s: %w", e.region, err)
		}
		path := filepath.Join(s.r.dir, "envoy-"+e.scenario+".yaml")
		if err := os.WriteFile(path, out, 0o644); err != nil {
			return err
		}
		if err := envoy(e.scenario, path, e.admin, e.listen); err != nil {
			return err
		}
	}
	resAuthz, err := translated(authzYAML, "authz")
	if err != nil {
		return err
	}
	resFull, err := translated(fullYAML, "full")
	if err != nil {
		return err
	}
	barePath := filepath.Join(s.r.dir, "envoy-bare.json")
	if err := writeStaticBootstrap(barePath, resAuthz, "bare", p.bareListen, p.adminBare, staticBare, ""); err != nil {
		return err
	}
	rlPath := filepath.Join(s.r.dir, "envoy-ratelimit.json")
	if err := writeStaticBootstrap(rlPath, resFull, "ratelimit", p.rlListen, p.adminRL, staticRateLimit, callerName); err != nil {
		return err
	}
	if err := envoy("bare", barePath, p.adminBare, p.bareListen); err != nil {
		return err
	}
	if err := envoy("ratelimit", rlPath, p.adminRL, p.rlListen); err != nil {
		return err
	}
	for name, pr := range s.envoys {
		if err := waitFor("envoy "+name, pr, 30*time.Second, httpOK(fmt.Sprintf("http://127.0.0.1:%d/ready", s.admin[name]))); err != nil {
			return err
		}
		if err := waitFor("envoy "+name+" listener", pr, 30*time.Second, tcpOpen(fmt.Sprintf("127.0.0.1:%d", s.listen[name]))); err != nil {
			return err
		}
	}
	return nil
}

// envoyCounters reads the connection counters that show whether keep-alive held: how many
// downstream and upstream connections an Envoy opened over the whole run.
func (s *stack) envoyCounters(name string) map[string]int64 {
	out := map[string]int64{}
	resp, err := plainClient.Get(fmt.Sprintf("http://127.0.0.1:%d/stats?filter=(downstream_cx_total|downstream_rq_total|upstream_cx_total|upstream_rq_total)$", s.admin[name]))
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok || strings.HasPrefix(k, "cluster.llmedge_xds") || strings.Contains(k, "admin") {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n != 0 {
			out[k] = n
		}
	}
	return out
}

// envoyOverflows reads the counters that show circuit breakers or queues refusing work.
func (s *stack) envoyOverflows(name string) map[string]int64 {
	out := map[string]int64{}
	resp, err := plainClient.Get(fmt.Sprintf("http://127.0.0.1:%d/stats?filter=overflow|rq_pending_failure_eject|upstream_rq_retry$|upstream_rq_timeout$", s.admin[name]))
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
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err == nil && n != 0 {
			out[k] = n
		}
	}
	return out
}
