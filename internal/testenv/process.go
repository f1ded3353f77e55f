package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StopGrace is how long Stop waits after SIGTERM before sending SIGKILL.
// Envoy drains listeners on SIGTERM, which can outlast a test's patience.
const StopGrace = 5 * time.Second

// logTailLines is how much of each process log a failed test prints.
const logTailLines = 60

// Process is a child process started by Start; its output is teed into
// <t.TempDir()>/<name>.log and kept in memory.
type Process struct {
	Name string
	Cmd  *exec.Cmd

	logPath string
	out     *logBuffer

	done    chan struct{}
	waitErr error

	stopOnce sync.Once
}

// Start runs cmd in its own process group with stdout and stderr captured,
// and registers a cleanup that stops it (SIGTERM, then SIGKILL after
// StopGrace) and, if the test failed, logs the tail of its output.
// cmd.Stdout and cmd.Stderr must be unset.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	if cmd.Stdout != nil || cmd.Stderr != nil {
		t.Fatalf("testenv: Start(%s): cmd.Stdout/Stderr must be nil; output is captured", name)
	}
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("testenv: Start(%s): %v", name, err)
	}
	p := &Process{Name: name, Cmd: cmd, logPath: logPath, out: &logBuffer{file: f}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A group of its own lets Stop signal everything the child forked
	// (shell wrappers and their children) in one kill(2).
	cmd.SysProcAttr.Setpgid = true
	setParentDeathSignal(cmd.SysProcAttr)
	// Grandchildren that outlive the leader keep the output pipe open; do
	// not let Wait block on them forever.
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = time.Second
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("testenv: Start(%s): %v", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		p.out.close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- last %d lines of %s (%s):\n%s", logTailLines, name, logPath, tail(p.Log(), logTailLines))
		}
	})
	return p
}

// Pid returns the process id, which is also its process group id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// LogPath returns the file the output is written to.
func (p *Process) LogPath() string { return p.logPath }

// Log returns everything the process has written to stdout and stderr so far.
func (p *Process) Log() string { return p.out.String() }

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

// Wait blocks until the process exits and returns its exit error, as
// exec.Cmd.Wait does.
func (p *Process) Wait() error {
	<-p.done
	return p.waitErr
}

// WaitTimeout is Wait with a limit; ok is false if the process is still
// running after d.
func (p *Process) WaitTimeout(d time.Duration) (err error, ok bool) {
	select {
	case <-p.done:
		return p.waitErr, true
	case <-time.After(d):
		return nil, false
	}
}

// WaitLog waits until the output contains substr, failing the test after
// timeout or as soon as the process exits without having written it.
func (p *Process) WaitLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, 20*time.Millisecond, func() error {
		if strings.Contains(p.Log(), substr) {
			return nil
		}
		if p.Exited() && !strings.Contains(p.Log(), substr) {
			t.Fatalf("testenv: %s exited (%v) before logging %q", p.Name, p.waitErr, substr)
		}
		return fmt.Errorf("%s has not logged %q", p.Name, substr)
	})
}

// Stop sends SIGTERM to the process group, waits up to StopGrace, then sends
// SIGKILL. It returns once the process has exited; calling it again is a no-op.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
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
	// Also sent after a clean exit: members of the group that outlived the
	// leader would otherwise leak across tests.
	p.signal(syscall.SIGKILL)
	<-p.done
}

func (p *Process) signal(sig syscall.Signal) {
	if err := syscall.Kill(-p.Pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.Cmd.Process.Signal(sig)
	}
}

// logBuffer is an io.Writer that appends to a file and to memory.
type logBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	file *os.File
}

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(b)
	if l.file != nil {
		_, _ = l.file.Write(b) // the in-memory copy is authoritative
	}
	return len(b), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		_ = l.file.Close()
		l.file = nil
	}
}

func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
