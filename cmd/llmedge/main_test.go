package main

import (
	"bytes"
	"encoding/json"
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
	if minted.Digest != config.TokenHashPrefix+token.Digest(minted.Token) {
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
