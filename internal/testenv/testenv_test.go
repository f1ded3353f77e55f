package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeTB records failures instead of failing the real test. Fatalf ends the
// calling goroutine like the real one, so run code under test in runFake.
type fakeTB struct {
	testing.TB // nil: calling anything not overridden panics
	mu         sync.Mutex
	fatals     []string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) failures() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.fatals...)
}

func runFake(fn func(tb *fakeTB)) *fakeTB {
	tb := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	<-done
	return tb
}

func TestEventuallySucceeds(t *testing.T) {
	calls := 0
	tb := runFake(func(tb *fakeTB) {
		Eventually(tb, time.Second, time.Millisecond, func() error {
			calls++
			if calls < 3 {
				return errors.New("not yet")
			}
			return nil
		})
	})
	if f := tb.failures(); len(f) != 0 {
		t.Fatalf("Eventually failed: %v", f)
	}
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3", calls)
	}
}

func TestEventuallyFailsAtDeadline(t *testing.T) {
	start := time.Now()
	n := 0
	tb := runFake(func(tb *fakeTB) {
		Eventually(tb, 50*time.Millisecond, 5*time.Millisecond, func() error {
			n++
			return fmt.Errorf("attempt %d", n)
		})
	})
	elapsed := time.Since(start)
	f := tb.failures()
	if len(f) != 1 {
		t.Fatalf("got %d failures, want 1: %v", len(f), f)
	}
	if want := fmt.Sprintf("attempt %d", n); !strings.Contains(f[0], want) {
		t.Errorf("failure %q does not carry the last error %q", f[0], want)
	}
	if elapsed < 50*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("gave up after %v, want about 50ms", elapsed)
	}
}

func TestEventuallyCondMayFatal(t *testing.T) {
	tb := runFake(func(tb *fakeTB) {
		Eventually(tb, time.Hour, time.Millisecond, func() error {
			tb.Fatalf("process died")
			return nil
		})
	})
	if f := tb.failures(); len(f) != 1 || f[0] != "process died" {
		t.Fatalf("failures = %v", f)
	}
}

func TestProcessLogCapture(t *testing.T) {
	t.Parallel()
	p := Start(t, "echo", exec.Command("sh", "-c", "echo hi; echo err >&2"))
	if err := p.Wait(); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if got := p.Log(); got != "hi\nerr\n" {
		t.Errorf("Log() = %q, want %q", got, "hi\nerr\n")
	}
	onDisk, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if string(onDisk) != p.Log() {
		t.Errorf("log file %q != in-memory log %q", onDisk, p.Log())
	}
	if filepath.Base(p.LogPath()) != "echo.log" {
		t.Errorf("LogPath = %s, want .../echo.log", p.LogPath())
	}
	p.Stop() // after exit: must not block or panic
}

func TestProcessStop(t *testing.T) {
	t.Parallel()
	p := Start(t, "sleep", exec.Command("sleep", "30"))
	start := time.Now()
	p.Stop()
	if !p.Exited() {
		t.Fatal("still running after Stop")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %v; sleep should die on SIGTERM at once", d)
	}
	var exitErr *exec.ExitError
	if err := p.Wait(); !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("Wait() = %v, want killed by SIGTERM", err)
	}
	p.Stop() // idempotent
	p.Kill()
}

func TestProcessStopEscalatesToSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("waits StopGrace")
	}
	t.Parallel()
	// Ignored signals stay ignored across exec, so sleep ignores TERM too.
	p := Start(t, "stubborn", exec.Command("sh", "-c", `trap "" TERM; echo ready; sleep 30`))
	p.WaitLog(t, "ready", 5*time.Second)
	start := time.Now()
	p.Stop()
	if d := time.Since(start); d < StopGrace || d > StopGrace+3*time.Second {
		t.Errorf("Stop took %v, want about StopGrace (%v)", d, StopGrace)
	}
	if !p.Exited() {
		t.Fatal("still running after Stop")
	}
}

func TestProcessKill(t *testing.T) {
	t.Parallel()
	p := Start(t, "stubborn", exec.Command("sh", "-c", `trap "" TERM; echo ready; sleep 30`))
	p.WaitLog(t, "ready", 5*time.Second)
	start := time.Now()
	p.Kill()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Kill took %v", d)
	}
	if _, ok := p.WaitTimeout(time.Second); !ok {
		t.Fatal("still running after Kill")
	}
}

func TestWaitLogFailsWhenProcessExits(t *testing.T) {
	t.Parallel()
	p := Start(t, "quick", exec.Command("true"))
	tb := runFake(func(tb *fakeTB) { p.WaitLog(tb, "never", time.Hour) })
	if f := tb.failures(); len(f) != 1 || !strings.Contains(f[0], "exited") {
		t.Fatalf("failures = %v", f)
	}
}

func TestToolMissingFails(t *testing.T) {
	t.Setenv("LLMEDGE_ENVOY", filepath.Join(t.TempDir(), "no-such-envoy"))
	tb := runFake(func(tb *fakeTB) { Envoy(tb) })
	if f := tb.failures(); len(f) != 1 || !strings.Contains(f[0], "make tools") {
		t.Fatalf("failures = %v, want one mentioning `make tools`", f)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "testenv")); err != nil {
		t.Errorf("RepoRoot() = %s, which has no internal/testenv: %v", root, err)
	}
}

func TestFreePort(t *testing.T) {
	if p := FreePort(t); p <= 0 || p > 65535 {
		t.Fatalf("FreePort() = %d", p)
	}
}
