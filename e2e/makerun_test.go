package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/llmedge/llmedge/internal/testenv"
)

// Canary provider keys: recognisable, never sent anywhere (the real providers are not
// reachable here and no request is made to them).
const (
	canaryOpenAI    = "sk-canary-openai-5b0c1f"
	canaryAnthropic = "sk-ant-canary-anthropic-9e7d21"
)

// TestMakeRunKeepsProviderKeysOutOfChildren: with provider keys in its environment,
// `make run` puts them in the keys directory only (0700, files 0600), no process it
// starts inherits them, and the routes copy shows the upstreams' real URLs. The other
// tests of `make run` run its default (extauthz inside Envoy); this one runs the way back,
// LLMEDGE_AUTHZ=process, unless the suite runs with extauthz inside Envoy.
func TestMakeRunKeepsProviderKeysOutOfChildren(t *testing.T) {
	t.Parallel()
	env := []string{"OPENAI_API_KEY=" + canaryOpenAI, "ANTHROPIC_API_KEY=" + canaryAnthropic}
	if !authzInEnvoy {
		env = append(env, "LLMEDGE_AUTHZ=process")
	}
	m := startMakeRun(t, env...)

	// The test can fail: the canaries are in llmedge-run's own environment.
	if env := environ(t, m.p.Pid()); !bytes.Contains(env, []byte(canaryOpenAI)) {
		t.Fatalf("llmedge-run's environment lacks the canary; the test would prove nothing")
	}
	children := childrenOf(t, m.p.Pid())
	// Redis, fakellm, control plane, and per region ratelimit and Envoy, and extauthz
	// unless it runs inside Envoy.
	want, banner := 7, "extauthz runs inside each Envoy"
	if !authzInEnvoy {
		want, banner = 9, "extauthz runs as a process per region (LLMEDGE_AUTHZ=process)"
	}
	if len(children) != want {
		t.Errorf("llmedge-run has %d children, want %d: %v", len(children), want, children)
	}
	authz := 0
	for _, cmdline := range children {
		if strings.Contains(cmdline, " extauthz ") {
			authz++
		}
	}
	if wantAuthz := want - 7; authz != wantAuthz {
		t.Errorf("%d extauthz processes, want %d: %v", authz, wantAuthz, children)
	}
	if !strings.Contains(m.p.Log(), banner) {
		t.Errorf("the banner does not say %q:\n%s", banner, m.p.Log())
	}
	for pid, cmdline := range children {
		env := environ(t, pid)
		for _, canary := range []string{canaryOpenAI, canaryAnthropic, "_API_KEY="} {
			if bytes.Contains(env, []byte(canary)) {
				t.Errorf("child %d (%s) has %q in its environment", pid, cmdline, canary)
			}
		}
	}

	keys := filepath.Join(m.runDir, "keys")
	err := filepath.WalkDir(keys, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for up, canary := range map[string]string{"openai": canaryOpenAI, "anthropic": canaryAnthropic} {
		b, err := os.ReadFile(filepath.Join(keys, up, "from-env"))
		if err != nil || strings.TrimSpace(string(b)) != canary {
			t.Errorf("keys/%s/from-env = %q, %v; want the key from the environment", up, b, err)
		}
		if _, err := os.Stat(filepath.Join(keys, up, "demo")); err == nil {
			t.Errorf("keys/%s/demo still there next to the real key", up)
		}
	}

	// The effective URLs are in the routes copy, not in a hidden override.
	b, err := os.ReadFile(filepath.Join(m.runDir, "routes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var routes struct {
		Upstreams map[string]struct{ URL string } `yaml:"upstreams"`
	}
	if err := yaml.Unmarshal(b, &routes); err != nil {
		t.Fatal(err)
	}
	fake := fmt.Sprintf("http://127.0.0.1:%d", m.ports["FAKE_PORT"])
	for up, want := range map[string]string{"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com", "gemini": fake} {
		if got := routes.Upstreams[up].URL; got != want {
			t.Errorf("routes copy: upstreams.%s.url = %q, want %q", up, got, want)
		}
	}
	if !strings.Contains(m.p.Log(), "real provider for: openai anthropic;") {
		t.Errorf("the banner does not say which upstreams are real:\n%s", m.p.Log())
	}

	// Nothing the stack wrote outside the keys directory holds a key.
	err = filepath.WalkDir(m.runDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasPrefix(path, keys+string(filepath.Separator)) {
			return err // directories, the sockets, the keys
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, canary := range []string{canaryOpenAI, canaryAnthropic} {
			if bytes.Contains(b, []byte(canary)) {
				t.Errorf("%s holds a provider key", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(m.p.Log(), canaryOpenAI) || strings.Contains(m.p.Log(), canaryAnthropic) {
		t.Error("llmedge-run printed a provider key")
	}
	m.stop(t)
}

// environ returns /proc/<pid>/environ.
func environ(t *testing.T, pid int) []byte {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("read the environment of %d: %v", pid, err)
	}
	return b
}

// childrenOf returns the pids whose parent is pid, with their command lines.
func childrenOf(t *testing.T, pid int) map[int]string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue // gone meanwhile
		}
		// Fields after the parenthesised command name: state, ppid, ...
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child))
			out[child] = strings.ReplaceAll(string(bytes.TrimRight(cmdline, "\x00")), "\x00", " ")
		}
	}
	return out
}

// TestMakeRunStartsAgainWhatExits: `make run` starts a component that dies again, as
// compose's `restart: unless-stopped` does, while its Envoy serves on: Redis, then the
// control plane, are killed (SIGKILL) under a steady load; each comes back as a new
// process, the message names the log of the one that died (kept beside the new one), hk's
// Envoy is the same process throughout, and every request is answered.
func TestMakeRunStartsAgainWhatExits(t *testing.T) {
	t.Parallel()
	m := startMakeRun(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/openai/v1/chat/completions", m.ports["HK_PORT"])
	// Ten a second: the demo caller's limit (600 a minute) is never what refuses one.
	l := startPacedLoad(t, 1, 100*time.Millisecond, func(int) (string, *http.Request) {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(chatBody))
		req.Header.Set("Authorization", "Bearer "+m.facts.Token)
		req.Header.Set("Content-Type", "application/json")
		return "", req
	})
	l.waitRequests(t, 3)
	find := func(match string) int {
		for pid, cmdline := range childrenOf(t, m.p.Pid()) {
			if strings.Contains(cmdline, match) {
				return pid
			}
		}
		return 0
	}
	envoy := find("envoy-hk.yaml")
	if envoy == 0 {
		t.Fatalf("no Envoy for hk among llmedge-run's children: %v", childrenOf(t, m.p.Pid()))
	}
	for _, c := range []struct{ name, match string }{{"redis", "redis-server"}, {"controlplane", " controlplane "}} {
		old := find(c.match)
		if old == 0 {
			t.Fatalf("no %s among llmedge-run's children: %v", c.name, childrenOf(t, m.p.Pid()))
		}
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 60*time.Second, 50*time.Millisecond, func() error {
			if m.p.Exited() {
				t.Fatalf("llmedge-run exited when %s died:\n%s", c.name, m.p.Log())
			}
			if now := find(c.match); now == 0 || now == old {
				return fmt.Errorf("%s not started again yet", c.name)
			}
			if !strings.Contains(m.p.Log(), c.name+" started again") {
				return fmt.Errorf("no %q yet:\n%s", c.name+" started again", m.p.Log())
			}
			return nil
		})
		l.waitRequests(t, 3)
		kept := filepath.Join(m.runDir, "logs", c.name+".1.log")
		if !strings.Contains(m.p.Log(), c.name+" exited (signal: killed); see "+kept) {
			t.Errorf("the message does not name the log of the %s that died (%s):\n%s", c.name, kept, m.p.Log())
		}
		if fi, err := os.Stat(kept); err != nil || fi.Size() == 0 {
			t.Errorf("the log of the %s that died: %v, %v", c.name, fi, err)
		}
	}
	l.halt()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed while components were killed and started again: %v", n, n+l.ok.Load(), l.failures)
	}
	t.Logf("%d requests answered", l.ok.Load())
	if now := find("envoy-hk.yaml"); now != envoy {
		t.Errorf("hk's Envoy is process %d, was %d: it should have served on", now, envoy)
	}
	m.stop(t)
}
