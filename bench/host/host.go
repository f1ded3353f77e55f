// Package host is what the benchmark programs under bench/ (and the e2e benchmark's
// helpers) share: the machine description and report header, their common flags, CPU
// and memory readings from /proc, and percentiles, medians and the JSON report.
// Processes are started, watched and stopped by internal/stack.
package host

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Machine describes where the figures come from.
type Machine struct {
	NProc     int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

// Describe describes this machine.
func Describe() Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH}
	m.CPUModel, _ = CPUInfo()
	if kb := MemKiB(); kb > 0 {
		m.MemTotal = fmt.Sprintf("%.1f GiB", kb/1024/1024)
	}
	m.Kernel = FirstLine("uname", "-sr")
	return m
}

// CPUInfo is lscpu's model name and hypervisor vendor ("" on bare metal).
func CPUInfo() (model, hypervisor string) {
	out, _ := exec.Command("lscpu").Output()
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(k) {
		case "Model name":
			model = strings.TrimSpace(v)
		case "Hypervisor vendor":
			hypervisor = strings.TrimSpace(v)
		}
	}
	return model, hypervisor
}

// MemKiB is the machine's memory (MemTotal in /proc/meminfo).
func MemKiB() float64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb
		}
	}
	return 0
}

// FirstLine is the first non-empty line a command prints (stdout and stderr), "" if it
// fails: how tools report their version.
func FirstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

func GitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " (with uncommitted changes)"
	}
	return c
}

func SelfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// Header opens every benchmark report: where, from which commit, when and how it ran.
type Header struct {
	Machine Machine   `json:"machine"`
	Commit  string    `json:"commit"`
	Date    time.Time `json:"date"`
	Command string    `json:"command"`
}

// NewHeader describes this run of the program at pkg (e.g. ./bench/authz).
func NewHeader(pkg string) Header {
	return Header{
		Machine: Describe(),
		Commit:  GitCommit(),
		Date:    time.Now().UTC().Truncate(time.Second),
		Command: strings.Join(append([]string{"go run " + pkg}, os.Args[1:]...), " "),
	}
}
