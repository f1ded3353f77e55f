package stack

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestCmdWithEnvAndArgs(t *testing.T) {
	base := Ratelimit{Region: "hk", LogLevel: "warn"}.Cmd("/bin/ratelimit")
	c := base.WithEnv("LOG_LEVEL=debug", "REDIS_PIPELINE_LIMIT=8")
	if got := EnvValue(c.Env, "LOG_LEVEL"); got != "debug" {
		t.Errorf("LOG_LEVEL = %q after WithEnv, want the added value to win", got)
	}
	if got := EnvValue(base.Env, "LOG_LEVEL"); got != "warn" || EnvValue(base.Env, "REDIS_PIPELINE_LIMIT") != "" {
		t.Errorf("WithEnv changed the original settings: LOG_LEVEL=%q", got)
	}
	if got := (Cmd{Path: "/x"}).WithEnv("A=1").Env; !slices.Equal(got, append(BaseEnv(), "A=1")) {
		t.Errorf("WithEnv on a nil environment = %v, want BaseEnv plus A=1", got)
	}

	f := Fakellm{Addr: "127.0.0.1:1"}.Cmd("/bin/fakellm")
	g := f.WithArgs("--log-level", "warn")
	if want := append(slices.Clone(f.Args), "--log-level", "warn"); !slices.Equal(g.Args, want) {
		t.Errorf("WithArgs = %v, want %v", g.Args, want)
	}
	if slices.Contains(f.Args, "warn") {
		t.Errorf("WithArgs changed the original: %v", f.Args)
	}
}

func TestCmdOnCPUs(t *testing.T) {
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Skip("taskset not installed")
	}
	c, err := (Cmd{Path: "/bin/sh", Args: []string{"-c", "taskset -pc $$"}}).OnCPUs("0")
	if err != nil {
		t.Fatal(err)
	}
	p := startT(t, "pinned", c)
	if err := p.Wait(); err != nil {
		t.Fatalf("%v: %s", err, p.Log())
	}
	// "pid 123's current affinity list: 0"
	if log := strings.TrimSpace(p.Log()); !strings.HasSuffix(log, ": 0") {
		t.Errorf("the pinned process reports %q, want affinity list 0", log)
	}
}

func TestRunnerOverride(t *testing.T) {
	r := &Runner{Dir: t.TempDir(), Override: func(name string, c Cmd) (Cmd, error) {
		if name == "refused" {
			return c, errors.New("no such CPU")
		}
		return c.WithEnv("BENCH_KNOB=" + name), nil
	}}
	p, err := r.Start("echo", Cmd{Path: "/bin/sh", Args: []string{"-c", "echo $BENCH_KNOB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := p.Log(); got != "echo\n" {
		t.Errorf("the child printed %q, want the overridden setting", got)
	}
	if _, err := r.Start("refused", Cmd{Path: "/bin/true"}); err == nil || !strings.Contains(err.Error(), "no such CPU") {
		t.Errorf("Start with a failing Override = %v, want its error", err)
	}
}
