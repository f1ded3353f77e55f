package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func startT(t *testing.T, name string, c Cmd) *Process {
	t.Helper()
	p, err := Start(name, filepath.Join(t.TempDir(), name+".log"), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func sh(script string) Cmd { return Cmd{Path: "/bin/sh", Args: []string{"-c", script}} }

func TestChildGetsOnlyBaseEnv(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "sk-canary-stack-test")
	t.Setenv("LLMEDGE_UPSTREAMS_OPENAI_URL", "https://elsewhere.example")
	for name, c := range map[string]Cmd{
		"nil env":       {Path: "/usr/bin/env"},
		"ratelimit cmd": Ratelimit{Region: "hk"}.Cmd("/usr/bin/env"),
	} {
		p := startT(t, "env", c)
		if err := p.Wait(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		log := p.Log()
		if strings.Contains(log, "sk-canary") || strings.Contains(log, "LLMEDGE_") {
			t.Errorf("%s: the child saw the parent's environment:\n%s", name, log)
		}
		if !strings.Contains(log, "PATH=") {
			t.Errorf("%s: the child has no PATH:\n%s", name, log)
		}
	}
	if got := BaseEnv(); len(got) != 2 || !strings.HasPrefix(got[0], "PATH=") || !strings.HasPrefix(got[1], "HOME=") {
		t.Errorf("BaseEnv() = %v, want PATH and HOME only", got)
	}
}

func TestProcessLogFile(t *testing.T) {
	p := startT(t, "echo", sh("echo out; echo err >&2"))
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := p.Log(); got != "out\nerr\n" {
		t.Errorf("Log() = %q", got)
	}
	if filepath.Base(p.LogPath()) != "echo.log" {
		t.Errorf("LogPath() = %s", p.LogPath())
	}
}

func TestStopEndsTheGroup(t *testing.T) {
	p := startT(t, "group", sh("sleep 30 & echo $!; wait"))
	if err := Poll(t.Context(), 5*time.Second, 10*time.Millisecond, func(context.Context) error {
		if !strings.HasSuffix(p.Log(), "\n") {
			return errors.New("no pid yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(p.Log()))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %v; sh dies on SIGTERM at once", d)
	}
	var exitErr *exec.ExitError
	if err := p.Wait(); !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("Wait() = %v, want killed by SIGTERM", err)
	}
	if err := Poll(t.Context(), 5*time.Second, 10*time.Millisecond, func(context.Context) error {
		if alive(child) {
			return fmt.Errorf("grandchild %d still alive", child)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	p.Stop() // idempotent
}

func TestStopAll(t *testing.T) {
	a, b := startT(t, "a", sh("sleep 30")), startT(t, "b", sh("sleep 30"))
	StopAll(a, nil, b)
	if !a.Exited() || !b.Exited() {
		t.Fatal("StopAll returned with a process running")
	}
}

func TestAwaitNamesTheProcessAndItsLog(t *testing.T) {
	p := startT(t, "quitter", sh("echo cannot bind; exit 3"))
	err := p.Await(t.Context(), 10*time.Second, func(context.Context) error { return errors.New("not yet") })
	if err == nil {
		t.Fatal("Await passed for a process that exited")
	}
	for _, want := range []string{"quitter exited", "exit status 3", p.LogPath(), "cannot bind"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Await error %q lacks %q", err, want)
		}
	}

	q := startT(t, "slow", sh("sleep 30"))
	err = q.Await(t.Context(), 50*time.Millisecond, func(context.Context) error { return errors.New("port closed") })
	if err == nil || !strings.Contains(err.Error(), "port closed") || !strings.Contains(err.Error(), "slow") || !strings.Contains(err.Error(), "not ready within") {
		t.Errorf("Await at the deadline: %v; want the last error, the name and the deadline", err)
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start("x", filepath.Join(t.TempDir(), "x.log"), Cmd{Path: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("Start of a missing program succeeded")
	}
	r := &Runner{Dir: t.TempDir()}
	if _, err := r.StartEnvoy(t.Context(), "envoy-hk", Envoy{Region: "hk"}); err == nil || !strings.Contains(err.Error(), "envoy") {
		t.Errorf("StartEnvoy without an envoy path: %v", err)
	}
	if _, err := r.StartControlPlane(t.Context(), "controlplane", ControlPlane{}); err == nil || !strings.Contains(err.Error(), "llmedge") {
		t.Errorf("StartControlPlane without an llmedge path: %v", err)
	}
}

func TestToolPath(t *testing.T) {
	t.Setenv("LLMEDGE_ENVOY", filepath.Join(t.TempDir(), "no-such-envoy"))
	if _, err := ToolPath(ToolEnvoy); err == nil || !strings.Contains(err.Error(), "make tools") || !strings.Contains(err.Error(), "LLMEDGE_ENVOY") {
		t.Errorf("missing envoy: %v, want an error naming make tools and LLMEDGE_ENVOY", err)
	}
	if _, err := ToolPath("nginx"); err == nil {
		t.Error("unknown tool accepted")
	}
	exe := filepath.Join(t.TempDir(), "redis-server")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMEDGE_REDIS_SERVER", exe)
	if got, err := ToolPath(ToolRedisServer); err != nil || got != exe {
		t.Errorf("ToolPath(redis-server) = %q, %v; want %s", got, err, exe)
	}
}

func TestPorts(t *testing.T) {
	var ps Ports
	seen := map[int]bool{}
	for range 50 {
		p, err := ps.Free()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] || p < portLow || p >= portHigh {
			t.Fatalf("Free() = %d: repeated or outside %d-%d", p, portLow, portHigh)
		}
		seen[p] = true
	}
	busy := listen(t)
	if PortFree(busy) {
		t.Errorf("PortFree(%d) for a bound port", busy)
	}
	got := BusyPorts(map[PortKey]int{{"envoy", "hk", RoleAdmin}: busy})
	if len(got) != 1 || !strings.Contains(got[0], strconv.Itoa(busy)) || !strings.Contains(got[0], "envoy-hk admin") {
		t.Errorf("BusyPorts = %v, want the port and what it is for", got)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
