package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/xds"
	"github.com/llmedge/llmedge/internal/token"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(t.Context(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateReportsEveryErrorWithItsPath(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "routes.yaml")
	os.WriteFile(bad, []byte(`version: 1
regions:
  hk: {listen: "0.0.0.0:10000", extauthz: "127.0.0.1:10100", upstreams: [gemini]}
upstreams:
  gemini: {url: "https://g.example", allowed_regions: [sg], urll: x}
`), 0o644)
	code, out, errs := runCLI(t, "validate", "--config", bad)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q; want 1 and nothing on stdout", code, out)
	}
	for _, want := range []string{"upstreams.gemini.urll: unknown field", "problem(s); nothing would be applied"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}

	code, out, _ = runCLI(t, "validate", "--config", "../../examples/routes.yaml")
	if code != 0 || !strings.Contains(out, "ok (2 regions, 3 upstreams, 3 routes, 0 callers)") {
		t.Errorf("examples/routes.yaml: exit %d, %q", code, out)
	}
}

func TestTokenNewAndHashAgree(t *testing.T) {
	code, out, _ := runCLI(t, "token", "new", "--caller", "alice", "--json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var minted struct{ Caller, Token, Digest string }
	if err := json.Unmarshal([]byte(out), &minted); err != nil || minted.Caller != "alice" {
		t.Fatalf("output %q: %v", out, err)
	}
	if minted.Digest != token.DigestRef(minted.Token) {
		t.Errorf("digest %s does not match the token", minted.Digest)
	}
	var hashed bytes.Buffer
	if err := runToken([]string{"hash"}, strings.NewReader(minted.Token+"\n"), &hashed, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(hashed.String()) != minted.Digest {
		t.Errorf("token hash = %q, want %q", hashed.String(), minted.Digest)
	}
	if code, _, _ := runCLI(t, "token", "new"); code != 2 {
		t.Errorf("token new without --caller: exit %d, want 2", code)
	}
}

func TestStatusExitsNonZeroOnProblems(t *testing.T) {
	ok := controlplane.Status{Config: controlplane.ConfigStatus{Path: "r.yaml", Valid: true}, Regions: []controlplane.RegionStatus{{
		Name: "hk", InSync: true,
		Nodes: []controlplane.NodeStatus{{Node: xds.Node{ID: "envoy-hk-1", Subscribed: []string{"listeners"}, Acked: map[string]string{"listeners": "v1"}}, InSync: true}},
	}}}
	var out bytes.Buffer
	if err := printStatus(&out, ok); err != nil || !strings.Contains(out.String(), "envoy-hk-1") {
		t.Errorf("healthy status: err %v, output %q", err, out.String())
	}
	held := ok
	held.Config.Pending = &controlplane.PendingStatus{Hash: strings.Repeat("ab", 32), Reasons: []string{"removes 2 of 2 callers (alice, bob)"}}
	held.Upstreams = []controlplane.UpstreamStatus{{Name: "openai", URL: "https://proxy.example.com/v1", Connect: "proxy.example.com:443"}}
	out.Reset()
	if err := printStatus(&out, held); err != nil || !strings.Contains(out.String(), "pending") || !strings.Contains(out.String(), "removes 2 of 2 callers") ||
		!strings.Contains(out.String(), "https://proxy.example.com/v1") {
		t.Errorf("pending edit: err %v, output %q", err, out.String())
	}
	bad := ok
	bad.Config.Valid = false
	bad.Config.Errors = []config.FieldError{{Path: "upstreams.x.url", Msg: "required"}}
	out.Reset()
	if err := printStatus(&out, bad); err == nil || !strings.Contains(out.String(), "upstreams.x.url: required") {
		t.Errorf("rejected edit: err %v, output %q", err, out.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	if code, _, errs := runCLI(t, "frobnicate"); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Errorf("exit %d, %q", code, errs)
	}
}

func TestBootstrapXDSAddress(t *testing.T) {
	tests := []struct {
		xds      string
		wantCode int
		wantOut  string // in the bootstrap on success, in stderr on failure
	}{
		{"127.0.0.1:18000", 0, "port_value: 18000"},
		{"[::1]:18000", 0, "address: ::1"},
		{"controlplane:18000", 0, "address: controlplane"},
		{"::1:18000", 1, "with an IPv6 address in brackets"},
		{"127.0.0.1", 1, "want host:port"},
		{"127.0.0.1:http", 1, "want host:port"},
		{":18000", 1, "want host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.xds, func(t *testing.T) {
			code, out, errs := runCLI(t, "bootstrap", "--region", "hk", "--xds", tt.xds)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d: %s", code, tt.wantCode, errs)
			}
			if got := out + errs; !strings.Contains(got, tt.wantOut) {
				t.Errorf("output lacks %q:\n%s", tt.wantOut, got)
			}
		})
	}
}

func TestExtAuthzRejectsBadXDSAddress(t *testing.T) {
	code, _, errs := runCLI(t, "extauthz", "--region", "hk", "--keys-dir", t.TempDir(), "--xds", "::1:18000")
	if code != 1 || !strings.Contains(errs, `--xds "::1:18000": want host:port`) {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}

func TestControlPlaneRejectsBadCPUNice(t *testing.T) {
	for _, n := range []string{"-1", "20"} {
		code, _, errs := runCLI(t, "controlplane", "--config", t.TempDir(), "--cpu-nice", n)
		if code != 1 || !strings.Contains(errs, "--cpu-nice: "+n+" is outside 0..19") {
			t.Errorf("--cpu-nice %s: exit %d, stderr %q", n, code, errs)
		}
	}
	t.Setenv("LLMEDGE_CPU_NICE", "low")
	code, _, errs := runCLI(t, "controlplane", "--config", t.TempDir())
	if code != 1 || !strings.Contains(errs, `LLMEDGE_CPU_NICE="low": want a whole number`) {
		t.Errorf("LLMEDGE_CPU_NICE=low: exit %d, stderr %q", code, errs)
	}
}

func TestValidateWarnsAboutDestructiveEdits(t *testing.T) {
	dir := t.TempDir()
	old, err := os.ReadFile("../../examples/routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	withCaller := string(old) + "callers:\n  alice: {tokens: [sha256:" + strings.Repeat("a", 64) + "], upstreams: [openai]}\n"
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldPath := write("old.yaml", withCaller)
	torn := write("torn.yaml", string(old)) // cut before callers:

	code, out, errs := runCLI(t, "validate", "--config", torn)
	if code != 0 || !strings.Contains(out, "0 callers") || !strings.Contains(errs, "warning: callers: none defined") {
		t.Errorf("without --against: exit %d, stdout %q, stderr %q; want ok with a warning about zero callers", code, out, errs)
	}
	code, _, errs = runCLI(t, "validate", "--config", torn, "--against", oldPath)
	for _, want := range []string{"destructive edit against " + oldPath, "removes 1 of 1 callers (alice)", "leaves region(s) hk, sg with no caller", "--watch-settle"} {
		if code != 0 || !strings.Contains(errs, want) {
			t.Errorf("--against: exit %d; stderr lacks %q:\n%s", code, want, errs)
		}
	}
	// Adding a route is not destructive.
	grown := write("grown.yaml", strings.Replace(withCaller, "routes:\n", "routes:\n  extra: {match: {prefix: /extra}, upstream: openai}\n", 1))
	code, _, errs = runCLI(t, "validate", "--config", grown, "--against", oldPath)
	if code != 0 || strings.Contains(errs, "warning") {
		t.Errorf("an ordinary edit: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runCLI(t, "validate", "--config", grown, "--against", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(errs, "--against") {
		t.Errorf("a missing --against file: exit %d, stderr %q", code, errs)
	}
}

func TestConfigDefaultIsNotARepositoryPath(t *testing.T) {
	t.Setenv("LLMEDGE_CONFIG", "")
	_, out, errs := runCLI(t, "validate")
	if !strings.Contains(out+errs, DefaultConfig) || strings.Contains(out+errs, "examples/") {
		t.Errorf("validate without --config: %q; want it to read %s", out+errs, DefaultConfig)
	}
}

// TestStateDirOthersCanWriteIsRefused: whoever can replace a state file chooses the config
// a component starts on, so both refuse a state dir other users may write, naming the flag.
func TestStateDirOthersCanWriteIsRefused(t *testing.T) {
	state := t.TempDir()
	if err := os.Chmod(state, 0o777); err != nil {
		t.Fatal(err)
	}
	routes := filepath.Join(t.TempDir(), "routes.yaml")
	os.WriteFile(routes, []byte("version: 1\n"), 0o644)
	for name, args := range map[string][]string{
		"controlplane": {"controlplane", "--config", routes, "--xds-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--state-dir", state},
		"extauthz":     {"extauthz", "--region", "hk", "--keys-dir", t.TempDir(), "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--state-dir", state},
	} {
		code, _, errs := runCLI(t, args...)
		if code != 1 || !strings.Contains(errs, "--state-dir") || !strings.Contains(errs, "lets other users write") {
			t.Errorf("%s with a 0777 state dir: exit %d, stderr %q", name, code, errs)
		}
	}
}

// TestDrainNamesTheAdminItCannotDrain: the drain itself is stack.DrainEnvoy's (tested
// there and against a real Envoy in e2e); the command reports failures with the address.
func TestDrainNamesTheAdminItCannotDrain(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	code, _, errs := runCLI(t, "drain", "--admin", srv.URL, "--timeout", "2s")
	if code != 1 || !strings.Contains(errs, srv.URL) || !strings.Contains(errs, "HTTP 404") {
		t.Errorf("exit %d, stderr %q; want 1 naming %s and its answer", code, errs, srv.URL)
	}
	if code, _, _ := runCLI(t, "drain", "extra"); code != 2 {
		t.Errorf("stray argument: exit %d, want 2", code)
	}
}
