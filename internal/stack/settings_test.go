package stack

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func listen(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func TestRatelimitEnv(t *testing.T) {
	r := Ratelimit{Region: "hk", XDSAddr: "127.0.0.1:18000", RedisAddr: "127.0.0.1:16379",
		GRPCPort: 10300, HTTPPort: 10400, DebugPort: 10500, MetricsPort: 10600}
	env := r.Env()
	want := map[string]string{
		"CONFIG_TYPE":                          "GRPC_XDS_SOTW",
		"CONFIG_GRPC_XDS_NODE_ID":              "ratelimit-hk",
		"CONFIG_GRPC_XDS_NODE_METADATA":        "region=hk",
		"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL":  "500ms",
		"XDS_CLIENT_BACKOFF_MAX_INTERVAL":      "5s",
		"FORCE_START_WITHOUT_INITIAL_CONFIG":   "true",
		"REDIS_URL":                            "127.0.0.1:16379",
		"REDIS_HEALTH_CHECK_ACTIVE_CONNECTION": "true",
		"USE_STATSD":                           "false",
		"PROMETHEUS_ADDR":                      "127.0.0.1:10600",
		"LOG_LEVEL":                            "warn",
		"HOST":                                 "127.0.0.1",
		"GRPC_PORT":                            "10300",
		"DEBUG_PORT":                           "10500",
	}
	for k, v := range want {
		if got := EnvValue(env, k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if EnvValue(env, "STATS_FLUSH_INTERVAL") != "" {
		t.Error("STATS_FLUSH_INTERVAL set by default")
	}
	if !r.ForceStart() || r.GRPCAddr() != "127.0.0.1:10300" || r.MetricsURL() != "http://127.0.0.1:10600/metrics" {
		t.Errorf("ForceStart %v, GRPCAddr %s, MetricsURL %s", r.ForceStart(), r.GRPCAddr(), r.MetricsURL())
	}

	r.LogLevel, r.BackoffInitial, r.StatsFlush = "info", 200*time.Millisecond, 500*time.Millisecond
	r.Extra = []string{"FORCE_START_WITHOUT_INITIAL_CONFIG=false"}
	env = r.Env()
	if EnvValue(env, "LOG_LEVEL") != "info" || EnvValue(env, "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL") != "200ms" || EnvValue(env, "STATS_FLUSH_INTERVAL") != "500ms" {
		t.Errorf("overrides not applied: %v", env)
	}
	if r.ForceStart() {
		t.Error("Extra FORCE_START_WITHOUT_INITIAL_CONFIG=false does not win")
	}
	if c := r.Cmd("/bin/ratelimit"); len(c.Args) != 0 || !slices.Equal(c.Env[:2], BaseEnv()) || len(c.Env) != 2+len(env) {
		t.Errorf("Cmd = %+v, want no arguments and BaseEnv + Env", c)
	}
}

func TestRatelimitEnvOnSockets(t *testing.T) {
	r := Ratelimit{Region: "hk", XDSAddr: "unix:/s/xds.sock", RedisAddr: "unix:/s/redis.sock",
		GRPCSocket: "/s/ratelimit-hk.sock", HTTPPort: 10400, DebugPort: 10500, MetricsPort: 10600}
	env := r.Env()
	for k, v := range map[string]string{
		"CONFIG_GRPC_XDS_SERVER_URL": "unix:/s/xds.sock",
		"REDIS_SOCKET_TYPE":          "unix",
		"REDIS_URL":                  "/s/redis.sock",
		"GRPC_UDS":                   "/s/ratelimit-hk.sock",
		"GRPC_PORT":                  "",
		"GRPC_HOST":                  "",
	} {
		if got := EnvValue(env, k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if r.GRPCAddr() != "unix:/s/ratelimit-hk.sock" {
		t.Errorf("GRPCAddr = %q", r.GRPCAddr())
	}
}

func TestCommandLines(t *testing.T) {
	for name, c := range map[string]struct {
		cmd  Cmd
		want []string
	}{
		"controlplane": {ControlPlane{Config: "r.yaml", XDSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2", WatchHoldoff: 50 * time.Millisecond}.Cmd("llmedge"),
			[]string{"controlplane", "--config", "r.yaml", "--xds-listen", "127.0.0.1:1", "--http-listen", "127.0.0.1:2", "--log-format", "json", "--log-level", "info", "--watch-holdoff", "50ms"}},
		"controlplane yielding the CPU": {ControlPlane{Config: "r.yaml", XDSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2", CPUNice: LocalControlPlaneNice}.Cmd("llmedge"),
			[]string{"controlplane", "--config", "r.yaml", "--xds-listen", "127.0.0.1:1", "--http-listen", "127.0.0.1:2", "--cpu-nice", "10", "--log-format", "json", "--log-level", "info"}},
		"extauthz": {ExtAuthz{Region: "sg", XDSAddr: "x:1", GRPCAddr: "g:2", HTTPAddr: "h:3", KeysDir: "/k", LogLevel: "debug"}.Cmd("llmedge"),
			[]string{"extauthz", "--region", "sg", "--xds", "x:1", "--grpc-listen", "g:2", "--http-listen", "h:3", "--keys-dir", "/k", "--log-format", "json", "--log-level", "debug"}},
		"fakellm": {Fakellm{Addr: "127.0.0.1:8090", Extra: []string{"--chunks", "5"}}.Cmd("fakellm"),
			[]string{"--listen", "127.0.0.1:8090", "--name", "fakellm", "--chunks", "5"}},
		"redis": {Redis{Port: 6379, Dir: "/d"}.Cmd("redis-server"),
			[]string{"--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "/d", "--daemonize", "no", "--logfile", ""}},
		"redis on a socket": {Redis{Socket: "/s/redis.sock", Dir: "/d"}.Cmd("redis-server"),
			[]string{"--port", "0", "--unixsocket", "/s/redis.sock", "--unixsocketperm", "600", "--save", "", "--appendonly", "no", "--dir", "/d", "--daemonize", "no", "--logfile", ""}},
		"envoy": {Envoy{Concurrency: 2}.Cmd("envoy", "/b.yaml", "/b.admin"),
			[]string{"-c", "/b.yaml", "--disable-hot-restart", "--concurrency", "2", "--admin-address-path", "/b.admin", "--drain-time-s", "5", "--drain-strategy", "immediate", "-l", "warning"}},
		"bootstrap": {Envoy{Region: "hk", XDSAddr: "127.0.0.1:18000", AdminPort: 9901}.BootstrapCmd("llmedge"),
			[]string{"bootstrap", "--region", "hk", "--node-id", "envoy-hk-1", "--admin-port", "9901", "--xds", "127.0.0.1:18000"}},
	} {
		if !slices.Equal(c.cmd.Args, c.want) {
			t.Errorf("%s args = %q, want %q", name, c.cmd.Args, c.want)
		}
		if !slices.Equal(c.cmd.Env, BaseEnv()) {
			t.Errorf("%s env = %q, want BaseEnv", name, c.cmd.Env)
		}
	}
}

func TestChecks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			return
		}
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := HTTPStatus(srv.URL+"/readyz", 200)(ctx); err != nil {
		t.Error(err)
	}
	if err := HTTPStatus(srv.URL+"/other", 200)(ctx); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("HTTPStatus on a 503: %v", err)
	}
	if err := HTTPAnswers(srv.URL + "/other")(ctx); err != nil {
		t.Errorf("HTTPAnswers on a 503: %v", err)
	}
	if err := TCPOpen(srv.Listener.Addr().String())(ctx); err != nil {
		t.Error(err)
	}
	err := Poll(ctx, 30*time.Millisecond, 5*time.Millisecond, func(context.Context) error { return context.DeadlineExceeded })
	if err == nil || !strings.Contains(err.Error(), "not ready within 30ms") {
		t.Errorf("Poll at the deadline: %v", err)
	}
}
