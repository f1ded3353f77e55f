package stack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StopGrace is how long Stop waits after SIGTERM before sending SIGKILL. Envoy drains
// listeners on SIGTERM, which can outlast a caller's patience.
const StopGrace = 5 * time.Second

// Cmd is how one component runs: the program, its arguments and its whole environment.
type Cmd struct {
	Path string
	Args []string
	// Env is the complete environment (BaseEnv plus the component's settings); nil
	// means BaseEnv, never the caller's.
	Env []string
	Dir string
}

// BaseEnv is what every child starts from: PATH and HOME, nothing else. The caller's
// environment may hold provider keys (OPENAI_API_KEY...) and LLMEDGE_* overrides that a
// component must not see.
func BaseEnv() []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	home := os.Getenv("HOME")
	if home == "" {
		home = os.TempDir()
	}
	return []string{"PATH=" + path, "HOME=" + home}
}

// Process is a child process with its output in a log file.
type Process struct {
	Name string
	Cmd  *exec.Cmd

	logPath string
	done    chan struct{}
	waitErr error

	stopOnce sync.Once
	// beforeStop, if set, runs before Stop's SIGTERM while the process still runs (an
	// Envoy drains there).
	beforeStop func()
}

// Start runs c as the process called name, its stdout and stderr written to logPath
// (created, with its directory).
func Start(name, logPath string, c Cmd) (*Process, error) {
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = c.Env
	cmd.Dir = c.Dir
	return StartCmd(name, logPath, cmd)
}

// StartCmd runs cmd in its own process group, killed with the parent (Linux), its
// stdout and stderr written to logPath. cmd.Stdout and cmd.Stderr must be unset; a nil
// cmd.Env is replaced by BaseEnv (never the parent's environment).
func StartCmd(name, logPath string, cmd *exec.Cmd) (*Process, error) {
	if cmd.Stdout != nil || cmd.Stderr != nil {
		return nil, fmt.Errorf("stack: start %s: cmd.Stdout/Stderr must be nil; output goes to the log file", name)
	}
	if cmd.Path == "" {
		return nil, fmt.Errorf("stack: start %s: no program", name)
	}
	if cmd.Env == nil {
		cmd.Env = BaseEnv()
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("stack: start %s: %w", name, err)
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("stack: start %s: %w", name, err)
	}
	defer f.Close() // the child holds its own copy of the descriptor
	// A file, not a pipe: the child writes to it directly, so nothing is lost or
	// blocked when this process is slow, and Log reads it back.
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A group of its own lets Stop signal everything the child forked (shell wrappers
	// and their children) in one kill(2), and keeps a terminal's Ctrl-C for the parent,
	// which then stops the children in order.
	cmd.SysProcAttr.Setpgid = true
	setParentDeathSignal(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("stack: start %s: %w", name, err)
	}
	p := &Process{Name: name, Cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id, which is also its process group id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// LogPath returns the file the output is written to.
func (p *Process) LogPath() string { return p.logPath }

// Log returns everything the process has written to stdout and stderr so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// LogTail returns the last n lines of the log.
func (p *Process) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait blocks until the process exits and returns its exit error, as exec.Cmd.Wait does.
func (p *Process) Wait() error {
	<-p.done
	return p.waitErr
}

// WaitTimeout is Wait with a limit; ok is false if the process still runs after d.
func (p *Process) WaitTimeout(d time.Duration) (err error, ok bool) {
	select {
	case <-p.done:
		return p.waitErr, true
	case <-time.After(d):
		return nil, false
	}
}

// ExitError describes how the process ended, naming its log: "envoy-hk exited (exit
// status 1); see .run/logs/envoy-hk.log". Only meaningful once Exited.
func (p *Process) ExitError() error {
	return fmt.Errorf("%s exited (%v); see %s", p.Name, p.waitErr, p.logPath)
}

// Stop sends SIGTERM to the process group, waits up to StopGrace, then sends SIGKILL.
// A process that drains first (an Envoy: EnvoyProcess.Drain) does so before the SIGTERM.
// It returns once the process has exited; calling it again is a no-op.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
		if !p.Exited() && p.beforeStop != nil {
			p.beforeStop()
		}
		if !p.Exited() {
			p.signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(StopGrace):
			}
		}
		p.kill()
	})
}

// Kill sends SIGKILL to the process group and waits for the process to exit.
func (p *Process) Kill() {
	p.kill()
	p.stopOnce.Do(func() {}) // a later Stop has nothing left to do
}

func (p *Process) kill() {
	// Also sent after a clean exit: members of the group that outlived the leader
	// would otherwise leak.
	p.signal(syscall.SIGKILL)
	<-p.done
}

func (p *Process) signal(sig syscall.Signal) {
	if err := syscall.Kill(-p.Pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.Cmd.Process.Signal(sig)
	}
}

// StopAll stops every process at once (SIGTERM, SIGKILL after StopGrace) and returns
// when all have exited.
func StopAll(procs ...*Process) {
	var wg sync.WaitGroup
	for _, p := range procs {
		if p == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
}
