package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/internal/stack"
)

const digest = "sha256:0000000000000000000000000000000000000000000000000000000000000001"

func example(t *testing.T) []byte {
	t.Helper()
	root, err := stack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "examples", "routes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type parsed struct {
	Regions map[string]struct {
		Listen, ExtAuthz, RateLimit string
	}
	Upstreams map[string]struct{ URL string }
	Callers   map[string]struct {
		Tokens, Upstreams []string
		Limits            []map[string]any
	}
}

func parse(t *testing.T, b []byte) parsed {
	t.Helper()
	var p parsed
	if err := yaml.Unmarshal(b, &p); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	return p
}

// load checks the routes copy the way the control plane will read it.
func load(t *testing.T, b []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := config.LoadConfig(path); err != nil {
		t.Fatalf("routes copy does not load: %v\n%s", err, b)
	}
}

func ports(t *testing.T, env map[string]string) map[stack.PortKey]int {
	t.Helper()
	p, err := stack.ResolveLocalPorts(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoutesCopy(t *testing.T) {
	// hk's edge moves onto sg's default port and sg's elsewhere: nothing moves twice.
	p := ports(t, map[string]string{"LLMEDGE_HK_PORT": "10001", "LLMEDGE_SG_PORT": "20001", "LLMEDGE_FAKE_PORT": "20090"})
	out, err := routesCopy(example(t), p, digest)
	if err != nil {
		t.Fatal(err)
	}
	load(t, out)
	got := parse(t, out)
	if got.Regions["hk"].Listen != "127.0.0.1:10001" || got.Regions["sg"].Listen != "127.0.0.1:20001" {
		t.Errorf("listen hk %s, sg %s", got.Regions["hk"].Listen, got.Regions["sg"].Listen)
	}
	// The example names the sockets where compose mounts them, with the stack's file names.
	mount := stack.Sockets{Dir: stack.SocketMount}
	for _, r := range stack.LocalRegions() {
		if got.Regions[r].ExtAuthz != stack.Unix(mount.ExtAuthz(r)) || got.Regions[r].RateLimit != stack.Unix(mount.Ratelimit(r)) {
			t.Errorf("regions.%s: extauthz %s, ratelimit %s; want the sockets under %s", r, got.Regions[r].ExtAuthz, got.Regions[r].RateLimit, stack.SocketMount)
		}
	}
	for name, u := range got.Upstreams {
		if u.URL != "http://127.0.0.1:20090" {
			t.Errorf("upstreams.%s.url = %s, want the fake on its port", name, u.URL)
		}
	}
	demo := got.Callers["demo"]
	if len(demo.Tokens) != 1 || demo.Tokens[0] != digest || strings.Join(demo.Upstreams, ",") != "openai,anthropic,gemini" {
		t.Errorf("demo caller = %+v", demo)
	}
	if len(demo.Limits) != 1 || demo.Limits[0]["requests"] != 600 || demo.Limits[0]["per"] != "minute" {
		t.Errorf("demo limits = %v, want 600 a minute", demo.Limits)
	}
	if !strings.Contains(string(out), "# Gemini's terms do not cover Hong Kong") {
		t.Error("the example's comments were lost")
	}

	// A source with callers of its own keeps them; the demo caller is set once.
	withCallers := append(example(t), []byte("callers:\n  alice:\n    tokens: ['"+digest[:len(digest)-1]+"2']\n    upstreams: [openai]\n")...)
	out, err = routesCopy(withCallers, p, digest)
	if err != nil {
		t.Fatal(err)
	}
	load(t, out)
	if c := parse(t, out).Callers; len(c) != 2 || c["alice"].Upstreams[0] != "openai" {
		t.Errorf("callers = %+v, want alice and demo", c)
	}
	again, err := routesCopy(out, p, digest)
	if err != nil || len(parse(t, again).Callers) != 2 {
		t.Errorf("a second copy: %v, %+v", err, parse(t, again).Callers)
	}
}

func TestPointSockets(t *testing.T) {
	base, err := routesCopy(example(t), ports(t, nil), digest)
	if err != nil {
		t.Fatal(err)
	}
	sock := stack.Sockets{Dir: "/home/dev/llmedge/.run/sock"}
	out, changed, err := pointSockets(base, sock)
	if err != nil || !changed {
		t.Fatalf("pointSockets: changed %v, %v", changed, err)
	}
	load(t, out)
	got := parse(t, out)
	for _, r := range stack.LocalRegions() {
		if got.Regions[r].ExtAuthz != "unix:"+sock.ExtAuthz(r) || got.Regions[r].RateLimit != "unix:"+sock.Ratelimit(r) {
			t.Errorf("regions.%s: extauthz %s, ratelimit %s", r, got.Regions[r].ExtAuthz, got.Regions[r].RateLimit)
		}
	}
	if !strings.Contains(string(out), "# envoyproxy/ratelimit; fail open") {
		t.Error("the comment next to ratelimit was lost")
	}
	// A copy from an earlier run that already points there is left alone.
	if same, changed, err := pointSockets(out, sock); err != nil || changed || string(same) != string(out) {
		t.Errorf("unchanged sockets rewrote the file (changed %v, %v)", changed, err)
	}
	// A copy an older make run wrote with TCP ports is moved onto the sockets.
	old := strings.ReplaceAll(string(base), "unix:/run/llmedge/extauthz-hk.sock", "127.0.0.1:10100")
	if out, changed, err := pointSockets([]byte(old), sock); err != nil || !changed || parse(t, out).Regions["hk"].ExtAuthz != "unix:"+sock.ExtAuthz("hk") {
		t.Errorf("old copy: changed %v, %v", changed, err)
	}
}

func TestPointUpstreams(t *testing.T) {
	p := ports(t, nil)
	base, err := routesCopy(example(t), p, digest)
	if err != nil {
		t.Fatal(err)
	}
	fake := "http://127.0.0.1:8090"

	out, changed, err := pointUpstreams(base, map[string]bool{"openai": true, "gemini": true}, fake)
	if err != nil || !changed {
		t.Fatalf("pointUpstreams: changed %v, %v", changed, err)
	}
	load(t, out)
	u := parse(t, out).Upstreams
	if u["openai"].URL != "https://api.openai.com" || u["gemini"].URL != "https://generativelanguage.googleapis.com" || u["anthropic"].URL != fake {
		t.Errorf("urls = %+v", u)
	}

	// The same keys again: nothing to write.
	same, changed, err := pointUpstreams(out, map[string]bool{"openai": true, "gemini": true}, fake)
	if err != nil || changed || string(same) != string(out) {
		t.Errorf("unchanged keys rewrote the file (changed %v, %v)", changed, err)
	}

	// The key is gone: back to the fake.
	back, changed, err := pointUpstreams(out, map[string]bool{"gemini": true}, fake)
	if err != nil || !changed {
		t.Fatalf("revert: changed %v, %v", changed, err)
	}
	if u := parse(t, back).Upstreams; u["openai"].URL != fake || u["gemini"].URL != "https://generativelanguage.googleapis.com" {
		t.Errorf("after the openai key went away: %+v", u)
	}
}

func TestWriteKeys(t *testing.T) {
	d := &demo{keysDir: filepath.Join(t.TempDir(), "keys")}
	if err := os.MkdirAll(filepath.Join(d.keysDir, "openai"), 0o755); err != nil { // as an older make run left it
		t.Fatal(err)
	}
	env := map[string]string{"OPENAI_API_KEY": "sk-canary"}
	if err := d.writeKeys(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	err := filepath.WalkDir(d.keysDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := e.Info()
		want := fs.FileMode(0o600)
		if e.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: %v, want %v", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(d.keysDir, "openai", "from-env")); string(b) != "sk-canary\n" {
		t.Errorf("openai key file = %q", b)
	}
	if _, err := os.Stat(filepath.Join(d.keysDir, "anthropic", "demo")); err != nil {
		t.Errorf("anthropic has no demo key: %v", err)
	}
	// Without the variable the real key is removed again.
	if err := d.writeKeys(func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.keysDir, "openai", "from-env")); !os.IsNotExist(err) {
		t.Errorf("the provider key stayed after the variable went away: %v", err)
	}
}

func TestDemoTokenIsReused(t *testing.T) {
	d := &demo{runDir: t.TempDir()}
	tok := `{"caller":"demo","digest":"` + digest + `","token":"llme_kept"}` + "\n"
	if err := os.WriteFile(filepath.Join(d.runDir, "demo-token.json"), []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	// No llmedge binary: a kept token must not need one.
	if err := d.demoToken(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d.token != "llme_kept" || d.digest != digest {
		t.Errorf("token %q digest %q", d.token, d.digest)
	}
	if err := os.WriteFile(filepath.Join(d.runDir, "demo-token.json"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.demoToken(t.Context()); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("a broken token file: %v", err)
	}
}

func TestAuthzInEnvoy(t *testing.T) {
	doc := []byte("regions:\n  hk: {listen: 127.0.0.1:10000}\n  sg:\n    listen: 127.0.0.1:10001\n    extauthz_in_envoy: false\n")
	out, on, err := authzInEnvoy(doc, "envoy")
	if err != nil || !on || strings.Count(string(out), "extauthz_in_envoy: true") != 2 {
		t.Fatalf("envoy: %v %v\n%s", on, err, out)
	}
	back, on, err := authzInEnvoy(out, "process")
	if err != nil || on || strings.Count(string(back), "extauthz_in_envoy: false") != 2 {
		t.Fatalf("process: %v %v\n%s", on, err, back)
	}
	if same, on, err := authzInEnvoy(out, ""); err != nil || !on || string(same) != string(out) {
		t.Fatalf("unset: the routes YAML decides; got %v %v", on, err)
	}
	if _, _, err := authzInEnvoy(doc, ""); err != nil {
		t.Fatal(err)
	}
	mixed := []byte("regions:\n  hk: {extauthz_in_envoy: true}\n  sg: {}\n")
	if _, _, err := authzInEnvoy(mixed, ""); err == nil || !strings.Contains(err.Error(), "regions hk set extauthz_in_envoy and sg do not") {
		t.Fatalf("mixed regions: %v", err)
	}
	if _, _, err := authzInEnvoy(doc, "inside"); err == nil || !strings.Contains(err.Error(), `LLMEDGE_AUTHZ "inside"`) {
		t.Fatalf("bad mode: %v", err)
	}
}

// make run's default is what examples/routes.yaml says, and that is stack's default:
// extauthz inside each Envoy.
func TestExampleRunsAuthzInEnvoy(t *testing.T) {
	_, on, err := authzInEnvoy(example(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if on != stack.DefaultAuthzInEnvoy {
		t.Errorf("examples/routes.yaml runs extauthz inside Envoy: %v; stack.DefaultAuthzInEnvoy is %v", on, stack.DefaultAuthzInEnvoy)
	}
}

// TestWriteRoutesAuthzMode: LLMEDGE_AUTHZ decides for one run; without it the source
// decides again, whatever an earlier run wrote into the copy.
func TestWriteRoutesAuthzMode(t *testing.T) {
	dir := t.TempDir()
	d := &demo{
		runDir: dir, routes: filepath.Join(dir, "routes.yaml"), routesSrc: filepath.Join(dir, "src.yaml"),
		ports: ports(t, nil), sockets: stack.Sockets{Dir: filepath.Join(dir, "sock")}, digest: digest,
	}
	if err := os.WriteFile(d.routesSrc, example(t), 0o644); err != nil {
		t.Fatal(err)
	}
	inCopy := func() []string {
		var p struct {
			Regions map[string]struct {
				InEnvoy *bool `yaml:"extauthz_in_envoy"`
			}
		}
		b, err := os.ReadFile(d.routes)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range stack.LocalRegions() {
			v := p.Regions[r].InEnvoy
			out = append(out, fmt.Sprintf("%s=%v", r, v != nil && *v))
		}
		load(t, b)
		return out
	}
	for _, c := range []struct {
		mode    string
		inEnvoy bool
		note    string
	}{
		{"", true, "inside each Envoy"},
		{"process", false, "process per region (LLMEDGE_AUTHZ=process)"},
		{"", true, "inside each Envoy"}, // not left in process mode
		{"envoy", true, "LLMEDGE_AUTHZ=process runs it as a process"},
	} {
		d.authzMode = c.mode
		if err := d.writeRoutes(false); err != nil {
			t.Fatalf("LLMEDGE_AUTHZ=%q: %v", c.mode, err)
		}
		want := fmt.Sprintf("hk=%v sg=%v", c.inEnvoy, c.inEnvoy)
		if got := strings.Join(inCopy(), " "); d.inEnvoy != c.inEnvoy || got != want {
			t.Errorf("LLMEDGE_AUTHZ=%q: inEnvoy %v, copy %s; want %v, %s", c.mode, d.inEnvoy, got, c.inEnvoy, want)
		}
		if note := authzNote(d); !strings.Contains(note, c.note) {
			t.Errorf("LLMEDGE_AUTHZ=%q: banner says %q, want %q in it", c.mode, note, c.note)
		}
	}

	// A source without extauthz_in_envoy runs processes, and the banner says why.
	src := strings.ReplaceAll(string(example(t)), "extauthz_in_envoy: true", "extauthz_in_envoy: false")
	if err := os.WriteFile(d.routesSrc, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	d.authzMode = ""
	if err := d.writeRoutes(true); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(inCopy(), " "); d.inEnvoy || got != "hk=false sg=false" {
		t.Errorf("source without the module: inEnvoy %v, copy %s", d.inEnvoy, got)
	}
	if note := authzNote(d); !strings.Contains(note, "do not set extauthz_in_envoy") || !strings.Contains(note, "LLMEDGE_AUTHZ=envoy") {
		t.Errorf("banner: %q", note)
	}
}

// Arguments never start the edge: help prints the usage, anything else is refused naming it.
func TestArguments(t *testing.T) {
	for _, c := range []struct {
		args     []string
		code     int
		done     bool
		out, err string
	}{
		{nil, 0, false, "", ""},
		{[]string{"--help"}, 0, true, "LLMEDGE_RUN_DIR", ""},
		{[]string{"-h"}, 0, true, "it takes no arguments", ""},
		{[]string{"--run-dir", "x"}, 2, true, "", `unexpected argument "--run-dir"`},
	} {
		var out, errb bytes.Buffer
		code, done := arguments(c.args, &out, &errb)
		if code != c.code || done != c.done {
			t.Errorf("%q: code %d done %v, want %d %v", c.args, code, done, c.code, c.done)
		}
		if (c.out == "") != (out.Len() == 0) || !strings.Contains(out.String(), c.out) {
			t.Errorf("%q: stdout %q, want it to contain %q", c.args, out.String(), c.out)
		}
		if (c.err == "") != (errb.Len() == 0) || !strings.Contains(errb.String(), c.err) {
			t.Errorf("%q: stderr %q, want it to contain %q", c.args, errb.String(), c.err)
		}
	}
}
