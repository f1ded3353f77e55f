package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RedisStartTimeout bounds how long StartRedis and Restart wait for PING.
const RedisStartTimeout = 10 * time.Second

// RatelimitStartTimeout bounds how long StartRatelimit waits for the listeners
// and WaitHealthy for /healthcheck to answer 200.
const RatelimitStartTimeout = 20 * time.Second

// Redis is a redis-server started by StartRedis. It keeps its port across
// Stop/Kill and Restart, so a client configured with Addr() reconnects to the
// new process. Nothing is persisted: a restarted Redis starts empty.
type Redis struct {
	port int
	dir  string

	mu     sync.Mutex
	proc   *Process
	starts int
}

// StartRedis runs redis-server on a FreePort of 127.0.0.1 without persistence
// (--save "" --appendonly no, --dir in t.TempDir()) and returns once it
// answers PING.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{port: FreePort(t), dir: t.TempDir()}
	r.start(t)
	return r
}

func (r *Redis) start(t testing.TB) {
	t.Helper()
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(r.port),
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--logfile", "", // stdout, which Start captures
	}
	cmd := exec.Command(RedisServer(t), args...)
	cmd.Dir = r.dir
	cmd.Env = []string{}
	r.mu.Lock()
	name := "redis"
	if r.starts > 0 {
		name = fmt.Sprintf("redis-restart%d", r.starts)
	}
	r.starts++
	r.mu.Unlock()

	p := Start(t, name, cmd)
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
	Eventually(t, RedisStartTimeout, 10*time.Millisecond, func() error {
		if p.Exited() {
			t.Fatalf("testenv: %s exited during startup (%v):\n%s", name, p.waitErr, tail(p.Log(), logTailLines))
		}
		return redisPing(r.Addr())
	})
}

// Addr returns host:port, e.g. 127.0.0.1:23456 (REDIS_URL for ratelimit).
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Port returns the TCP port; it stays the same across Restart.
func (r *Redis) Port() int { return r.port }

// Process returns the current redis-server process (a new one after Restart).
func (r *Redis) Process() *Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc
}

// Stop shuts the current process down with SIGTERM (SIGKILL after StopGrace).
func (r *Redis) Stop() { r.Process().Stop() }

// Kill ends the current process with SIGKILL: clients see their connections
// reset instead of a clean close.
func (r *Redis) Kill() { r.Process().Kill() }

// Restart stops the current process if it still runs and starts a new one on
// the same port, returning once it answers PING. Its data is gone.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	r.start(t)
}

// Do sends one command and returns its reply: string for simple and bulk
// strings, int64 for integers, []any for arrays, nil for a null reply. A Redis
// error reply is returned as an error. For test set-up, e.g. Do("FLUSHALL").
func (r *Redis) Do(args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	return readRESP(bufio.NewReader(conn))
}

// redisPing sends an inline PING and expects +PONG.
func redisPing(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("redis %s PING: %w", addr, err)
	}
	if strings.TrimRight(line, "\r\n") != "+PONG" {
		return fmt.Errorf("redis %s PING: got %q", addr, line) // e.g. -LOADING
	}
	return nil
}

func readRESP(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("redis: empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, errors.New("redis: " + body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readRESP(br); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

// RatelimitOptions configures StartRatelimit.
type RatelimitOptions struct {
	// Region is sent as node metadata "region" (CONFIG_GRPC_XDS_NODE_METADATA);
	// ratelimit sends no locality, so the control plane must fall back to it.
	Region string
	// NodeID is node.id; default "ratelimit-<Region>".
	NodeID string
	// XDSAddr is the control plane's ADS host:port (plaintext gRPC).
	XDSAddr string
	// RedisAddr is host:port of Redis, e.g. (*Redis).Addr(). Redis must answer
	// before ratelimit starts: it PINGs once at startup and exits if that fails.
	RedisAddr string
	// GRPCPort, when set, is the port Envoy reaches it on; default a FreePort.
	GRPCPort int
	// ExtraEnv entries (KEY=VALUE) come last and so override the defaults,
	// e.g. "LIMIT_RESPONSE_HEADERS_ENABLED=true" or
	// "FORCE_START_WITHOUT_INITIAL_CONFIG=false".
	ExtraEnv []string
}

// RatelimitProcess is a running envoyproxy/ratelimit started by StartRatelimit.
type RatelimitProcess struct {
	*Process
	// Env is the complete environment it was started with.
	Env []string

	nodeID                                     string
	grpcAddr, httpAddr, debugAddr, metricsAddr string
	forceStart                                 bool
}

// StartRatelimit runs the real ratelimit service with a clean environment,
// configured over xDS (CONFIG_TYPE=GRPC_XDS_SOTW) and backed by Redis over TCP.
//
// By default it sets FORCE_START_WITHOUT_INITIAL_CONFIG=true and
// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true: the listeners open at once,
// ShouldRateLimit fails ("no rate limit configuration loaded") and
// /healthcheck answers 500 until a config with at least one domain arrives.
// StartRatelimit returns once the HTTP, gRPC and debug listeners accept
// connections; call WaitHealthy to wait for the first config.
//
// With FORCE_START_WITHOUT_INITIAL_CONFIG=false in ExtraEnv, ratelimit opens no
// listener at all before its first config; StartRatelimit then only waits for
// it to start waiting, and WaitHealthy waits for the listeners and for 200.
func StartRatelimit(t testing.TB, o RatelimitOptions) *RatelimitProcess {
	t.Helper()
	rl, cmd := ratelimitCommand(t, o)
	rl.Process = Start(t, rl.nodeID, cmd)
	// Runs before Start's cleanup (LIFO). Until its first config ratelimit
	// catches SIGTERM (its health checker) without exiting, so Stop would
	// wait the whole StopGrace.
	t.Cleanup(func() {
		if !rl.forceStart && !strings.Contains(rl.Log(), "Successfully loaded the initial ratelimit configs") {
			rl.Kill()
		}
	})
	if rl.forceStart {
		rl.waitListening(t)
	} else {
		rl.WaitLog(t, "Waiting for initial ratelimit config update event", RatelimitStartTimeout)
	}
	return rl
}

// ratelimitCommand picks the ports and builds the command StartRatelimit runs.
func ratelimitCommand(t testing.TB, o RatelimitOptions) (*RatelimitProcess, *exec.Cmd) {
	t.Helper()
	if o.Region == "" || o.XDSAddr == "" || o.RedisAddr == "" {
		t.Fatalf("testenv: StartRatelimit: Region, XDSAddr and RedisAddr are required (got %+v)", o)
	}
	if o.NodeID == "" {
		o.NodeID = "ratelimit-" + o.Region
	}
	loopback := func() (string, int) { p := FreePort(t); return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), p }
	rl := &RatelimitProcess{nodeID: o.NodeID}
	var httpPort, grpcPort, debugPort int
	rl.httpAddr, httpPort = loopback()
	rl.grpcAddr, grpcPort = loopback()
	if o.GRPCPort != 0 {
		// The routes YAML names this address, so it must stay put across restarts.
		rl.grpcAddr, grpcPort = net.JoinHostPort("127.0.0.1", strconv.Itoa(o.GRPCPort)), o.GRPCPort
	}
	rl.debugAddr, debugPort = loopback()
	rl.metricsAddr, _ = loopback()

	env := []string{
		"CONFIG_TYPE=GRPC_XDS_SOTW",
		"CONFIG_GRPC_XDS_SERVER_URL=" + o.XDSAddr,
		"CONFIG_GRPC_XDS_NODE_ID=" + o.NodeID,
		// Parsed as comma-separated key=value pairs (not key:value).
		"CONFIG_GRPC_XDS_NODE_METADATA=region=" + o.Region,
		// Inert in this version (the go-grpc-middleware retry it feeds has
		// max retries 0); set only so a future version that honours it is fast.
		"CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL=250ms",
		// What does matter: the pause before re-dialling after the ADS stream
		// broke (control plane restarted). Factor 0.5 in the code makes it a
		// constant XDS_CLIENT_BACKOFF_INITIAL_INTERVAL (default 10s).
		"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL=200ms",
		"XDS_CLIENT_BACKOFF_MAX_INTERVAL=2s",
		"FORCE_START_WITHOUT_INITIAL_CONFIG=true",
		"HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true",
		"REDIS_SOCKET_TYPE=tcp",
		"REDIS_TYPE=SINGLE",
		"REDIS_URL=" + o.RedisAddr,
		// Stats go to a Prometheus endpoint (MetricsURL) instead of statsd or
		// the default logging sink, which dumps every counter to stderr.
		"USE_STATSD=false",
		"USE_PROMETHEUS=true",
		"PROMETHEUS_ADDR=" + rl.metricsAddr,
		"STATS_FLUSH_INTERVAL=500ms",
		"LOG_LEVEL=info",
		"LOG_FORMAT=json",
		"HOST=127.0.0.1",
		"PORT=" + strconv.Itoa(httpPort),
		"GRPC_HOST=127.0.0.1",
		"GRPC_PORT=" + strconv.Itoa(grpcPort),
		"DEBUG_HOST=127.0.0.1",
		"DEBUG_PORT=" + strconv.Itoa(debugPort),
	}
	env = append(env, o.ExtraEnv...)
	rl.Env = env
	rl.forceStart, _ = strconv.ParseBool(envValue(env, "FORCE_START_WITHOUT_INITIAL_CONFIG"))

	cmd := exec.Command(Ratelimit(t))
	cmd.Env = env
	cmd.Dir = t.TempDir()
	return rl, cmd
}

// envValue returns the value of the last KEY= entry, as os/exec does.
func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func (rl *RatelimitProcess) waitListening(t testing.TB) {
	t.Helper()
	Eventually(t, RatelimitStartTimeout, 20*time.Millisecond, func() error {
		rl.fatalIfExited(t)
		// /healthcheck answers 200 or 500; any answer means HTTP is up.
		if _, _, err := rl.get(rl.HTTPURL() + "/healthcheck"); err != nil {
			return err
		}
		for _, addr := range []string{rl.grpcAddr, rl.debugAddr} {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
}

func (rl *RatelimitProcess) fatalIfExited(t testing.TB) {
	t.Helper()
	if rl.Exited() {
		t.Fatalf("testenv: ratelimit %s exited (%v):\n%s", rl.Name, rl.waitErr, tail(rl.Log(), logTailLines))
	}
}

// WaitHealthy waits until /healthcheck answers 200. With the default
// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true that means a config with at
// least one domain has been loaded.
func (rl *RatelimitProcess) WaitHealthy(t testing.TB) {
	t.Helper()
	Eventually(t, RatelimitStartTimeout, 20*time.Millisecond, func() error {
		rl.fatalIfExited(t)
		status, body, err := rl.get(rl.HTTPURL() + "/healthcheck")
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("ratelimit %s /healthcheck: HTTP %d %q", rl.Name, status, body)
		}
		return nil
	})
	if !rl.forceStart {
		rl.waitListening(t)
	}
}

// Healthy reports whether /healthcheck answers 200 right now.
func (rl *RatelimitProcess) Healthy() bool {
	status, _, err := rl.get(rl.HTTPURL() + "/healthcheck")
	return err == nil && status == http.StatusOK
}

// GRPCAddr is the RateLimitService (envoy.service.ratelimit.v3) address.
func (rl *RatelimitProcess) GRPCAddr() string { return rl.grpcAddr }

// HTTPAddr serves /healthcheck and /json.
func (rl *RatelimitProcess) HTTPAddr() string { return rl.httpAddr }

// HTTPURL is "http://" + HTTPAddr().
func (rl *RatelimitProcess) HTTPURL() string { return "http://" + rl.httpAddr }

// DebugAddr serves /rlconfig, /stats and pprof.
func (rl *RatelimitProcess) DebugAddr() string { return rl.debugAddr }

// MetricsURL is the Prometheus endpoint (refreshed every STATS_FLUSH_INTERVAL).
func (rl *RatelimitProcess) MetricsURL() string { return "http://" + rl.metricsAddr + "/metrics" }

// Config returns the debug /rlconfig dump of the loaded limits, one line per
// limit such as "llmedge.llmedge_caller_minute.caller_alice: unit=MINUTE
// requests_per_unit=3, shadow_mode: false, quota_mode: false". It is empty
// while no config is loaded.
func (rl *RatelimitProcess) Config(t testing.TB) string {
	t.Helper()
	status, body, err := rl.get("http://" + rl.debugAddr + "/rlconfig")
	if err != nil {
		t.Fatalf("testenv: ratelimit %s GET /rlconfig: %v", rl.Name, err)
	}
	if status != http.StatusOK {
		t.Fatalf("testenv: ratelimit %s GET /rlconfig: HTTP %d %s", rl.Name, status, body)
	}
	return string(body)
}

// Metrics returns the Prometheus text exposition.
func (rl *RatelimitProcess) Metrics(t testing.TB) string {
	t.Helper()
	status, body, err := rl.get(rl.MetricsURL())
	if err != nil || status != http.StatusOK {
		t.Fatalf("testenv: ratelimit %s GET /metrics: %d %v %s", rl.Name, status, err, body)
	}
	return string(body)
}

func (rl *RatelimitProcess) get(url string) (int, []byte, error) {
	resp, err := adminClient.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
