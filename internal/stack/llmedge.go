package stack

import (
	"context"
	"strconv"
	"time"
)

// ControlPlane is how `llmedge controlplane` runs.
type ControlPlane struct {
	Config   string // routes YAML file or directory
	XDSAddr  string // gRPC ADS listen address
	HTTPAddr string // /status /healthz /readyz /metrics
	// WatchHoldoff is the quiet time after a file event; 0 keeps the binary's default.
	WatchHoldoff time.Duration
	// StateDir keeps the last applied routes YAML (--state-dir); "" keeps nothing.
	StateDir  string
	LogLevel  string // default info
	LogFormat string // default json
	// CPUNice lowers the control plane's CPU priority (--cpu-nice); 0 leaves it unchanged.
	CPUNice int
}

// LocalControlPlaneNice is the control plane's niceness in the local stack (make run), where
// it shares the box's cores with Envoy: its pushes and usage ingest yield to requests.
const LocalControlPlaneNice = 10

// Cmd returns the command line of the control plane.
func (c ControlPlane) Cmd(llmedge string) Cmd {
	args := []string{"controlplane",
		"--config", c.Config,
		"--xds-listen", c.XDSAddr,
		"--http-listen", c.HTTPAddr,
	}
	if c.CPUNice != 0 {
		args = append(args, "--cpu-nice", strconv.Itoa(c.CPUNice))
	}
	return llmedgeCmd(llmedge, args, "--watch-holdoff", c.WatchHoldoff, c.StateDir, c.LogFormat, c.LogLevel)
}

// StatusURL is the base URL of the status API, e.g. http://127.0.0.1:18080.
func (c ControlPlane) StatusURL() string { return "http://" + c.HTTPAddr }

// StartControlPlane runs the control plane and returns once its HTTP API answers
// (/healthz; a config that does not validate is still "up": tests write broken YAML on
// purpose). Wait for /readyz with Await(HTTPStatus(...)) when a valid config is expected.
func (r *Runner) StartControlPlane(ctx context.Context, name string, c ControlPlane) (*Process, error) {
	if err := need("llmedge", r.Paths.Llmedge); err != nil {
		return nil, err
	}
	return r.startReady(ctx, name, c.Cmd(r.Paths.Llmedge), LlmedgeStartTimeout, HTTPAnswers(c.StatusURL()+"/healthz"))
}

// ExtAuthz is how `llmedge extauthz` runs for one region.
type ExtAuthz struct {
	Region   string
	XDSAddr  string // the control plane's ADS address
	GRPCAddr string // regions.<region>.extauthz in the routes YAML
	HTTPAddr string // /healthz /readyz /metrics
	KeysDir  string
	// RedisAddr is the region's Redis, the one its ratelimit uses (--redis): request-time
	// quotas are checked there in process. "" leaves them to the failure mode.
	RedisAddr string
	// KeysPoll is the fallback poll interval of the keys directory; 0 keeps the default.
	KeysPoll time.Duration
	// StateDir keeps the last caller policy (--state-dir); "" keeps nothing.
	StateDir  string
	LogLevel  string // default info
	LogFormat string // default json
}

// Cmd returns the command line of extauthz.
func (e ExtAuthz) Cmd(llmedge string) Cmd {
	args := []string{"extauthz",
		"--region", e.Region,
		"--xds", e.XDSAddr,
		"--grpc-listen", e.GRPCAddr,
		"--http-listen", e.HTTPAddr,
		"--keys-dir", e.KeysDir,
	}
	if e.RedisAddr != "" {
		args = append(args, "--redis", e.RedisAddr)
	}
	return llmedgeCmd(llmedge, args, "--keys-poll", e.KeysPoll, e.StateDir, e.LogFormat, e.LogLevel)
}

// EnvoyEnv is the environment of an Envoy that runs this extauthz inside it, as the
// dynamic module in moduleDir (libllmedge.so, extauthz/module): the settings Cmd passes
// as flags, as the variables extauthz.EnvOptions reads, but for GRPCAddr: inside Envoy
// extauthz serves no gRPC. The region comes from the control plane's filter config;
// LLMEDGE_REGION makes the module refuse a config for another region (an Envoy started
// with the wrong bootstrap) instead of serving it.
func (e ExtAuthz) EnvoyEnv(moduleDir string) []string {
	env := []string{
		"ENVOY_DYNAMIC_MODULES_SEARCH_PATH=" + moduleDir,
		"LLMEDGE_REGION=" + e.Region,
		"LLMEDGE_XDS=" + e.XDSAddr,
		"LLMEDGE_HTTP_LISTEN=" + e.HTTPAddr,
		"LLMEDGE_KEYS_DIR=" + e.KeysDir,
		"LLMEDGE_LOG_FORMAT=" + or(e.LogFormat, "json"),
		"LLMEDGE_LOG_LEVEL=" + or(e.LogLevel, "info"),
	}
	if e.RedisAddr != "" {
		env = append(env, "LLMEDGE_REDIS="+e.RedisAddr)
	}
	if e.KeysPoll > 0 {
		env = append(env, "LLMEDGE_KEYS_POLL="+e.KeysPoll.String())
	}
	if e.StateDir != "" {
		env = append(env, "LLMEDGE_STATE_DIR="+e.StateDir)
	}
	return env
}

// StartExtAuthz runs extauthz and returns once it holds its region's policy (/readyz 200).
func (r *Runner) StartExtAuthz(ctx context.Context, name string, e ExtAuthz) (*Process, error) {
	if err := need("llmedge", r.Paths.Llmedge); err != nil {
		return nil, err
	}
	return r.startReady(ctx, name, e.Cmd(r.Paths.Llmedge), LlmedgeStartTimeout, HTTPStatus("http://"+e.HTTPAddr+"/readyz", 200))
}

// Fakellm is how the fake LLM upstream (cmd/fakellm) runs.
type Fakellm struct {
	Addr  string
	Name  string   // default fakellm
	Extra []string // more flags, e.g. --chunks 5
}

// Cmd returns the command line of the fake upstream.
func (f Fakellm) Cmd(fakellm string) Cmd {
	args := append([]string{"--listen", f.Addr, "--name", or(f.Name, "fakellm")}, f.Extra...)
	return Cmd{Path: fakellm, Args: args, Env: BaseEnv()}
}

// StartFakellm runs the fake upstream and returns once /_fake/healthz answers 200.
func (r *Runner) StartFakellm(ctx context.Context, name string, f Fakellm) (*Process, error) {
	if err := need("fakellm", r.Paths.Fakellm); err != nil {
		return nil, err
	}
	return r.startReady(ctx, name, f.Cmd(r.Paths.Fakellm), LlmedgeStartTimeout, HTTPStatus("http://"+f.Addr+"/_fake/healthz", 200))
}

// llmedgeCmd completes an llmedge subcommand's args with the flags both long-running
// commands share: a poll or holdoff interval (0 keeps the binary's default), the state
// directory ("" keeps nothing) and the log settings.
func llmedgeCmd(llmedge string, args []string, intervalFlag string, interval time.Duration, stateDir, logFormat, logLevel string) Cmd {
	args = append(args, "--log-format", or(logFormat, "json"), "--log-level", or(logLevel, "info"))
	if interval > 0 {
		args = append(args, intervalFlag, interval.String())
	}
	if stateDir != "" {
		args = append(args, "--state-dir", stateDir)
	}
	return Cmd{Path: llmedge, Args: args, Env: BaseEnv()}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
