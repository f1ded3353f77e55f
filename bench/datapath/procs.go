package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/llmedge/llmedge/bench/host"
)

// proc is a child process in a process group of its own, so that its CPU time and memory can
// be summed over everything it forks (LiteLLM's uvicorn, shell wrappers) and it can be
// stopped as a whole.
type proc struct {
	*host.Proc
	name string // e.g. envoy-full, extauthz-full, ratelimit, redis, fakellm
	role string // envoy, extauthz, ratelimit, redis, fake, controlplane, peer
}

// runner starts processes, pinned to a CPU with taskset when pinning is on.
type runner struct {
	dir string // logs go to dir/logs
	pin bool
	all []*proc
}

// start runs args as a new process group with exactly env. stdout goes to stdoutPath (the
// log when empty).
func (r *runner) start(name, role, cpu string, env []string, stdoutPath string, args ...string) (*proc, error) {
	logs := filepath.Join(r.dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	if r.pin && cpu != "" {
		args = append([]string{"taskset", "-c", cpu}, args...)
	}
	hp, err := host.Run(host.Spec{Dir: logs, Name: name, Argv: args, Env: env, Stdout: stdoutPath, Group: true})
	if err != nil {
		return nil, err
	}
	p := &proc{Proc: hp, name: name, role: role}
	r.all = append(r.all, p)
	return p, nil
}

func (p *proc) pid() int     { return p.Pid }
func (p *proc) exited() bool { return p.Done() }

func (p *proc) stop(grace time.Duration) { p.StopWithin(grace) }

// freeze stops (SIGSTOP) or resumes (SIGCONT) the whole process group: a peer gateway that
// is not being measured must not do background work on the edge's CPU while others are.
func (p *proc) freeze(on bool) {
	if p == nil || p.exited() {
		return
	}
	sig := syscall.SIGCONT
	if on {
		sig = syscall.SIGSTOP
	}
	p.Signal(sig)
}

func (r *runner) stopAll() {
	for i := len(r.all) - 1; i >= 0; i-- {
		r.all[i].freeze(false)
		r.all[i].stop(3 * time.Second)
	}
}

// logTail returns the last n lines of the process log.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// groupPIDs lists the live processes of p's process group.
func (p *proc) groupPIDs() []int {
	pids := []int{}
	host.EachProcess(func(pid int, f []string) {
		if pgrp, _ := strconv.Atoi(f[4]); pgrp == p.pid() {
			pids = append(pids, pid)
		}
	})
	return pids
}

// cpuSeconds is the CPU time of every live process of the group, in seconds.
func (r *runner) cpuSeconds(p *proc) float64 {
	var secs float64
	for _, pid := range p.groupPIDs() {
		secs += host.ProcCPU(pid)
	}
	return secs
}

// peakRSS is VmHWM (peak resident set) summed over the group's live processes, in MiB.
func peakRSS(p *proc) float64 {
	var mib float64
	for _, pid := range p.groupPIDs() {
		hwm, _ := host.RSS(pid)
		mib += hwm
	}
	return mib
}

var plainClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

// waitFor polls check until it succeeds, the process exits or timeout passes.
func waitFor(what string, p *proc, timeout time.Duration, check func() error) error {
	switch err := host.Poll(check, timeout, p.Exited); {
	case errors.Is(err, host.ErrExited):
		return fmt.Errorf("%s: %s exited (%v):\n%s", what, p.name, p.Err, p.logTail(20))
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func tcpOpen(addr string) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
}
