package testenv

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// StopGrace is how long Stop waits after SIGTERM before sending SIGKILL.
const StopGrace = stack.StopGrace

// logTailLines is how much of each process log a failed test prints.
const logTailLines = 60

// Process is a child process started by Start, its output in <t.TempDir()>/<name>.log.
type Process struct {
	*stack.Process
}

// Start runs cmd in its own process group with stdout and stderr captured (see
// stack.StartCmd; a nil cmd.Env means stack.BaseEnv, not the test's environment), and
// registers a cleanup that stops it (SIGTERM, then SIGKILL after StopGrace) and, if the
// test failed, logs the tail of its output. cmd.Stdout and cmd.Stderr must be unset.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p, err := stack.StartCmd(name, filepath.Join(t.TempDir(), name+".log"), cmd)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return adopt(t, p)
}

// adopt stops p when the test ends and shows its log if the test failed.
func adopt(t testing.TB, p *stack.Process) *Process {
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- last %d lines of %s (%s):\n%s", logTailLines, p.Name, p.LogPath(), p.LogTail(logTailLines))
		}
	})
	return &Process{p}
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
			t.Fatalf("testenv: %v before logging %q", p.ExitError(), substr)
		}
		return fmt.Errorf("%s has not logged %q", p.Name, substr)
	})
}
