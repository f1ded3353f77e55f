package stack

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/internal/transport"
)

func TestSocketNames(t *testing.T) {
	s := Sockets{Dir: "/run/llmedge"}
	want := []string{"/run/llmedge/redis.sock", "/run/llmedge/xds.sock",
		"/run/llmedge/ratelimit-hk.sock", "/run/llmedge/ratelimit-sg.sock",
		"/run/llmedge/extauthz-hk.sock", "/run/llmedge/extauthz-sg.sock"}
	if got := s.All([]string{"hk", "sg"}); !slices.Equal(got, want) {
		t.Errorf("All = %q, want %q", got, want)
	}
	if s.XDS() != want[1] || s.ExtAuthz("sg") != want[5] || s.Ratelimit("hk") != want[2] || s.Redis() != want[0] {
		t.Errorf("XDS %s ExtAuthz %s Ratelimit %s Redis %s", s.XDS(), s.ExtAuthz("sg"), s.Ratelimit("hk"), s.Redis())
	}
	if SocketFile("envoy", "hk") != "" || SocketFile("fakellm", "") != "" {
		t.Error("Envoy and fakellm have no socket")
	}
	if Unix(s.XDS()) != "unix:/run/llmedge/xds.sock" {
		t.Errorf("Unix = %s", Unix(s.XDS()))
	}
}

func TestMakeSockets(t *testing.T) {
	base := t.TempDir()
	s, err := MakeSockets(base, []string{"hk"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Dir != filepath.Join(base, "sock") {
		t.Errorf("Dir = %s, want <base>/sock", s.Dir)
	}
	fi, err := os.Stat(s.Dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v %v, want mode 0700", fi.Mode(), err)
	}
	// An older run left it open: it is closed again.
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if s2, err := MakeSockets(base, []string{"hk"}); err != nil || s2 != s {
		t.Fatalf("second MakeSockets: %v %v", s2, err)
	}
	if fi, _ := os.Stat(s.Dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("mode %v after the second MakeSockets, want 0700", fi.Mode().Perm())
	}
}

func TestMakeSocketsFallsBackToAShortDirectory(t *testing.T) {
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	s, err := MakeSockets(deep, []string{"hk", "a-long-region-name"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(s.Dir) })
	if strings.HasPrefix(s.Dir, deep) {
		t.Fatalf("Dir %s is under the deep run directory", s.Dir)
	}
	for _, p := range s.All([]string{"hk", "a-long-region-name"}) {
		if _, err := transport.Parse(Unix(p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if err := transport.CheckSocketDir(s.Dir); err != nil {
		t.Error(err)
	}
	// The same base gets the same directory (a restarted make run finds its sockets).
	again, err := MakeSockets(deep, nil)
	if err != nil || again != s {
		t.Errorf("again: %v %v, want %v", again, err, s)
	}
	// A symlink planted where the directory goes is refused, not followed.
	other := t.TempDir()
	if err := os.RemoveAll(s.Dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, s.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := MakeSockets(deep, nil); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("MakeSockets over a symlink: %v", err)
	}
}
