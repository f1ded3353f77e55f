package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// sdkRegion: one region serving the three provider APIs over TLS to a caller "sdk".
const sdkRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai, anthropic, gemini]
upstreams:
{{.Provider "openai" "hk"}}
{{.Provider "anthropic" "hk"}}
{{.Provider "gemini" "hk"}}
routes:
{{.Route "openai"}}
{{.Route "anthropic"}}
{{.Route "gemini"}}
callers:
  sdk:
    tokens: [{{.Digest "sdk"}}]
    upstreams: [openai, anthropic, gemini]
`

// sdkLine is one line check.py prints per call.
type sdkLine struct {
	SDK     string `json:"sdk"`
	Version string `json:"version"`
	Mode    string `json:"mode"`
	Text    string `json:"text"`
	OK      bool   `json:"ok"`
	Error   string `json:"error"`
}

// sdkScript returns the venv python that `make tools` installs the SDKs into and the
// absolute path of testdata/sdk/<name>, failing the test (never skipping) when the python
// or the SDKs are missing.
func sdkScript(t *testing.T, name string) (py, script string) {
	t.Helper()
	dir := os.Getenv("LLMEDGE_TOOLS") // set by the Makefile
	if dir == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			t.Fatalf("locating the repo: %v; run `make tools`", err)
		}
		dir = filepath.Join(root, ".tools")
	}
	py = filepath.Join(dir, "venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("the tools venv python is missing (%v); run `make tools`", err)
	}
	out, err := exec.Command(py, "-c", "import openai, anthropic, google.genai").CombinedOutput()
	if err != nil {
		t.Fatalf("the official SDKs are not installed in %s (%v: %s); run `make tools`", py, err, bytes.TrimSpace(out))
	}
	script, err = filepath.Abs(filepath.Join("testdata", "sdk", name))
	if err != nil {
		t.Fatal(err)
	}
	return py, script
}

// TestOfficialSDKs points the official OpenAI, Anthropic and google-genai Python SDKs at
// the edge with nothing but a base URL and the caller's llmedge token as their API key,
// and checks that a normal and a streaming call of each works end to end, that the
// upstream received the injected provider key in the provider's own header, and that the
// llmedge token never reached it.
func TestOfficialSDKs(t *testing.T) {
	t.Parallel()
	py, script := sdkScript(t, "check.py")
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, sdkRegion, "hk")
	tok := s.tokens["sdk"]

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script)
	// A minimal environment: no API keys, proxies, netrc or SDK settings of the machine
	// can leak in, so the SDKs see only the base URL and the token.
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"LANG=C.UTF-8",
		"PYTHONDONTWRITEBYTECODE=1",
		"OPENAI_BASE_URL=" + s.edgeURL("hk", "/openai/v1"),
		"ANTHROPIC_BASE_URL=" + s.edgeURL("hk", "/anthropic"),
		"GEMINI_BASE_URL=" + s.edgeURL("hk", "/gemini"),
		"LLMEDGE_TOKEN=" + tok,
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	if strings.Contains(stdout.String()+stderr.String(), tok) {
		t.Errorf("check.py printed the llmedge token")
	}
	if runErr != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			runErr = errors.Join(runErr, errors.New("timed out after 90s"))
		}
		t.Fatalf("check.py: %v after %v\nstdout:\n%s\nstderr:\n%s", runErr, elapsed.Round(time.Millisecond), stdout.String(), stderr.String())
	}
	t.Logf("check.py ran the 6 SDK calls in %v", elapsed.Round(time.Millisecond))

	// What the SDKs got back.
	const want = "chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 " // the fake's default answer
	versions := map[string]string{}
	seen := map[string]bool{}
	var n int
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		n++
		var l sdkLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Errorf("check.py line %d is not JSON: %v: %s", n, err, sc.Text())
			continue
		}
		key := l.SDK + " " + l.Mode
		if seen[key] {
			t.Errorf("check.py reported %s twice", key)
		}
		seen[key] = true
		versions[l.SDK] = l.Version
		if !l.OK || l.Text != want {
			t.Errorf("%s: ok=%v text=%q error=%q, want ok with %q", key, l.OK, l.Text, l.Error, want)
		}
	}
	if n != 6 {
		t.Errorf("check.py printed %d lines, want 6:\n%s", n, stdout.String())
	}
	for _, sdk := range []string{"openai", "anthropic", "google-genai"} {
		for _, mode := range []string{"normal", "stream"} {
			if !seen[sdk+" "+mode] {
				t.Errorf("check.py reported no %s %s call", sdk, mode)
			}
		}
	}

	// What the upstream received from them.
	type expect struct {
		keyHeader, key string
		userAgent      string // prefix of the SDK's User-Agent
		paths          map[string]int
	}
	expects := map[string]*expect{
		"openai": {"authorization", "Bearer " + upstreamKey("openai"), "OpenAI/Python " + versions["openai"],
			map[string]int{"/v1/chat/completions": 2}},
		"anthropic": {"x-api-key", upstreamKey("anthropic"), "Anthropic/Python " + versions["anthropic"],
			map[string]int{"/v1/messages": 2}},
		"google-genai": {"x-goog-api-key", upstreamKey("gemini"), "google-genai-sdk/" + versions["google-genai"],
			map[string]int{":generateContent": 1, ":streamGenerateContent": 1}},
	}
	got := map[string]map[string]int{}
	reqs := up.Requests()
	if len(reqs) != 6 {
		t.Errorf("upstream saw %d requests, want 6 (one per call, no retries)", len(reqs))
	}
	for _, r := range reqs {
		var sdk, what string
		switch {
		case r.Path == "/v1/chat/completions":
			sdk, what = "openai", r.Path
		case r.Path == "/v1/messages":
			sdk, what = "anthropic", r.Path
		case strings.HasPrefix(r.Path, "/v1beta/models/") || strings.HasPrefix(r.Path, "/v1/models/"):
			sdk, what = "google-genai", r.Path[strings.LastIndexByte(r.Path, ':'):]
		default:
			t.Errorf("unexpected upstream request %s %s", r.Method, r.Path)
			continue
		}
		e := expects[sdk]
		if got[sdk] == nil {
			got[sdk] = map[string]int{}
		}
		got[sdk][what]++
		if vs := r.Header.Values(e.keyHeader); len(vs) != 1 || vs[0] != e.key {
			t.Errorf("%s %s: upstream %s = %q, want exactly the injected key", sdk, r.Path, e.keyHeader, vs)
		}
		for _, h := range []string{"authorization", "x-api-key", "x-goog-api-key"} {
			if h != e.keyHeader && r.Header.Get(h) != "" {
				t.Errorf("%s %s: upstream got a %s header besides the injected %s", sdk, r.Path, h, e.keyHeader)
			}
		}
		if ua := r.Header.Get("user-agent"); !strings.HasPrefix(ua, e.userAgent) {
			t.Errorf("%s %s: upstream user-agent %q, want the official SDK's %q...", sdk, r.Path, ua, e.userAgent)
		}
		raw, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), tok) {
			t.Errorf("%s %s: the llmedge token reached the upstream: %s", sdk, r.Path, raw)
		}
		target := r.Path
		if r.RawQuery != "" {
			target += "?" + r.RawQuery
		}
		t.Logf("upstream: %s %s user-agent %q", r.Method, target, r.Header.Get("user-agent"))
	}
	for sdk, e := range expects {
		for what, count := range e.paths {
			if got[sdk][what] != count {
				t.Errorf("%s: upstream saw %d %s requests, want %d (all: %v)", sdk, got[sdk][what], what, count, got[sdk])
			}
		}
	}
}
