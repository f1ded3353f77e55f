package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/llmedge/llmedge/bench/host"
)

// The machine is shared: other engineers run builds and benchmarks on it. Each measurement
// (a sequential block, a ladder step, a round of streams) records how much CPU processes
// outside this benchmark used meanwhile; one that ran next to more than foreignLimit cores
// of them is repeated after waiting for a quieter machine, while the waiting budget lasts.

const foreignLimit = 0.25 // cores

// pfKthread is PF_KTHREAD in /proc/<pid>/stat's flags: kernel threads (ksoftirqd carrying
// loopback traffic, kworkers) are not "other processes".
const pfKthread = 0x00200000

type cpuScan struct {
	at   time.Time
	cpu  map[int]float64 // pid -> utime+stime+cutime+cstime, seconds
	ncpu int             // the machine's CPUs (not this process's affinity)
}

type noiseGuard struct {
	r         *runner
	budget    time.Duration
	ncpu      int
	redone    int
	contended int
	first     cpuScan
}

// ours is the set of process groups that belong to this benchmark: its own (go run and this
// program) and each started process's.
func (g *noiseGuard) ours() map[int]bool {
	m := map[int]bool{syscall.Getpgrp(): true}
	for _, p := range g.r.all {
		m[p.Pid()] = true
	}
	return m
}

func (g *noiseGuard) scan() cpuScan {
	ours := g.ours()
	s := cpuScan{at: time.Now(), cpu: map[int]float64{}, ncpu: g.ncpu}
	host.EachProcess(func(pid int, f []string) {
		pgrp, _ := strconv.Atoi(f[4])
		flags, _ := strconv.ParseUint(f[8], 10, 64)
		if ours[pgrp] || flags&pfKthread != 0 {
			return
		}
		var ticks float64
		for _, i := range []int{13, 14, 15, 16} { // utime stime cutime cstime
			v, _ := strconv.ParseFloat(f[i], 64)
			ticks += v
		}
		s.cpu[pid] = ticks / host.ClkTck
	})
	return s
}

// cores is the foreign CPU between two scans, in cores. Children reaped in between count
// through their parent's cutime/cstime.
func (a cpuScan) cores(b cpuScan) float64 {
	secs := b.at.Sub(a.at).Seconds()
	if secs <= 0 {
		return 0
	}
	var sum float64
	for pid, v := range b.cpu {
		if d := v - a.cpu[pid]; d > 0 {
			sum += d
		}
	}
	// A parent reaping children adds their whole CPU time at once (cutime); never report
	// more than the machine has.
	return min(sum/secs, float64(max(b.ncpu, 1)))
}

// top names the n foreign processes that used the most CPU between two scans.
func (a cpuScan) top(b cpuScan, n int) string {
	type use struct {
		pid int
		s   float64
	}
	var us []use
	for pid, v := range b.cpu {
		if d := v - a.cpu[pid]; d > 0 {
			us = append(us, use{pid, d})
		}
	}
	sort.Slice(us, func(i, j int) bool { return us[i].s > us[j].s })
	var parts []string
	for i := 0; i < len(us) && i < n; i++ {
		comm := "?"
		if f, err := host.StatFields(us[i].pid); err == nil {
			comm = f[1]
		}
		parts = append(parts, fmt.Sprintf("%s[%d] %.2fs", comm, us[i].pid, us[i].s))
	}
	return strings.Join(parts, ", ")
}

// waitQuiet waits, within the budget, until foreign processes use less than foreignLimit
// cores over 2 s; it returns the last sample.
func (g *noiseGuard) waitQuiet() float64 {
	for {
		a := g.scan()
		time.Sleep(2 * time.Second)
		other := a.cores(g.scan())
		if other < foreignLimit || g.budget <= 0 {
			return other
		}
		logf("other processes use %.2f cores; waiting for a quieter machine (%s of waiting left)", other, g.budget.Round(time.Second))
		time.Sleep(3 * time.Second)
		g.budget -= 5 * time.Second
	}
}

// guarded runs f and returns its result with the foreign CPU during it; when that was above
// foreignLimit it waits for a quieter machine and runs f again, while the budget lasts.
func guarded[T any](g *noiseGuard, what string, f func() T) (T, float64) {
	for {
		a := g.scan()
		x := f()
		other := a.cores(g.scan())
		if other < foreignLimit {
			return x, other
		}
		if g.budget <= 0 {
			g.contended++
			return x, other
		}
		logf("  %s ran next to %.2f cores of other processes (%s): measuring it again", what, other, a.top(g.scan(), 3))
		g.redone++
		g.waitQuiet()
	}
}
