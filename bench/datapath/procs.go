package main

import (
	"os"
	"strconv"
	"syscall"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/stack"
)

// proc is a process of the benchmark. internal/stack starts each in a process group of
// its own, so its CPU time and memory are summed over everything it forks (LiteLLM's
// uvicorn, shell wrappers) and it is stopped as a whole.
type proc struct{ *stack.Process }

// startPeer runs a peer gateway (not an llmedge component: it keeps this program's
// environment, plus env).
func (r *runner) startPeer(name string, argv, env []string) (*proc, error) {
	p, err := r.Start(name, stack.Cmd{Path: argv[0], Args: argv[1:], Env: append(os.Environ(), env...)})
	if err != nil {
		return nil, err
	}
	pr := &proc{p}
	r.all = append(r.all, pr)
	return pr, nil
}

// freeze stops (SIGSTOP) or resumes (SIGCONT) the whole process group: a peer gateway that
// is not being measured must not do background work on the edge's CPU while others are.
func (p *proc) freeze(on bool) {
	if p == nil || p.Exited() {
		return
	}
	sig := syscall.SIGCONT
	if on {
		sig = syscall.SIGSTOP
	}
	_ = syscall.Kill(-p.Pid(), sig)
}

func (r *runner) stopAll() {
	procs := make([]*stack.Process, len(r.all))
	for i, p := range r.all {
		p.freeze(false)
		procs[i] = p.Process
	}
	stack.StopAll(procs...)
}

// groupPIDs lists the live processes of p's process group.
func (p *proc) groupPIDs() []int {
	pids := []int{}
	host.EachProcess(func(pid int, f []string) {
		if pgrp, _ := strconv.Atoi(f[4]); pgrp == p.Pid() {
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
