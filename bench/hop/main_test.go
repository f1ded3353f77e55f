package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// TestMain lets the test binary stand in for the check servers (`-serve KIND SOCKET`), as
// the command's own binary does.
func TestMain(m *testing.M) {
	if len(os.Args) == 4 && os.Args[1] == "-serve" {
		if err := serve(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// The benchmark measures what it claims: every ext_authz listener asks its own server
// (which refuses a request without the caller's token) before the request reaches the
// fake, each module listener runs the module (which refuses likewise: Envoy loads a module
// of another ABI version with only a warning, so this is what shows the module works);
// the router-only listener asks no one.
func TestEveryListenerTakesItsPath(t *testing.T) {
	envoyBin, err := stack.ToolPath("envoy")
	if err != nil {
		t.Fatal(err)
	}
	root, err := stack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	fakellm := filepath.Join(t.TempDir(), "fakellm")
	if err := stack.GoBuild(t.Context(), root, "./cmd/fakellm", fakellm); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "hop-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r, err := startRig(t.Context(), dir, envoyBin, fakellm, self)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)

	c := &http.Client{Timeout: 5 * time.Second}
	for _, l := range r.ls {
		req := newRequest(r.urls[l.Name])
		req.Header.Del("authorization")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", l.Name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		want := http.StatusForbidden
		if !l.refuses() {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("%s without the caller's token: status %d, want %d", l.Name, resp.StatusCode, want)
		}

		lat, err := sequential(c, r.urls[l.Name], 5, 1)
		if err != nil || len(lat) != 5 {
			t.Errorf("%s with the token: %d timed requests, err %v", l.Name, len(lat), err)
		}
	}
	// A check that decides on a goroutine must hold the request's body too: a body hook
	// that let it through before the decision sent tokenless requests upstream (200, not
	// 403) now and then. Many tries make that race show.
	for i := range 200 {
		req := newRequest(r.urls["module_async"])
		req.Header.Del("authorization")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("module_async, tokenless request %d: %v", i+1, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("module_async, tokenless request %d of 200: status %d, want 403", i+1, resp.StatusCode)
		}
	}
	for _, name := range []string{"ext_authz_http", "module_async"} {
		if ok, total, _ := openLoop(r.urls[name], 50, 200*time.Millisecond); ok != total || total == 0 {
			t.Errorf("%s, open loop: %d of %d answered 200", name, ok, total)
		}
	}
}
