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
	"syscall"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/testenv"
)

// TestReadmeQuickStart runs the stack `make run` starts (scripts/run.sh itself) on free
// ports, then runs the curl commands of both READMEs' quick starts against it, exactly as
// written but for the ports, and checks each got an answer from the model.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Dir(llmedgeBin)
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "fakellm"), "github.com/llmedge/llmedge/cmd/fakellm").CombinedOutput(); err != nil {
		t.Fatalf("build fakellm: %v\n%s", err, out)
	}
	ports := map[string]int{}
	env := []string{"LLMEDGE_RUN_DIR=" + t.TempDir(), "LLMEDGE_BIN_DIR=" + bin, "LLMEDGE_LOG_FORMAT=json"}
	for _, name := range []string{"HK_PORT", "SG_PORT", "HK_ADMIN_PORT", "SG_ADMIN_PORT", "XDS_PORT", "HTTP_PORT", "FAKE_PORT",
		"HK_AUTHZ_PORT", "SG_AUTHZ_PORT", "HK_AUTHZ_HTTP_PORT", "SG_AUTHZ_HTTP_PORT", "HK_RATELIMIT_PORT", "SG_RATELIMIT_PORT",
		"HK_RATELIMIT_HTTP_PORT", "SG_RATELIMIT_HTTP_PORT", "REDIS_PORT"} {
		ports[name] = testenv.FreePort(t)
		env = append(env, fmt.Sprintf("LLMEDGE_%s=%d", name, ports[name]))
	}
	runDir := strings.TrimPrefix(env[0], "LLMEDGE_RUN_DIR=")
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "run.sh"))
	cmd.Dir = root
	// Provider keys on the machine must not switch the demo to real providers.
	for _, kv := range os.Environ() {
		if !strings.HasSuffix(strings.SplitN(kv, "=", 2)[0], "_API_KEY") && !strings.HasPrefix(kv, "LLMEDGE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	p := testenv.Start(t, "make-run", cmd)

	var facts struct{ Token string }
	testenv.Eventually(t, 90*time.Second, 100*time.Millisecond, func() error {
		if p.Exited() {
			t.Fatalf("scripts/run.sh exited:\n%s", p.Log())
		}
		if !strings.Contains(p.Log(), "Ctrl-C stops everything") {
			return fmt.Errorf("no banner yet")
		}
		b, err := os.ReadFile(filepath.Join(runDir, "edge.json"))
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &facts)
	})
	if !strings.HasPrefix(facts.Token, "llme_") || !strings.Contains(p.Log(), facts.Token) {
		t.Fatalf("the banner and edge.json should carry the demo token")
	}

	for _, readme := range []string{"README.md", "README.zh-CN.md"} {
		cmds := quickStartCurls(t, filepath.Join(root, readme))
		if len(cmds) < 2 {
			t.Fatalf("%s: found %d curl commands in the quick start, want the documented examples", readme, len(cmds))
		}
		for i, c := range cmds {
			c = strings.NewReplacer(
				"127.0.0.1:10000", fmt.Sprintf("127.0.0.1:%d", ports["HK_PORT"]),
				"127.0.0.1:10001", fmt.Sprintf("127.0.0.1:%d", ports["SG_PORT"]),
			).Replace(c)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			run := exec.CommandContext(ctx, "bash", "-c", c)
			run.Env = append(os.Environ(), "LLMEDGE_TOKEN="+facts.Token)
			out, err := run.CombinedOutput()
			cancel()
			if err != nil || !strings.Contains(string(out), "chunk-0") {
				t.Errorf("%s example %d failed (%v):\n%s\n-> %s", readme, i+1, err, c, out)
			}
		}
	}

	// Ctrl-C stops everything.
	if err := syscall.Kill(-p.Pid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err, ok := p.WaitTimeout(20 * time.Second); !ok {
		t.Fatalf("scripts/run.sh did not stop on Ctrl-C (%v)", err)
	}
	if !strings.Contains(p.Log(), "stopped") {
		t.Errorf("no clean stop in the log:\n%s", p.Log())
	}
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
