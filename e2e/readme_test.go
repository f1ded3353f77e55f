package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/cpunice"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

// makeRun is the stack `make run` starts (cmd/llmedge-run itself) on free ports, in a
// temporary run directory.
type makeRun struct {
	p      *testenv.Process
	root   string
	runDir string
	ports  map[string]int // LLMEDGE_<name>
	facts  struct{ Token string }
}

// startMakeRun runs llmedge-run with the given extra environment (on top of a clean one:
// provider keys and LLMEDGE_* of the machine must not leak into the test) and waits for
// its banner and edge.json.
func startMakeRun(t *testing.T, extraEnv ...string) *makeRun {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Dir(llmedgeBin)
	run := filepath.Join(bin, "llmedge-run")
	buildMakeRun.Do(func() { buildMakeRunErr = stk.GoBuild(context.Background(), root, "./cmd/llmedge-run", run) })
	if buildMakeRunErr != nil {
		t.Fatal(buildMakeRunErr)
	}
	m := &makeRun{root: root, runDir: t.TempDir(), ports: map[string]int{}}
	env := append(stk.BaseEnv(), "LLMEDGE_RUN_DIR="+m.runDir, "LLMEDGE_BIN_DIR="+bin, "LLMEDGE_TOOLS="+toolsDir(t))
	for _, p := range stk.LocalPorts() {
		name := strings.TrimPrefix(p.Env, "LLMEDGE_")
		m.ports[name] = testenv.FreePort(t)
		env = append(env, fmt.Sprintf("%s=%d", p.Env, m.ports[name]))
	}
	cmd := exec.Command(run)
	cmd.Dir = root
	cmd.Env = append(env, extraEnv...)
	m.p = testenv.Start(t, "make-run", cmd)
	testenv.Eventually(t, 90*time.Second, 100*time.Millisecond, func() error {
		if m.p.Exited() {
			t.Fatalf("llmedge-run exited:\n%s", m.p.Log())
		}
		if !strings.Contains(m.p.Log(), "Ctrl-C stops everything") {
			return fmt.Errorf("no banner yet")
		}
		b, err := os.ReadFile(filepath.Join(m.runDir, "edge.json"))
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &m.facts)
	})
	if !strings.HasPrefix(m.facts.Token, "llme_") || !strings.Contains(m.p.Log(), m.facts.Token) {
		t.Fatalf("the banner and edge.json should carry the demo token")
	}
	return m
}

var (
	buildMakeRun    sync.Once
	buildMakeRunErr error
)

// toolsDir is where make tools put Envoy, ratelimit and redis-server.
func toolsDir(t *testing.T) string {
	t.Helper()
	envoy, err := stk.ToolPath(stk.ToolEnvoy)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(filepath.Dir(envoy))
}

// stop sends Ctrl-C and waits for a clean stop.
func (m *makeRun) stop(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(-m.p.Pid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err, ok := m.p.WaitTimeout(20 * time.Second); !ok {
		t.Fatalf("llmedge-run did not stop on Ctrl-C (%v)", err)
	}
	if !strings.Contains(m.p.Log(), "stopped") {
		t.Errorf("no clean stop in the log:\n%s", m.p.Log())
	}
}

// TestReadmeQuickStart runs the stack `make run` starts on free ports, then runs the curl
// commands of both READMEs' quick starts against it, exactly as written but for the
// ports, and checks each got an answer from the model.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	m := startMakeRun(t)
	for _, readme := range []string{"README.md", "README.zh-CN.md"} {
		cmds := quickStartCurls(t, filepath.Join(m.root, readme))
		if len(cmds) < 2 {
			t.Fatalf("%s: found %d curl commands in the quick start, want the documented examples", readme, len(cmds))
		}
		for i, c := range cmds {
			c = strings.NewReplacer(
				"127.0.0.1:10000", fmt.Sprintf("127.0.0.1:%d", m.ports["HK_PORT"]),
				"127.0.0.1:10001", fmt.Sprintf("127.0.0.1:%d", m.ports["SG_PORT"]),
			).Replace(c)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			run := exec.CommandContext(ctx, "bash", "-c", c)
			run.Env = append(stk.BaseEnv(), "LLMEDGE_TOKEN="+m.facts.Token)
			out, err := run.CombinedOutput()
			cancel()
			if err != nil || !strings.Contains(string(out), "chunk-0") {
				t.Errorf("%s example %d failed (%v):\n%s\n-> %s", readme, i+1, err, c, out)
			}
		}
		// The ledger runs in every stack: `llmedge usage` answers from make run's control
		// plane (its default URL is make run's default status address).
		usageCmds := quickStartLines(t, filepath.Join(m.root, readme), "bin/llmedge usage ")
		if len(usageCmds) == 0 {
			t.Errorf("%s: the quick start has no `bin/llmedge usage` command", readme)
		}
		for _, c := range usageCmds {
			c = strings.Replace(c, "bin/llmedge ", llmedgeBin+" ", 1)
			// The quick start's requests reach the ledger through Envoy's gRPC access log,
			// flushed within a second or so: the demo caller's rows appear.
			testenv.Eventually(t, 20*time.Second, 250*time.Millisecond, func() error {
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				run := exec.CommandContext(ctx, "bash", "-c", c)
				run.Env = append(stk.BaseEnv(), fmt.Sprintf("LLMEDGE_STATUS_URL=http://127.0.0.1:%d", m.ports["HTTP_PORT"]))
				out, err := run.CombinedOutput()
				if err != nil || !regexp.MustCompile(`caller\s+model\s+requests`).Match(out) || !regexp.MustCompile(`(?m)^\s*demo\s`).Match(out) {
					return fmt.Errorf("%s: %s (%v) shows no demo caller row yet:\n%s", readme, c, err, out)
				}
				return nil
			})
		}
	}
	// The access log files the banner names are there (the directory is made at start).
	if fi, err := os.Stat(filepath.Join(stk.ControlPlaneStateDir(m.runDir), "access-log")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("make run's access log dir: %v, %v; want a 0700 directory", fi, err)
	}
	if !strings.Contains(m.p.Log(), "/usage") {
		t.Errorf("the banner does not name the usage endpoint:\n%s", m.p.Log())
	}
	// The status page renders make run's two regions, both in sync, in real Chromium.
	statusPage := fmt.Sprintf("http://127.0.0.1:%d/", m.ports["HTTP_PORT"])
	testenv.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		if got := regionSync(browse(t, statusPage, "--dump-dom")); got["hk"] != "true" || got["sg"] != "true" {
			return fmt.Errorf("make run's status page shows regions %v, want hk and sg in sync", got)
		}
		return nil
	})
	// The control plane yields the CPU to the request path (stack.LocalControlPlaneNice):
	// every one of its threads, including those started since it lowered itself, runs at
	// that niceness and with the short slice, and Envoy at the default.
	checked := map[string]bool{}
	for pid, cmdline := range childrenOf(t, m.p.Pid()) {
		want, name := 0, ""
		switch {
		case strings.Contains(cmdline, " controlplane "):
			want, name = stk.LocalControlPlaneNice, "controlplane"
		case strings.Contains(cmdline, "envoy -c "):
			name = "envoy"
		default:
			continue
		}
		attrs, err := cpunice.ThreadAttrs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if len(attrs) < 2 {
			t.Errorf("%s (%d): %d threads found, want several", name, pid, len(attrs))
		}
		for tid, a := range attrs {
			if int(a.Nice) != want {
				t.Errorf("%s (%d) thread %d: niceness %d, want %d", name, pid, tid, a.Nice, want)
			}
			// And the control plane's threads ask for the shortest slice, where the kernel
			// keeps one (Linux 6.12+; it reports 0 before).
			if name == "controlplane" && a.Runtime != cpunice.ShortestSlice && a.Runtime != 0 {
				t.Errorf("controlplane (%d) thread %d: slice %d ns, want %d", pid, tid, a.Runtime, cpunice.ShortestSlice)
			}
		}
		checked[name] = true
	}
	if !checked["controlplane"] || !checked["envoy"] {
		t.Errorf("checked the niceness of %v, want the control plane and Envoy", checked)
	}
	m.stop(t) // Ctrl-C stops everything.
}

// quickStartLines returns the lines starting with prefix of the README's first sh block
// that has any (the quick start comes before the reference sections).
func quickStartLines(t *testing.T, path, prefix string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range fence.FindAllStringSubmatch(string(b), -1) {
		for _, line := range strings.Split(m[1], "\n") {
			if line = strings.TrimSpace(line); strings.HasPrefix(line, prefix) {
				out = append(out, line)
			}
		}
		if len(out) > 0 {
			break
		}
	}
	return out
}

var fence = regexp.MustCompile("(?s)```sh\n(.*?)```")

// quickStartCurls returns the curl commands (continuation lines joined) of the README's
// first section that has them, before the section on editing routes.
func quickStartCurls(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	var out []string
	for _, m := range fence.FindAllStringSubmatch(text, -1) {
		if !strings.Contains(m[1], "curl ") || !strings.Contains(m[1], "LLMEDGE_TOKEN") {
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(m[1], "\\\n", " ")))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if strings.HasPrefix(line, "curl ") && !strings.Contains(line, "/v2/") {
				out = append(out, line)
			}
		}
		if len(out) > 0 {
			break
		}
	}
	return out
}
