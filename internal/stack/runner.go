package stack

import (
	"context"
	"path/filepath"
	"time"
)

// How long each component may take to become ready after it started.
const (
	RedisStartTimeout     = 10 * time.Second
	RatelimitStartTimeout = 20 * time.Second
	EnvoyStartTimeout     = 30 * time.Second
	LlmedgeStartTimeout   = 15 * time.Second // controlplane, extauthz, fakellm
)

// Runner starts components: which programs it runs and where their files go.
type Runner struct {
	Paths Paths
	// Dir holds generated files (Envoy bootstraps, admin address files, Redis's dir).
	Dir string
	// LogDir holds <name>.log for every process; default Dir.
	LogDir string
	// Override, if set, may change every command Start runs; nil runs the settings as
	// they are.
	Override Override
}

func (r *Runner) logPath(name string) string {
	dir := r.LogDir
	if dir == "" {
		dir = r.Dir
	}
	return filepath.Join(dir, name+".log")
}

// Start runs c as name with its log in LogDir.
func (r *Runner) Start(name string, c Cmd) (*Process, error) {
	if r.Override != nil {
		var err error
		if c, err = r.Override(name, c); err != nil {
			return nil, err
		}
	}
	return Start(name, r.logPath(name), c)
}

// startReady starts c and waits for ready; on failure the process is stopped.
func (r *Runner) startReady(ctx context.Context, name string, c Cmd, timeout time.Duration, ready Check) (*Process, error) {
	p, err := r.Start(name, c)
	if err != nil {
		return nil, err
	}
	if err := p.Await(ctx, timeout, ready); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}
