package host

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// ClkTck is sysconf(_SC_CLK_TCK), the unit of /proc's CPU times: Linux fixes USER_HZ at
// 100 on every architecture Go supports.
const ClkTck = 100

// StatFields splits /proc/<pid>/stat into its fields, numbered from 0 (field 1 of
// proc(5) is [0]; comm, which may hold spaces, is [1]).
func StatFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	head := strings.SplitN(s[:max(i, 0)], " (", 2)
	if i < 0 || len(head) != 2 {
		return nil, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	return append(head, strings.Fields(s[i+1:])...), nil
}

// EachProcess calls fn with the pid and the /proc/<pid>/stat fields (StatFields) of
// every process (at least 17 fields: up to cstime).
func EachProcess(fn func(pid int, stat []string)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, err := StatFields(pid); err == nil && len(f) >= 17 {
			fn(pid, f)
		}
	}
}

// ProcCPU is a process's user+system CPU seconds (utime and stime, fields 14 and 15 of
// /proc/<pid>/stat; they include its exited threads); pid 0 is this process.
func ProcCPU(pid int) float64 {
	if pid == 0 {
		return SelfCPU()
	}
	f, err := StatFields(pid)
	if err != nil || len(f) < 15 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[13], 64)
	st, _ := strconv.ParseFloat(f[14], 64)
	return (ut + st) / ClkTck
}

// SysBusy is the machine's busy CPU seconds since boot (/proc/stat: all but idle, iowait
// and the guest columns, which user already counts).
func SysBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	busy := 0.0
	for i, v := range strings.Fields(line)[1:] {
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / ClkTck
}

// RSS returns a process's peak (VmHWM) and current (VmRSS) resident set in MiB.
func RSS(pid int) (hwm, rss float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmHWM:":
			hwm = kb / 1024
		case "VmRSS:":
			rss = kb / 1024
		}
	}
	return hwm, rss
}

// CPUMark holds the CPU counters at one moment: the machine's busy time, this process's
// and one child's, so that a later Since splits the time in between among them.
type CPUMark struct {
	at                   time.Time
	pid                  int
	machine, self, child float64
}

// MarkCPU reads the counters now; pid is the child to account for (0: none).
func MarkCPU(pid int) CPUMark {
	m := CPUMark{at: time.Now(), pid: pid, machine: SysBusy(), self: SelfCPU()}
	if pid != 0 {
		m.child = ProcCPU(pid)
	}
	return m
}

// Since returns the child's and this process's CPU seconds since m, and the cores every
// other process used meanwhile on average (the VM is shared: a large value means the
// measurement was disturbed).
func (m CPUMark) Since() (child, self, otherCores float64) {
	n := MarkCPU(m.pid)
	child, self = n.child-m.child, n.self-m.self
	secs := n.at.Sub(m.at).Seconds()
	if secs <= 0 {
		return child, self, 0
	}
	return child, self, max(0, n.machine-m.machine-child-self) / secs
}

// FreeAddrs returns n loopback addresses from stack.FreePort, none given twice.
func FreeAddrs(n int) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		p, err := stack.FreePort()
		if err != nil {
			return nil, err
		}
		out[i] = stack.Loopback(p)
	}
	return out, nil
}
