package host

import (
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
)

// clkTck is sysconf(_SC_CLK_TCK), the unit of /proc's CPU times: 100 on Linux.
const clkTck = 100

// ProcCPU is a process's user+system CPU seconds (/proc/<pid>/stat); pid 0 is this process.
func ProcCPU(pid int) float64 {
	if pid == 0 {
		return SelfCPU()
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces) start after ") "; utime
	// and stime are fields 14 and 15 of stat, 12 and 13 from there.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clkTck
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
	return busy / clkTck
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

// FreeAddr is a loopback address that was free a moment ago.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// WaitHTTP polls url until it answers 200, the timeout passes or exited is closed.
func WaitHTTP(url string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			return errors.New("exited")
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BuildLLMedge builds ./cmd/llmedge (run from the repository root) into dir and returns
// the binary's path.
func BuildLLMedge(dir string) (string, error) {
	path := filepath.Join(dir, "llmedge")
	fmt.Fprintf(os.Stderr, "building %s\n", path)
	cmd := exec.Command("go", "build", "-o", path, "./cmd/llmedge")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/llmedge (run from the repository root): %w", err)
	}
	return path, nil
}

// Proc is a child process with its output in a log file.
type Proc struct {
	Pid     int
	LogPath string
	Exited  chan struct{}
	cmd     *exec.Cmd
	logf    *os.File
}

// Start runs argv with env added to this process's environment, output to dir/name.log.
// The child dies with this process.
func Start(dir, name string, env, argv []string) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Pid: cmd.Process.Pid, LogPath: logPath, Exited: make(chan struct{}), cmd: cmd, logf: logf}
	go func() { _ = cmd.Wait(); close(p.Exited) }()
	return p, nil
}

// Stop sends SIGTERM and, after 10 s, SIGKILL.
func (p *Proc) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.Exited
	}
	p.logf.Close()
}

// Log is the end of the process's output.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > 4000 {
		b = append([]byte("..."), b[len(b)-4000:]...)
	}
	return string(b)
}

// StartServer starts a server whose listen addresses argv takes from addrs (naddrs of
// them, picked free here), waits until addrs[httpIdx] answers 200 on /readyz, and retries
// with new ports when another process took one in between.
func StartServer(dir, name string, env []string, argv func(addrs []string) []string, naddrs, httpIdx int) (*Proc, []string, error) {
	for attempt := 1; ; attempt++ {
		addrs := make([]string, naddrs)
		for i := range addrs {
			a, err := FreeAddr()
			if err != nil {
				return nil, nil, err
			}
			addrs[i] = a
		}
		p, err := Start(dir, name, env, argv(addrs))
		if err != nil {
			return nil, nil, err
		}
		err = WaitHTTP("http://"+addrs[httpIdx]+"/readyz", 30*time.Second, p.Exited)
		if err == nil {
			return p, addrs, nil
		}
		p.Stop()
		if attempt == 5 || !strings.Contains(p.Log(), "address already in use") {
			return nil, nil, fmt.Errorf("%s: %w\n%s", name, err, p.Log())
		}
	}
}
