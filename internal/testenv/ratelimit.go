package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// RedisStartTimeout bounds how long StartRedis and Restart wait for PING.
const RedisStartTimeout = stack.RedisStartTimeout

// RatelimitStartTimeout bounds how long StartRatelimit waits for the listeners
// and WaitHealthy for /healthcheck to answer 200.
const RatelimitStartTimeout = stack.RatelimitStartTimeout

// Redis is a redis-server started by StartRedis. It keeps its port across
// Stop/Kill and Restart, so a client configured with Addr() reconnects to the
// new process. Nothing is persisted: a restarted Redis starts empty.
type Redis struct {
	r *stack.RedisProcess
}

// StartRedis runs redis-server on a FreePort of 127.0.0.1 without persistence
// and returns once it answers PING.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	return startRedis(t, stack.Redis{Port: FreePort(t), Dir: t.TempDir()})
}

// StartRedisSocket runs redis-server on the unix socket path only (no TCP port), as
// a stack does (stack.Sockets.Redis); the path's directory must exist and be private.
func StartRedisSocket(t testing.TB, path string) *Redis {
	t.Helper()
	return startRedis(t, stack.Redis{Socket: path, Dir: t.TempDir()})
}

func startRedis(t testing.TB, s stack.Redis) *Redis {
	t.Helper()
	run := runner(t, stack.Paths{RedisServer: RedisServer(t)})
	rp, err := run.StartRedis(t.Context(), s)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	r := &Redis{r: rp}
	r.adopt(t)
	return r
}

// adopt stops the current process when the test ends.
func (r *Redis) adopt(t testing.TB) { adopt(t, r.r.Process()) }

// Addr returns host:port, e.g. 127.0.0.1:23456, or unix:/path (ratelimit's RedisAddr).
func (r *Redis) Addr() string { return r.r.Addr() }

// Port returns the TCP port; it stays the same across Restart.
func (r *Redis) Port() int { return r.r.Port }

// Process returns the current redis-server process (a new one after Restart).
func (r *Redis) Process() *Process { return &Process{r.r.Process()} }

// Stop shuts the current process down with SIGTERM (SIGKILL after StopGrace).
func (r *Redis) Stop() { r.r.Stop() }

// Kill ends the current process with SIGKILL: clients see their connections
// reset instead of a clean close.
func (r *Redis) Kill() { r.r.Kill() }

// Restart stops the current process if it still runs and starts a new one on
// the same port, returning once it answers PING. Its data is gone.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	if err := r.r.Restart(t.Context()); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	r.adopt(t)
}

// Do sends one command and returns its reply: string for simple and bulk
// strings, int64 for integers, []any for arrays, nil for a null reply. A Redis
// error reply is returned as an error. For test set-up, e.g. Do("FLUSHALL").
func (r *Redis) Do(args ...string) (any, error) { return r.r.Do(context.Background(), args...) }

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
	// GRPCSocket, when set, is the unix socket Envoy reaches it on (GRPC_UDS) instead.
	GRPCSocket string
	// ExtraEnv entries (KEY=VALUE) come last and so override the defaults,
	// e.g. "LIMIT_RESPONSE_HEADERS_ENABLED=true" or
	// "FORCE_START_WITHOUT_INITIAL_CONFIG=false".
	ExtraEnv []string
}

// Settings returns the stack settings StartRatelimit runs with: stack's defaults plus
// what makes tests quick and debuggable (info logs, a 200 ms re-dial pause after the
// control plane went away, metrics flushed every 500 ms).
func (o RatelimitOptions) Settings() stack.Ratelimit {
	return stack.Ratelimit{
		Region: o.Region, NodeID: o.NodeID, XDSAddr: o.XDSAddr, RedisAddr: o.RedisAddr,
		GRPCPort:       o.GRPCPort,
		GRPCSocket:     o.GRPCSocket,
		LogLevel:       "info",
		BackoffInitial: 200 * time.Millisecond,
		BackoffMax:     2 * time.Second,
		StatsFlush:     500 * time.Millisecond,
		Extra:          o.ExtraEnv,
	}
}

// RatelimitProcess is a running envoyproxy/ratelimit started by StartRatelimit.
type RatelimitProcess struct {
	*Process
	// Env is the complete environment it was started with.
	Env []string

	rl *stack.RatelimitProcess
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
	if o.Region == "" || o.XDSAddr == "" || o.RedisAddr == "" {
		t.Fatalf("testenv: StartRatelimit: Region, XDSAddr and RedisAddr are required (got %+v)", o)
	}
	s := o.Settings()
	name := or(s.NodeID, "ratelimit-"+s.Region)
	run := runner(t, stack.Paths{Ratelimit: Ratelimit(t)})
	rl, err := run.StartRatelimit(t.Context(), name, s)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p := &RatelimitProcess{Process: adopt(t, rl.Process), Env: rl.Cmd.Env, rl: rl}
	forceStart := s.ForceStart()
	// Runs before adopt's cleanup (LIFO). Until its first config ratelimit catches
	// SIGTERM (its health checker) without exiting, so Stop would wait the whole
	// StopGrace.
	t.Cleanup(func() {
		if !forceStart && !strings.Contains(p.Log(), "Successfully loaded the initial ratelimit configs") {
			p.Kill()
		}
	})
	if !forceStart {
		p.WaitLog(t, "Waiting for initial ratelimit config update event", RatelimitStartTimeout)
	}
	return p
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (rl *RatelimitProcess) fatalIfExited(t testing.TB) {
	t.Helper()
	if rl.Exited() {
		t.Fatalf("testenv: %v:\n%s", rl.ExitError(), rl.LogTail(logTailLines))
	}
}

// WaitHealthy waits until /healthcheck answers 200. With the default
// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true that means a config with at
// least one domain has been loaded.
func (rl *RatelimitProcess) WaitHealthy(t testing.TB) {
	t.Helper()
	if err := rl.rl.WaitHealthy(t.Context(), RatelimitStartTimeout); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Healthy reports whether /healthcheck answers 200 right now.
func (rl *RatelimitProcess) Healthy() bool { return rl.rl.Healthy(context.Background()) }

// GRPCAddr is the RateLimitService (envoy.service.ratelimit.v3) address.
func (rl *RatelimitProcess) GRPCAddr() string { return rl.rl.GRPCAddr() }

// HTTPAddr serves /healthcheck and /json.
func (rl *RatelimitProcess) HTTPAddr() string { return rl.rl.HTTPAddr() }

// HTTPURL is "http://" + HTTPAddr().
func (rl *RatelimitProcess) HTTPURL() string { return "http://" + rl.rl.HTTPAddr() }

// DebugAddr serves /rlconfig, /stats and pprof.
func (rl *RatelimitProcess) DebugAddr() string { return rl.rl.DebugAddr() }

// MetricsURL is the Prometheus endpoint (refreshed every STATS_FLUSH_INTERVAL).
func (rl *RatelimitProcess) MetricsURL() string { return rl.rl.MetricsURL() }

// Config returns the debug /rlconfig dump of the loaded limits, one line per
// limit such as "llmedge.llmedge_caller_minute.caller_alice: unit=MINUTE
// requests_per_unit=3, shadow_mode: false, quota_mode: false". It is empty
// while no config is loaded.
func (rl *RatelimitProcess) Config(t testing.TB) string {
	t.Helper()
	cfg, err := rl.rl.Config(context.Background())
	if err != nil {
		t.Fatalf("testenv: ratelimit %s GET /rlconfig: %v", rl.Name, err)
	}
	return cfg
}

// Metrics returns the Prometheus text exposition.
func (rl *RatelimitProcess) Metrics(t testing.TB) string {
	t.Helper()
	m, err := rl.rl.Metrics(context.Background())
	if err != nil {
		t.Fatalf("testenv: ratelimit %s GET /metrics: %v", rl.Name, err)
	}
	return m
}
