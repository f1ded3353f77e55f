package stack

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/transport"
)

// Ratelimit is how envoyproxy/ratelimit runs for one region: limits over xDS from the
// control plane (CONFIG_TYPE=GRPC_XDS_SOTW), counters in Redis. The zero values
// of the knobs are the production settings compose.yaml uses too (deploy/compose_test.go
// compares them); tests override a few to be quicker.
type Ratelimit struct {
	Region string // sent as node metadata region=<Region>: ratelimit sends no locality
	NodeID string // node.id; default ratelimit-<Region>
	// XDSAddr is the control plane's ADS (unix:/path or host:port); RedisAddr is
	// Redis's (unix:/path, sent as REDIS_SOCKET_TYPE=unix, or host:port). Redis must
	// answer before ratelimit starts: it PINGs once and exits if that fails.
	XDSAddr, RedisAddr string
	// GRPCSocket, when set, is where RateLimitService listens (GRPC_UDS) instead of
	// Host:GRPCPort.
	GRPCSocket string
	// Host is the address every listener binds; default 127.0.0.1 (ratelimit's own
	// default is 0.0.0.0).
	Host string
	// GRPCPort serves RateLimitService (regions.<region>.ratelimit), HTTPPort
	// /healthcheck, DebugPort /rlconfig, MetricsPort Prometheus /metrics.
	GRPCPort, HTTPPort, DebugPort, MetricsPort int

	LogLevel string // default warn
	// BackoffInitial and BackoffMax pace re-dialling a control plane that went away;
	// default 500ms and 5s (ratelimit's own default is 10s).
	BackoffInitial, BackoffMax time.Duration
	// StatsFlush is how often /metrics is refreshed; 0 keeps ratelimit's default.
	StatsFlush time.Duration
	// Extra entries (KEY=VALUE) come last and so override the above, e.g.
	// LIMIT_RESPONSE_HEADERS_ENABLED=true or FORCE_START_WITHOUT_INITIAL_CONFIG=false.
	Extra []string
}

// Env returns ratelimit's settings as environment entries (without BaseEnv), in a fixed
// order. This is the one place they are written.
func (r Ratelimit) Env() []string {
	host := or(r.Host, "127.0.0.1")
	redisType, redisURL := "tcp", r.RedisAddr
	if path, ok := strings.CutPrefix(r.RedisAddr, transport.UnixPrefix); ok {
		redisType, redisURL = "unix", path
	}
	env := []string{
		"CONFIG_TYPE=GRPC_XDS_SOTW",
		"CONFIG_GRPC_XDS_SERVER_URL=" + r.XDSAddr,
		"CONFIG_GRPC_XDS_NODE_ID=" + or(r.NodeID, "ratelimit-"+r.Region),
		// Parsed as comma-separated key=value pairs (not key:value).
		"CONFIG_GRPC_XDS_NODE_METADATA=region=" + r.Region,
		// The pause before re-dialling after the ADS stream broke (control plane
		// restarted). Factor 0.5 in the code makes it a constant initial interval.
		"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL=" + durationOr(r.BackoffInitial, 500*time.Millisecond),
		"XDS_CLIENT_BACKOFF_MAX_INTERVAL=" + durationOr(r.BackoffMax, 5*time.Second),
		// Listen at once; /healthcheck is 500 until a config with a domain is loaded.
		"FORCE_START_WITHOUT_INITIAL_CONFIG=true",
		"HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true",
		"REDIS_SOCKET_TYPE=" + redisType,
		"REDIS_TYPE=SINGLE",
		"REDIS_URL=" + redisURL,
		// The gRPC health service (and /healthcheck) turns NOT_SERVING once the last
		// Redis connection is gone and SERVING when one is made again. Envoy's health
		// check of the ratelimit cluster (controlplane/translate) follows it, so with
		// Redis down Envoy stops calling a service that could only time out.
		"REDIS_HEALTH_CHECK_ACTIVE_CONNECTION=true",
		// Stats go to a Prometheus endpoint instead of statsd or the default logging
		// sink, which writes every counter to stderr.
		"USE_STATSD=false",
		"USE_PROMETHEUS=true",
		"PROMETHEUS_ADDR=" + net.JoinHostPort(host, strconv.Itoa(r.MetricsPort)),
		"LOG_LEVEL=" + or(r.LogLevel, "warn"),
		"LOG_FORMAT=json",
		"HOST=" + host,
		"PORT=" + strconv.Itoa(r.HTTPPort),
		"DEBUG_HOST=" + host,
		"DEBUG_PORT=" + strconv.Itoa(r.DebugPort),
	}
	if r.GRPCSocket != "" {
		// ratelimit then ignores GRPC_HOST and GRPC_PORT.
		env = append(env, "GRPC_UDS="+r.GRPCSocket)
	} else {
		env = append(env, "GRPC_HOST="+host, "GRPC_PORT="+strconv.Itoa(r.GRPCPort))
	}
	if r.StatsFlush > 0 {
		env = append(env, "STATS_FLUSH_INTERVAL="+r.StatsFlush.String())
	}
	return append(env, r.Extra...)
}

// Cmd returns ratelimit's command: no arguments, BaseEnv plus Env.
func (r Ratelimit) Cmd(ratelimit string) Cmd {
	return Cmd{Path: ratelimit, Env: append(BaseEnv(), r.Env()...)}
}

// ForceStart reports whether the listeners open before the first config arrives.
func (r Ratelimit) ForceStart() bool {
	v, _ := strconv.ParseBool(EnvValue(r.Env(), "FORCE_START_WITHOUT_INITIAL_CONFIG"))
	return v
}

func (r Ratelimit) host() string { return or(r.Host, "127.0.0.1") }

// GRPCAddr is the RateLimitService address: unix:<GRPCSocket> or host:port.
func (r Ratelimit) GRPCAddr() string {
	if r.GRPCSocket != "" {
		return Unix(r.GRPCSocket)
	}
	return net.JoinHostPort(r.host(), strconv.Itoa(r.GRPCPort))
}

// HTTPAddr serves /healthcheck and /json.
func (r Ratelimit) HTTPAddr() string { return net.JoinHostPort(r.host(), strconv.Itoa(r.HTTPPort)) }

// DebugAddr serves /rlconfig, /stats and pprof.
func (r Ratelimit) DebugAddr() string { return net.JoinHostPort(r.host(), strconv.Itoa(r.DebugPort)) }

// MetricsURL is the Prometheus endpoint.
func (r Ratelimit) MetricsURL() string {
	return "http://" + net.JoinHostPort(r.host(), strconv.Itoa(r.MetricsPort)) + "/metrics"
}

// EnvValue returns the value of the last KEY= entry, as os/exec does.
func EnvValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func durationOr(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return d.String()
}

// RatelimitProcess is a running envoyproxy/ratelimit.
type RatelimitProcess struct {
	*Process
	// Settings are what it runs with, ports filled in.
	Settings Ratelimit
}

// GRPCAddr is the RateLimitService address.
func (rl *RatelimitProcess) GRPCAddr() string { return rl.Settings.GRPCAddr() }

// HTTPAddr serves /healthcheck and /json.
func (rl *RatelimitProcess) HTTPAddr() string { return rl.Settings.HTTPAddr() }

// DebugAddr serves /rlconfig, /stats and pprof.
func (rl *RatelimitProcess) DebugAddr() string { return rl.Settings.DebugAddr() }

// MetricsURL is the Prometheus endpoint.
func (rl *RatelimitProcess) MetricsURL() string { return rl.Settings.MetricsURL() }

// StartRatelimit runs ratelimit. Zero ports are given free ones. With the default
// FORCE_START_WITHOUT_INITIAL_CONFIG=true it returns once the HTTP, gRPC and debug
// listeners accept connections (ShouldRateLimit fails and /healthcheck answers 500 until
// a config with a domain arrives; see WaitHealthy). Otherwise ratelimit opens nothing
// before its first config, and StartRatelimit returns once it runs.
func (r *Runner) StartRatelimit(ctx context.Context, name string, s Ratelimit) (*RatelimitProcess, error) {
	if err := need(ToolRatelimit, r.Paths.Ratelimit); err != nil {
		return nil, err
	}
	if s.Region == "" || s.XDSAddr == "" || s.RedisAddr == "" {
		return nil, fmt.Errorf("stack: ratelimit %s: Region, XDSAddr and RedisAddr are required", name)
	}
	for _, p := range []*int{&s.GRPCPort, &s.HTTPPort, &s.DebugPort, &s.MetricsPort} {
		if *p == 0 && (p != &s.GRPCPort || s.GRPCSocket == "") {
			port, err := FreePort()
			if err != nil {
				return nil, err
			}
			*p = port
		}
	}
	if s.GRPCSocket != "" {
		// ratelimit binds the path without removing a socket a killed predecessor left.
		if err := transport.RemoveStaleSocket(s.GRPCSocket); err != nil {
			return nil, fmt.Errorf("stack: ratelimit %s: %w", name, err)
		}
	}
	c := s.Cmd(r.Paths.Ratelimit)
	c.Dir = r.Dir
	p, err := r.Start(name, c)
	if err != nil {
		return nil, err
	}
	rl := &RatelimitProcess{Process: p, Settings: s}
	if s.ForceStart() {
		if err := p.Await(ctx, RatelimitStartTimeout, rl.listening()); err != nil {
			p.Stop()
			return nil, err
		}
	}
	return rl, nil
}

// listening passes once /healthcheck answers (200 or 500) and gRPC and debug accept.
func (rl *RatelimitProcess) listening() Check {
	return All(HTTPAnswers("http://"+rl.HTTPAddr()+"/healthcheck"), TCPOpen(rl.GRPCAddr()), TCPOpen(rl.DebugAddr()))
}

// WaitHealthy waits until /healthcheck answers 200: with
// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED=true, a config with a domain is loaded.
func (rl *RatelimitProcess) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	return rl.Await(ctx, timeout, All(HTTPStatus("http://"+rl.HTTPAddr()+"/healthcheck", http.StatusOK), rl.listening()))
}

// Healthy reports whether /healthcheck answers 200 right now.
func (rl *RatelimitProcess) Healthy(ctx context.Context) bool {
	status, _, err := Get(ctx, "http://"+rl.HTTPAddr()+"/healthcheck")
	return err == nil && status == http.StatusOK
}

// Config returns the debug /rlconfig dump of the loaded limits, one line per limit
// ("llmedge.llmedge_caller_minute.caller_alice: unit=MINUTE requests_per_unit=3, ...");
// empty while no config is loaded.
func (rl *RatelimitProcess) Config(ctx context.Context) (string, error) {
	return getOK(ctx, "http://"+rl.DebugAddr()+"/rlconfig")
}

// Metrics returns the Prometheus text exposition.
func (rl *RatelimitProcess) Metrics(ctx context.Context) (string, error) {
	return getOK(ctx, rl.MetricsURL())
}

func getOK(ctx context.Context, url string) (string, error) {
	status, body, err := Get(ctx, url)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("GET %s: HTTP %d %.200q", url, status, body)
	}
	return string(body), nil
}
