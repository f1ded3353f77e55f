package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// deadline bounds every wait for something that must happen; it is generous because it is
// only reached when a test fails.
const deadline = 10 * time.Second

// syncBuffer is a log sink safe for the Run goroutine and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testLog logs to the test output and to the returned buffer.
func testLog(t *testing.T) (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	h := slog.NewTextHandler(io.MultiWriter(t.Output(), buf), &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(h), buf
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeAtomic writes a hidden temporary file and renames it into place.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	write(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newStore(t *testing.T, dir string) (*Store, *syncBuffer) {
	t.Helper()
	log, buf := testLog(t)
	s, err := New(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	return s, buf
}

// run starts s.Run and stops it when the test ends; Run must then return nil.
func run(t *testing.T, s *Store, poll time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, poll) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel; want nil", err)
			}
		case <-time.After(deadline):
			t.Errorf("Run did not return within %s of cancel", deadline)
		}
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", deadline, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// values returns the upstream's current key set as "name=value", sorted. It reads the
// snapshot rather than calling Next, so that it neither disturbs nor depends on the
// round-robin order other goroutines see.
func values(s *Store, upstream string) []string {
	var out []string
	if p := s.snap.Load().pools[upstream]; p != nil {
		for _, k := range p.keys {
			out = append(out, k.Name+"="+k.Value())
		}
	}
	slices.Sort(out)
	return out
}

func hasValues(s *Store, upstream string, want ...string) func() bool {
	slices.Sort(want)
	return func() bool { return slices.Equal(values(s, upstream), want) }
}

func TestRoundRobin(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "openai", "a"), "sk-a\n")
	write(t, filepath.Join(dir, "openai", "b"), "  sk-b  ")
	write(t, filepath.Join(dir, "openai", "c"), "sk-c")
	write(t, filepath.Join(dir, "anthropic", "only"), "sk-ant")
	s, _ := newStore(t, dir)

	if got := s.Count("openai"); got != 3 {
		t.Fatalf("Count(openai) = %d, want 3", got)
	}
	if got, want := s.Upstreams(), []string{"anthropic", "openai"}; !slices.Equal(got, want) {
		t.Fatalf("Upstreams() = %v, want %v", got, want)
	}
	var got []string
	for range 9 {
		k, ok := s.Next("openai")
		if !ok {
			t.Fatal("Next(openai) not ok")
		}
		got = append(got, k.Value())
	}
	want := []string{"sk-a", "sk-b", "sk-c", "sk-a", "sk-b", "sk-c", "sk-a", "sk-b", "sk-c"}
	if !slices.Equal(got, want) {
		t.Fatalf("Next sequence = %v, want %v", got, want)
	}
	// Advance counts keys given elsewhere in the same turn: after two, Next gives the third.
	s.Advance("openai", 2)
	s.Advance("openai", 0)
	s.Advance("gemini", 5) // no such upstream: nothing
	if k, _ := s.Next("openai"); k.Value() != "sk-c" {
		t.Fatalf("Next after Advance(2) = %s, want sk-c", k.Name)
	}
	if k, ok := s.Next("anthropic"); !ok || k.Name != "only" || k.Value() != "sk-ant" {
		t.Fatalf("Next(anthropic) = %v %v", k.Name, ok)
	}
	if _, ok := s.Next("gemini"); ok {
		t.Fatal("Next(gemini) ok for an unknown upstream")
	}
	if s.Count("gemini") != 0 {
		t.Fatal("Count(gemini) != 0")
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(filepath.Join(t.TempDir(), "missing"), nil); err == nil {
		t.Error("New on a missing directory: want an error")
	}
	f := filepath.Join(t.TempDir(), "file")
	write(t, f, "x")
	if _, err := New(f, nil); err == nil {
		t.Error("New on a file: want an error")
	}
	// An empty directory is fine: no upstreams yet.
	s, err := New(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Upstreams()) != 0 {
		t.Errorf("Upstreams() = %v, want none", s.Upstreams())
	}
}

func TestZeroStore(t *testing.T) {
	var s Store
	if _, ok := s.Next("x"); ok || s.Count("x") != 0 || s.Upstreams() != nil {
		t.Error("zero Store should have no keys")
	}
}

func TestLiveAddChangeRemove(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "openai", "a"), "sk-a")
	s, _ := newStore(t, dir)
	run(t, s, time.Hour) // events only: the poll never fires during the test

	write(t, filepath.Join(dir, "openai", "b"), "sk-b")
	eventually(t, "added key", hasValues(s, "openai", "a=sk-a", "b=sk-b"))

	write(t, filepath.Join(dir, "openai", "a"), "sk-a2") // in place (truncate + write)
	eventually(t, "changed key", hasValues(s, "openai", "a=sk-a2", "b=sk-b"))

	if err := os.Remove(filepath.Join(dir, "openai", "b")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "removed key", hasValues(s, "openai", "a=sk-a2"))

	// A new upstream directory is picked up, and then watched: a key added to it later is
	// seen too.
	write(t, filepath.Join(dir, "gemini", "g1"), "AIza-1")
	eventually(t, "new upstream", hasValues(s, "gemini", "g1=AIza-1"))
	write(t, filepath.Join(dir, "gemini", "g2"), "AIza-2")
	eventually(t, "key in new upstream", hasValues(s, "gemini", "g1=AIza-1", "g2=AIza-2"))

	if err := os.RemoveAll(filepath.Join(dir, "gemini")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "removed upstream", func() bool {
		return s.Count("gemini") == 0 && !slices.Contains(s.Upstreams(), "gemini")
	})

	// Removing the last key leaves the upstream listed but with no key.
	if err := os.Remove(filepath.Join(dir, "openai", "a")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "empty upstream", func() bool { return s.Count("openai") == 0 })
	if _, ok := s.Next("openai"); ok {
		t.Error("Next ok for an upstream without keys")
	}
	if !slices.Contains(s.Upstreams(), "openai") {
		t.Error("an upstream directory without keys should still be listed")
	}
}

func TestAtomicRename(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "anthropic", "primary"), "sk-old")
	s, _ := newStore(t, dir)
	run(t, s, time.Hour)

	writeAtomic(t, filepath.Join(dir, "anthropic", "primary"), "sk-new")
	eventually(t, "renamed key", hasValues(s, "anthropic", "primary=sk-new"))

	writeAtomic(t, filepath.Join(dir, "anthropic", "secondary"), "sk-second")
	eventually(t, "renamed new key", hasValues(s, "anthropic", "primary=sk-new", "secondary=sk-second"))
}

// k8sSwap mimics the kubelet's AtomicWriter: it writes files (relative path -> content)
// into a fresh timestamped directory under mount, points "..data" at it with a rename,
// fixes the top-level symlinks and deletes the previous payload.
func k8sSwap(t *testing.T, mount string, gen int, files map[string]string) {
	t.Helper()
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", gen, gen)
	tops := map[string]bool{}
	for rel, content := range files {
		write(t, filepath.Join(mount, ts, rel), content)
		tops[strings.SplitN(rel, "/", 2)[0]] = true
	}
	old, _ := os.Readlink(filepath.Join(mount, "..data"))
	tmp := filepath.Join(mount, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(mount, "..data")); err != nil {
		t.Fatal(err)
	}
	for top := range tops {
		link := filepath.Join(mount, top)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", top), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries, _ := os.ReadDir(mount)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && !tops[e.Name()] {
			os.Remove(filepath.Join(mount, e.Name()))
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(mount, old)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKubernetesSymlinkSwap(t *testing.T) {
	t.Run("projected volume at the root", func(t *testing.T) {
		// <dir>/openai -> ..data/openai, <dir>/..data -> ..2026_..., items openai/k1 etc.
		dir := t.TempDir()
		k8sSwap(t, dir, 1, map[string]string{"openai/k1": "sk-1"})
		s, _ := newStore(t, dir)
		if got := values(s, "openai"); !slices.Equal(got, []string{"k1=sk-1"}) {
			t.Fatalf("initial keys = %v", got)
		}
		run(t, s, time.Hour)

		k8sSwap(t, dir, 2, map[string]string{"openai/k1": "sk-1b", "openai/k2": "sk-2", "gemini/g": "AIza"})
		eventually(t, "first swap", hasValues(s, "openai", "k1=sk-1b", "k2=sk-2"))
		eventually(t, "first swap, new upstream", hasValues(s, "gemini", "g=AIza"))

		// A second swap proves the watches followed the retargeted symlinks.
		k8sSwap(t, dir, 3, map[string]string{"openai/k2": "sk-2c"})
		eventually(t, "second swap", hasValues(s, "openai", "k2=sk-2c"))
		eventually(t, "second swap removed upstream", func() bool { return !slices.Contains(s.Upstreams(), "gemini") })
	})
	t.Run("one secret volume per upstream", func(t *testing.T) {
		// <dir>/openai is the mount: <dir>/openai/k1 -> ..data/k1.
		dir := t.TempDir()
		mount := filepath.Join(dir, "openai")
		k8sSwap(t, mount, 1, map[string]string{"k1": "sk-1"})
		s, _ := newStore(t, dir)
		if got := values(s, "openai"); !slices.Equal(got, []string{"k1=sk-1"}) {
			t.Fatalf("initial keys = %v", got)
		}
		run(t, s, time.Hour)

		k8sSwap(t, mount, 2, map[string]string{"k1": "sk-1b", "k2": "sk-2"})
		eventually(t, "first swap", hasValues(s, "openai", "k1=sk-1b", "k2=sk-2"))
		k8sSwap(t, mount, 3, map[string]string{"k2": "sk-2c"})
		eventually(t, "second swap", hasValues(s, "openai", "k2=sk-2c"))
	})
}

func TestInvalidFilesSkipped(t *testing.T) {
	dir := t.TempDir()
	up := filepath.Join(dir, "openai")
	write(t, filepath.Join(up, "good"), "\n  sk-good \r\n")
	bad := map[string]string{
		"empty":       "",
		"blank":       " \n\t\r\n",
		"crlf":        "sk-SECRETCRLF\r\nX-Evil: 1",
		"lf":          "sk-SECRETLF\nX-Evil: 1",
		"nul":         "sk-SECRETNUL\x00",
		"tab":         "sk-SECRET\tTAB",
		"del":         "sk-SECRETDEL\x7f",
		"nonascii":    "sk-SECRETÜ",
		"toolarge":    strings.Repeat("S", MaxKeySize+1),
		"subdir/x":    "sk-SECRETSUBDIR",
		"dangling":    "", // replaced by a dangling symlink below
		".hidden":     "sk-SECRETHIDDEN",
		"editor~":     "sk-SECRETTILDE",
		"partial.tmp": "sk-SECRETTMP",
	}
	for name, content := range bad {
		if name == "dangling" {
			continue
		}
		write(t, filepath.Join(up, name), content)
	}
	if err := os.Symlink("nowhere", filepath.Join(up, "dangling")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "stray-file"), "sk-SECRETSTRAY")
	write(t, filepath.Join(dir, ".hidden-upstream", "k"), "sk-SECRETHIDDENUP")
	write(t, filepath.Join(dir, "anthropic", "bad"), "sk-SECRETONLYBAD\n\nmore")
	// Exactly the limit is fine.
	write(t, filepath.Join(dir, "gemini", "max"), strings.Repeat("M", MaxKeySize))

	s, logs := newStore(t, dir)
	if got := values(s, "openai"); !slices.Equal(got, []string{"good=sk-good"}) {
		t.Errorf("openai keys = %v, want only good", got)
	}
	if s.Count("anthropic") != 0 {
		t.Error("anthropic has only an invalid key; want none")
	}
	if s.Count("gemini") != 1 {
		t.Error("a key of exactly MaxKeySize bytes should be accepted")
	}
	if got, want := s.Upstreams(), []string{"anthropic", "gemini", "openai"}; !slices.Equal(got, want) {
		t.Errorf("Upstreams() = %v, want %v", got, want)
	}

	out := logs.String()
	for _, name := range []string{"empty", "blank", "crlf", "lf", "nul", "tab", "del", "nonascii", "toolarge", "subdir", "dangling", "stray-file", "anthropic/bad"} {
		if !strings.Contains(out, name) {
			t.Errorf("log does not name the skipped %q:\n%s", name, out)
		}
	}
	for _, quiet := range []string{".hidden", "editor~", "partial.tmp"} {
		if strings.Contains(out, quiet) {
			t.Errorf("log mentions %q, which should be skipped silently", quiet)
		}
	}
	if strings.Contains(out, "SECRET") || strings.Contains(out, "SSSS") || strings.Contains(out, "sk-good") {
		t.Errorf("log contains key content:\n%s", out)
	}

	// Problems are reported once, not on every reload.
	before := strings.Count(logs.String(), "skipping")
	if _, err := s.reload(true); err != nil {
		t.Fatal(err)
	}
	if after := strings.Count(logs.String(), "skipping"); after != before {
		t.Errorf("a reload with nothing changed logged %d more warnings", after-before)
	}
}

// TestHalfWrittenFile: a reload that catches a key file mid-write may serve the truncated
// key, but the event of the write completing reloads it.
func TestHalfWrittenFile(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "openai", "k"), "sk-first")
	s, _ := newStore(t, dir)
	run(t, s, time.Hour)

	f, err := os.OpenFile(filepath.Join(dir, "openai", "k"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("sk-hal"); err != nil {
		t.Fatal(err)
	}
	// Wait until the store has published the truncated key, the worst case.
	eventually(t, "truncated key", hasValues(s, "openai", "k=sk-hal"))
	if _, err := f.WriteString("f-and-half\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "complete key", hasValues(s, "openai", "k=sk-half-and-half"))
}

func TestPollFallback(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "openai", "k"), "sk-1")
	s, _ := newStore(t, dir)
	s.noWatch = true
	run(t, s, 10*time.Millisecond)
	write(t, filepath.Join(dir, "openai", "k2"), "sk-2")
	eventually(t, "polled key", hasValues(s, "openai", "k=sk-1", "k2=sk-2"))
}

func TestRunTwice(t *testing.T) {
	s, _ := newStore(t, t.TempDir())
	run(t, s, time.Hour)
	eventually(t, "Run to start", s.running.Load)
	if err := s.Run(context.Background(), time.Hour); err == nil {
		t.Error("a second concurrent Run should fail")
	}
}

// TestConcurrentNextDuringRotations hammers Next from 8 goroutines while the keys rotate 50
// times in every way a secret manager rotates them; no call may fail or see a bad key.
func TestConcurrentNextDuringRotations(t *testing.T) {
	dir := t.TempDir()
	up := filepath.Join(dir, "openai")
	write(t, filepath.Join(up, "a"), "key-0-a")
	write(t, filepath.Join(up, "b"), "key-0-b")
	s, _ := newStore(t, dir)
	run(t, s, time.Hour)

	valid := regexp.MustCompile(`^key-[0-9]+-[a-z]$`)
	var (
		stop  atomic.Bool
		calls atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		fails []string
	)
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				k, ok := s.Next("openai")
				calls.Add(1)
				if !ok || k.Name == "" || !valid.MatchString(k.Value()) || !strings.HasSuffix(k.Value(), "-"+k.Name) {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("ok=%v name=%q", ok, k.Name))
					mu.Unlock()
				}
				// Yield so that, on a machine with few CPUs, eight spinning readers do
				// not starve the watcher and stretch every rotation to a scheduler quantum.
				runtime.Gosched()
			}
		})
	}

	names := []string{"a", "b"}
	for gen := 1; gen <= 50; gen++ {
		switch gen % 3 {
		case 0: // change every key, atomically
			for _, n := range names {
				writeAtomic(t, filepath.Join(up, n), fmt.Sprintf("key-%d-%s", gen, n))
			}
		case 1: // add a new key, then remove the oldest
			n := string(rune('c' + gen%20))
			for slices.Contains(names, n) {
				n = string(rune(n[0] + 1))
			}
			writeAtomic(t, filepath.Join(up, n), fmt.Sprintf("key-%d-%s", gen, n))
			if err := os.Remove(filepath.Join(up, names[0])); err != nil {
				t.Fatal(err)
			}
			names = append(names[1:], n)
		case 2: // change one key in place
			writeAtomic(t, filepath.Join(up, names[0]), fmt.Sprintf("key-%d-%s", gen, names[0]))
		}
		want := make([]string, 0, len(names))
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(up, n))
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, n+"="+string(b))
		}
		eventually(t, fmt.Sprintf("rotation %d", gen), hasValues(s, "openai", want...))
	}
	stop.Store(true)
	wg.Wait()
	if len(fails) > 0 {
		t.Fatalf("%d of %d Next calls failed during rotation, e.g. %s", len(fails), calls.Load(), fails[0])
	}
	t.Logf("%d Next calls across 50 rotations", calls.Load())
}

func TestKeyRedaction(t *testing.T) {
	const secret = "sk-SUPERSECRET-0123456789"
	k := newKey("primary", secret)
	if k.Value() != secret {
		t.Fatal("Value() does not return the key")
	}
	type wrapper struct {
		Exported Key
		hidden   Key
		ptr      *Key
	}
	w := wrapper{Exported: k, hidden: k, ptr: &k}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
		outs = append(outs,
			fmt.Sprintf(verb, k),
			fmt.Sprintf(verb, &k),
			fmt.Sprintf(verb, []Key{k}),
			fmt.Sprintf(verb, map[string]Key{"k": k}),
			fmt.Sprintf(verb, w),
			fmt.Sprintf(verb, &w),
		)
	}
	outs = append(outs, fmt.Sprint(k), fmt.Sprintln(k), k.String(), k.GoString())
	if b, err := json.Marshal(w); err != nil {
		t.Fatal(err)
	} else {
		outs = append(outs, string(b))
	}
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var b bytes.Buffer
		log := slog.New(h(&b))
		log.Info("using key", "key", k, "keys", []Key{k})
		log.Info("using key", slog.Any("key", k))
		out := b.String()
		if !strings.Contains(out, "primary") || !strings.Contains(out, redacted) {
			t.Errorf("slog output should name the key and say %s: %s", redacted, out)
		}
		outs = append(outs, out)
	}
	for _, out := range outs {
		if strings.Contains(out, secret) || strings.Contains(out, "SUPERSECRET") {
			t.Errorf("printed a key's value: %s", out)
		}
	}
	if s := fmt.Sprintf("%v %+v %#v", k, k, k); !strings.Contains(s, "primary") {
		t.Errorf("formatted key should still show its name: %s", s)
	}
}

// TestReloadWaitsForSettledFiles: a reload that finds a key file modified within the last
// debounce interval (maybe still being written) keeps the current keys and asks to retry,
// and the final attempt publishes what it finds.
func TestReloadWaitsForSettledFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "openai", "k"), "sk-1")
	s, _ := newStore(t, dir)
	path := filepath.Join(dir, "openai", "k")
	write(t, path, "sk-2")
	future := time.Now().Add(time.Hour) // "just modified", whatever the machine's speed
	if err := os.Chtimes(path, future, future); err != nil {
		t.Fatal(err)
	}
	retry, err := s.reload(false)
	if err != nil || !retry {
		t.Fatalf("reload(false) = %v, %v; want retry", retry, err)
	}
	if got := values(s, "openai"); !slices.Equal(got, []string{"k=sk-1"}) {
		t.Fatalf("keys after a deferred reload = %v, want the previous ones", got)
	}
	if retry, err := s.reload(true); err != nil || retry {
		t.Fatalf("reload(true) = %v, %v; want published", retry, err)
	}
	if got := values(s, "openai"); !slices.Equal(got, []string{"k=sk-2"}) {
		t.Fatalf("keys after the final reload = %v", got)
	}
}

// TestDanglingUpstreamSymlink: a dangling symlink is a problem to report, not a rotation in
// flight to wait for.
func TestDanglingUpstreamSymlink(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "openai", "k"), "sk-1")
	if err := os.Symlink("..data/gone", filepath.Join(dir, "gone")); err != nil {
		t.Fatal(err)
	}
	s, logs := newStore(t, dir)
	if retry, err := s.reload(false); err != nil || retry {
		t.Fatalf("reload(false) = %v, %v; want published", retry, err)
	}
	if !strings.Contains(logs.String(), "dangling") {
		t.Errorf("want a warning about the dangling symlink:\n%s", logs)
	}
	if got := s.Upstreams(); !slices.Equal(got, []string{"openai"}) {
		t.Errorf("Upstreams() = %v", got)
	}
}
