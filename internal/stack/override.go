package stack

import (
	"fmt"
	"os/exec"
	"slices"
)

// Override changes a process's command just before Runner.Start runs it. Benchmarks use
// it to measure the components as `make run` configures them plus a stated difference
// (a CPU to run on, one more setting), without a second copy of the settings.
type Override func(name string, c Cmd) (Cmd, error)

// WithEnv returns c with entries (KEY=VALUE) added after its environment, so they win
// over earlier ones of the same key, as os/exec resolves duplicates.
func (c Cmd) WithEnv(entries ...string) Cmd {
	env := c.Env
	if env == nil {
		env = BaseEnv()
	}
	c.Env = append(slices.Clip(env), entries...)
	return c
}

// WithArgs returns c with args added after its arguments; for a Go flag parser a flag
// given again takes the later value.
func (c Cmd) WithArgs(args ...string) Cmd {
	c.Args = append(slices.Clip(c.Args), args...)
	return c
}

// OnCPUs returns c run under `taskset -c cpus` (e.g. "1" or "0,2-3"): the program and
// every thread and child it creates stay on those CPUs. taskset execs the program, so
// the process id and group are the program's.
func (c Cmd) OnCPUs(cpus string) (Cmd, error) {
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return c, fmt.Errorf("stack: pin %s to CPUs %s: taskset (util-linux) not found: %w", c.Path, cpus, err)
	}
	c.Args = append([]string{"-c", cpus, c.Path}, c.Args...)
	c.Path = taskset
	return c, nil
}
