package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Envoy is how one Envoy runs.
type Envoy struct {
	// Region, NodeID (default envoy-<Region>-1), XDSAddr and AdminPort render the
	// bootstrap (`llmedge bootstrap`) unless Bootstrap names a ready one.
	Region, NodeID string
	XDSAddr        string // the control plane's ADS host:port
	// AdminPort 0 lets the kernel choose; the address is read back either way.
	AdminPort int
	Bootstrap string
	// Concurrency is --concurrency (worker threads); default 1.
	Concurrency int
	// DrainTime is how long a draining Envoy keeps accepting connections (each answered
	// with Connection: close) before it closes its listeners: --drain-time-s, whole
	// seconds; default DefaultDrainTime. A load balancer in front must notice /ready
	// turning 503 within it.
	DrainTime time.Duration
	// DrainTimeout bounds how long Stop then waits for requests in flight before the
	// SIGTERM that cuts them; default DefaultDrainTimeout.
	DrainTimeout time.Duration
	LogLevel     string // default warning
	Extra        []string
	// Env is added to Envoy's environment: extauthz's settings when Envoy runs it as a
	// dynamic module (ExtAuthz.EnvoyEnv).
	Env []string
}

// BootstrapCmd returns the `llmedge bootstrap` command that prints e's bootstrap
// (controlplane/bootstrap renders it; running the binary keeps this package free of the
// control plane's packages, whose own tests start Envoys through it).
func (e Envoy) BootstrapCmd(llmedge string) Cmd {
	return Cmd{Path: llmedge, Env: BaseEnv(), Args: []string{"bootstrap",
		"--region", e.Region,
		"--node-id", or(e.NodeID, "envoy-"+e.Region+"-1"),
		"--admin-port", strconv.Itoa(e.AdminPort),
		"--xds", e.XDSAddr,
	}}
}

// RenderBootstrap returns the bootstrap YAML for e's region.
func (e Envoy) RenderBootstrap(ctx context.Context, llmedge string) ([]byte, error) {
	if err := need("llmedge", llmedge); err != nil {
		return nil, err
	}
	c := e.BootstrapCmd(llmedge)
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = c.Env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("stack: envoy %s bootstrap: %w: %s", e.Region, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// Cmd returns Envoy's command line for the bootstrap file and the file Envoy writes
// its admin address to once the admin listener is bound.
func (e Envoy) Cmd(envoy, bootstrapPath, adminAddressPath string) Cmd {
	concurrency := e.Concurrency
	if concurrency == 0 {
		concurrency = 1
	}
	args := []string{
		"-c", bootstrapPath,
		// Hot restart needs a shared-memory region keyed by --base-id; two Envoys on
		// one host would clash on it.
		"--disable-hot-restart",
		"--concurrency", strconv.Itoa(concurrency),
		"--admin-address-path", adminAddressPath,
		// Used by POST /drain_listeners?graceful (drain.go): how long listeners stay
		// open, every response asking the client to close its connection ("immediate"
		// rather than a probability rising over the drain time).
		"--drain-time-s", strconv.Itoa(e.drainSeconds()),
		"--drain-strategy", "immediate",
		"-l", or(e.LogLevel, "warning"),
	}
	return Cmd{Path: envoy, Args: append(args, e.Extra...), Env: append(BaseEnv(), e.Env...)}
}

// EnvoyProcess is a running Envoy.
type EnvoyProcess struct {
	*Process
	adminURL string
	settings Envoy

	mu       sync.Mutex
	drainErr error // set by Stop's drain
}

// StartEnvoy writes the bootstrap (unless e.Bootstrap is set) to <dir>/<name>.yaml, runs
// Envoy and returns once its admin API answers. /ready stays 503 until the first config
// arrives from the control plane; wait for that with WaitLive.
func (r *Runner) StartEnvoy(ctx context.Context, name string, e Envoy) (*EnvoyProcess, error) {
	if err := need(ToolEnvoy, r.Paths.Envoy); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, err
	}
	path := e.Bootstrap
	if path == "" {
		b, err := e.RenderBootstrap(ctx, r.Paths.Llmedge)
		if err != nil {
			return nil, err
		}
		path = filepath.Join(r.Dir, name+".yaml")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return nil, err
		}
	}
	adminPath := filepath.Join(r.Dir, name+".admin")
	_ = os.Remove(adminPath) // a stale file from an earlier run would point elsewhere
	p, err := r.Start(name, e.Cmd(r.Paths.Envoy, path, adminPath))
	if err != nil {
		return nil, err
	}
	ep := &EnvoyProcess{Process: p, settings: e}
	err = p.Await(ctx, EnvoyStartTimeout, func(ctx context.Context) error {
		b, err := os.ReadFile(adminPath)
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			return fmt.Errorf("envoy %s has not written %s yet", name, adminPath)
		}
		url := "http://" + strings.TrimSpace(string(b))
		// Any HTTP answer proves the admin API is up.
		if err := HTTPAnswers(url + "/ready")(ctx); err != nil {
			return err
		}
		ep.adminURL = url
		return nil
	})
	if err != nil {
		p.Stop()
		return nil, err
	}
	// Set once the admin API answers: a drain needs it. The error is kept for DrainErr;
	// SIGTERM follows either way.
	p.beforeStop = func() {
		err := ep.Drain(context.Background())
		ep.mu.Lock()
		ep.drainErr = err
		ep.mu.Unlock()
	}
	return ep, nil
}

// DrainErr returns what went wrong when Stop drained Envoy: nil if the drain finished,
// or Stop has not drained (yet).
func (e *EnvoyProcess) DrainErr() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.drainErr
}

// AdminURL returns the admin API base URL, e.g. http://127.0.0.1:40123.
func (e *EnvoyProcess) AdminURL() string { return e.adminURL }

// AdminGet GETs path (e.g. "/stats?filter=xds") from the admin API.
func (e *EnvoyProcess) AdminGet(ctx context.Context, path string) (int, []byte, error) {
	return Get(ctx, e.adminURL+path)
}

// ConfigDump returns the admin /config_dump JSON.
func (e *EnvoyProcess) ConfigDump(ctx context.Context) ([]byte, error) {
	status, body, err := e.AdminGet(ctx, "/config_dump")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, errors.New("envoy " + e.Name + " /config_dump: HTTP " + strconv.Itoa(status))
	}
	return body, nil
}

// WaitLive waits until /ready answers 200: Envoy has its first config and serves.
func (e *EnvoyProcess) WaitLive(ctx context.Context) error {
	return e.Await(ctx, EnvoyStartTimeout, HTTPStatus(e.adminURL+"/ready", http.StatusOK))
}
