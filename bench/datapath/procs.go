package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	dir  string // logs go to dir/logs
	pin  bool
	all  []*proc
	tick float64 // clock ticks per second (utime/stime unit)
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
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return pids
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStatFields(pid)
		if err != nil || len(f) < 5 {
			continue
		}
		if pgrp, _ := strconv.Atoi(f[4]); pgrp == p.pid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procStatFields splits /proc/<pid>/stat into its fields (comm, which may hold spaces, is
// field 2 between the parentheses).
func procStatFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	head := strings.SplitN(string(b[:i]), " (", 2)
	rest := strings.Fields(string(b[i+1:]))
	return append([]string{head[0], head[1]}, rest...), nil
}

// cpuSeconds is utime+stime of every live process of the group, in seconds (field 14 and 15
// of /proc/<pid>/stat; they include the process's exited threads).
func (r *runner) cpuSeconds(p *proc) float64 {
	var ticks float64
	for _, pid := range p.groupPIDs() {
		f, err := procStatFields(pid)
		if err != nil || len(f) < 15 {
			continue
		}
		u, _ := strconv.ParseFloat(f[13], 64)
		s, _ := strconv.ParseFloat(f[14], 64)
		ticks += u + s
	}
	return ticks / r.tick
}

// peakRSS is VmHWM (peak resident set) summed over the group's live processes, in MiB.
func peakRSS(p *proc) float64 {
	var kb float64
	for _, pid := range p.groupPIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					n, _ := strconv.ParseFloat(f[0], 64)
					kb += n
				}
			}
		}
	}
	return kb / 1024
}

// clockTicks is sysconf(_SC_CLK_TCK); Linux fixes USER_HZ at 100 on every architecture
// Go supports, and getconf confirms it when present.
func clockTicks() float64 {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if n, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
