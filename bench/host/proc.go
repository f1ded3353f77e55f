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

// FreePort is a loopback port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort's address.
func FreeAddr() (string, error) {
	p, err := FreePort()
	return fmt.Sprintf("127.0.0.1:%d", p), err
}

// ErrExited is Poll's error when the process it waits for exits.
var ErrExited = errors.New("exited")

// Poll calls check every 20 ms until it succeeds, exited is closed (ErrExited) or the
// timeout passes.
func Poll(check func() error, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			return ErrExited
		default:
		}
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loopback is an HTTP client that never goes through a proxy.
var loopback = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

// HTTPOK is a check that GET url answers 200.
func HTTPOK(url string) func() error {
	return func() error {
		resp, err := loopback.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// WaitHTTP polls url until it answers 200, the timeout passes or exited is closed.
func WaitHTTP(url string, timeout time.Duration, exited <-chan struct{}) error {
	return Poll(HTTPOK(url), timeout, exited)
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

// Spec describes a child process.
type Spec struct {
	Dir, Name string   // its output goes to Dir/Name.log
	Argv      []string // command and arguments
	Env       []string // its whole environment
	Stdout    string   // file for its standard output ("" = the log)
	Group     bool     // a process group of its own: signals reach everything it forks
}

// Proc is a running child process, which dies with this process.
type Proc struct {
	Pid     int
	LogPath string
	Exited  chan struct{}
	Err     error // how it exited, once Exited is closed
	cmd     *exec.Cmd
	group   bool
}

// Run starts the process the spec describes.
func Run(s Spec) (*Proc, error) {
	logPath := filepath.Join(s.Dir, s.Name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	files := []*os.File{logf}
	cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = s.Dir, s.Env, logf, logf
	if s.Stdout != "" {
		out, err := os.OpenFile(s.Stdout, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			logf.Close()
			return nil, err
		}
		cmd.Stdout, files = out, append(files, out)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: s.Group, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	p := &Proc{Pid: cmd.Process.Pid, LogPath: logPath, Exited: make(chan struct{}), cmd: cmd, group: s.Group}
	go func() {
		p.Err = cmd.Wait()
		for _, f := range files {
			f.Close()
		}
		close(p.Exited)
	}()
	return p, nil
}

// Start runs argv in dir with env added to this process's environment, output to
// dir/name.log.
func Start(dir, name string, env, argv []string) (*Proc, error) {
	return Run(Spec{Dir: dir, Name: name, Argv: argv, Env: append(os.Environ(), env...)})
}

// Signal sends sig to the process, or to its whole group.
func (p *Proc) Signal(sig syscall.Signal) {
	if p.group {
		_ = syscall.Kill(-p.Pid, sig)
	} else {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Stop sends SIGTERM and, after 10 s, SIGKILL.
func (p *Proc) Stop() { p.StopWithin(10 * time.Second) }

// StopWithin sends SIGTERM and, after grace (at once to a group's leftovers), SIGKILL.
func (p *Proc) StopWithin(grace time.Duration) {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Exited:
	case <-time.After(grace):
	}
	if p.group {
		p.Signal(syscall.SIGKILL)
	} else if !p.Done() {
		_ = p.cmd.Process.Kill()
	}
	<-p.Exited
}

// Done reports whether the process has exited.
func (p *Proc) Done() bool {
	select {
	case <-p.Exited:
		return true
	default:
		return false
	}
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
