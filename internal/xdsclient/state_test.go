package xdsclient

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// unreachable is an address nothing listens on: the control plane is away.
const unreachable = "127.0.0.1:1"

// savedBy runs a client against a server holding policy(hk, caller) until it has saved
// that config in dir, and returns the saved version.
func savedBy(t *testing.T, dir, caller string) string {
	t.Helper()
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", caller)}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, []string{"hk"}, func(o *Options) { o.StateDir = dir })
	eventually(t, "config applied", func() bool { return c.Status().Source == SourceControlPlane })
	v := c.Status().Version
	c.stop(t)
	srv.stop(t)
	return v
}

func TestSavedConfigServedWhileControlPlaneAway(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	version := savedBy(t, dir, "alice")

	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v, mode %v; want 0700", err, fi.Mode().Perm())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) != 1 || !strings.Contains(filepath.Base(files[0]), "hk") {
		t.Fatalf("state files = %v, want one for hk (no temp files left)", files)
	}
	if fi, _ := os.Stat(files[0]); fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode = %v, want 0600", fi.Mode().Perm())
	}

	// Restarted with the control plane away: the saved copy is in force before Run
	// connects, and reported as such.
	c := startClient(t, unreachable, []string{"hk"}, func(o *Options) { o.StateDir = dir })
	eventually(t, "saved config applied", func() bool { return c.Status().Source == SourceSaved })
	st := c.Status()
	if st.Version != version || st.SavedAt.IsZero() || st.Connected {
		t.Fatalf("status on the saved copy = %+v, want version %q, saved_at set", st, version)
	}
	if got := c.a.firstCaller("hk"); got != "alice" {
		t.Fatalf("caller in force = %q, want alice", got)
	}
}

func TestControlPlaneReplacesSavedConfig(t *testing.T) {
	dir := t.TempDir()
	savedBy(t, dir, "alice")

	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "carol")}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, []string{"hk"}, func(o *Options) { o.StateDir = dir })
	eventually(t, "live config applied", func() bool { return c.Status().Source == SourceControlPlane })
	if got := c.a.firstCaller("hk"); got != "carol" {
		t.Fatalf("caller in force = %q, want carol (the control plane's)", got)
	}
	st := c.Status()
	// The first request of the stream does not announce the saved version, so the
	// server sent its state and sees the usual ACK.
	if first := srv.requests()[0].req; first.GetVersionInfo() != "" {
		t.Errorf("first request version_info = %q, want empty", first.GetVersionInfo())
	}
	eventually(t, "ACK of the live config", func() bool { return srv.ackOf(st.Version) != nil })
	if !st.SavedAt.IsZero() || st.SaveError != "" {
		t.Errorf("status = %+v, want no saved_at and no save error", st)
	}
	// The live config is saved in turn.
	c.stop(t)
	srv.stop(t)
	c2 := startClient(t, unreachable, []string{"hk"}, func(o *Options) { o.StateDir = dir })
	eventually(t, "saved config applied", func() bool { return c2.Status().Source == SourceSaved })
	if got := c2.a.firstCaller("hk"); got != "carol" {
		t.Fatalf("saved caller = %q, want carol", got)
	}
}

func TestUnusableSavedConfigRefused(t *testing.T) {
	stateFile := func(t *testing.T, dir string) string {
		files, _ := filepath.Glob(filepath.Join(dir, "xds-*.json"))
		if len(files) != 1 {
			t.Fatalf("state files = %v", files)
		}
		return files[0]
	}
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, dir string)
		opts  func(*Options)
		log   string
	}{
		{name: "truncated", spoil: func(t *testing.T, dir string) {
			p := stateFile(t, dir)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/2], 0o600)
		}, log: "damaged"},
		{name: "flipped byte", spoil: func(t *testing.T, dir string) {
			p := stateFile(t, dir)
			b, _ := os.ReadFile(p)
			i := strings.Index(string(b), `"version":"`) + len(`"version":"`)
			b[i] ^= 1
			os.WriteFile(p, b, 0o600)
		}, log: "checksum mismatch"},
		{name: "writable by others", spoil: func(t *testing.T, dir string) {
			os.Chmod(stateFile(t, dir), 0o666)
		}, log: "lets other users write"},
		{name: "unreadable", spoil: func(t *testing.T, dir string) {
			p := stateFile(t, dir)
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, log: "not a regular file"},
		{name: "other region", spoil: func(t *testing.T, dir string) {
			// Another region's file copied under this region's name.
			p := stateFile(t, dir)
			b, _ := os.ReadFile(p)
			other := strings.Replace(p, "-hk-", "-sg-", 1)
			os.WriteFile(other, b, 0o600)
			os.Remove(p)
		}, opts: func(o *Options) { o.Node.Locality.Region = "sg" }, log: `saved for region \"hk\"`},
		{name: "rejected by apply", opts: func(o *Options) {
			o.Apply = func(string, []*anypb.Any) error { return errors.New("policy is for another region") }
		}, log: "policy is for another region"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			savedBy(t, dir, "alice")
			if tc.spoil != nil {
				tc.spoil(t, dir)
			}
			var logs logBuffer
			c := startClient(t, unreachable, []string{"hk"}, func(o *Options) {
				o.StateDir = dir
				o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
				if tc.opts != nil {
					tc.opts(o)
				}
			})
			eventually(t, "refusal logged", func() bool {
				return strings.Contains(logs.String(), "saved xds config refused") && strings.Contains(logs.String(), tc.log)
			})
			if st := c.Status(); st.Source != "" || !st.Updated.IsZero() {
				t.Fatalf("status = %+v, want nothing in force", st)
			}
		})
	}
}

// logBuffer collects log lines from the client's goroutine.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestStateDirWritableByOthersRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Server: unreachable, TypeURL: policyType, Apply: (&applier{}).apply, StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "lets other users write") {
		t.Fatalf("New with a 0777 state dir: err = %v", err)
	}
}
