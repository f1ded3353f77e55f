package keystore

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// problem returns the store's current problem for path, if any.
func problem(s *Store, path string) (Problem, bool) {
	for _, p := range s.Problems() {
		if p.Path == path {
			return p, true
		}
	}
	return Problem{}, false
}

// heldBecause waits until path is reported as held for a reason containing why.
func heldBecause(t *testing.T, s *Store, path, why string) Problem {
	t.Helper()
	var p Problem
	eventually(t, path+" held ("+why+")", func() bool {
		var ok bool
		p, ok = problem(s, path)
		return ok && p.Held && strings.Contains(p.Reason, why)
	})
	if p.Since.IsZero() {
		t.Errorf("problem %+v has no Since", p)
	}
	return p
}

// noKeyMaterial fails if the log holds any of the values.
func noKeyMaterial(t *testing.T, logs *syncBuffer, values ...string) {
	t.Helper()
	out := logs.String()
	for _, v := range values {
		if strings.Contains(out, v) {
			t.Errorf("log contains key material %q:\n%s", v, out)
		}
	}
}

// TestTruncatedKeyKeepsLastGoodKey: an upstream's only key file truncated in place (or
// left holding white space) keeps serving its last good key and is reported by upstream
// and key name; a good value replaces it, and deleting the file retires it.
func TestTruncatedKeyKeepsLastGoodKey(t *testing.T) {
	for name, content := range map[string]string{"truncated": "", "white space": " \n\t\n"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "openai", "primary")
			write(t, path, "sk-SECRET-first\n")
			s, logs := newStore(t, dir)
			run(t, s, time.Hour)

			write(t, path, content) // os.WriteFile truncates in place
			p := heldBecause(t, s, path, "empty")
			if p.Upstream != "openai" || p.Key != "primary" {
				t.Errorf("problem = %+v, want upstream openai, key primary", p)
			}
			if got := values(s, "openai"); len(got) != 1 || got[0] != "primary=sk-SECRET-first" {
				t.Fatalf("keys while the file is empty = %v, want the last good one", got)
			}
			if k, ok := s.Next("openai"); !ok || k.Value() != "sk-SECRET-first" {
				t.Fatalf("Next = %v, %v; want the last good key", k, ok)
			}
			if s.Count("openai") != 1 {
				t.Errorf("Count = %d, want 1", s.Count("openai"))
			}
			out := logs.String()
			if !strings.Contains(out, "keeping its last good key") || !strings.Contains(out, "upstream=openai") || !strings.Contains(out, "key=primary") {
				t.Errorf("want a warning naming upstream and key:\n%s", out)
			}

			write(t, path, "sk-SECRET-second")
			eventually(t, "new key", hasValues(s, "openai", "primary=sk-SECRET-second"))
			eventually(t, "problem resolved", func() bool { _, ok := problem(s, path); return !ok })

			// Held again, then deleted: deleting is how a key is retired.
			write(t, path, "")
			heldBecause(t, s, path, "empty")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			eventually(t, "key retired", func() bool { return s.Count("openai") == 0 })
			noKeyMaterial(t, logs, "sk-SECRET")
		})
	}
}

// TestKubernetesSwapToEmptyKeepsKey: a secret volume refreshed with an empty value (the
// kubelet swaps "..data" to a payload whose file is empty) keeps the last good key.
func TestKubernetesSwapToEmptyKeepsKey(t *testing.T) {
	dir := t.TempDir()
	k8sSwap(t, dir, 1, map[string]string{"openai/k1": "sk-SECRET-1"})
	s, logs := newStore(t, dir)
	run(t, s, time.Hour)

	k8sSwap(t, dir, 2, map[string]string{"openai/k1": ""})
	heldBecause(t, s, filepath.Join(dir, "openai", "k1"), "empty")
	if got := values(s, "openai"); len(got) != 1 || got[0] != "k1=sk-SECRET-1" {
		t.Fatalf("keys after a swap to an empty file = %v, want the last good one", got)
	}
	// The watches follow the swap: the next good payload is picked up.
	k8sSwap(t, dir, 3, map[string]string{"openai/k1": "sk-SECRET-3"})
	eventually(t, "swap to a good value", hasValues(s, "openai", "k1=sk-SECRET-3"))
	noKeyMaterial(t, logs, "sk-SECRET")
}

// failOpen makes s.open fail with a permission error for the paths in fail.
func failOpen(s *Store, fail *atomic.Pointer[string]) {
	s.open = func(name string) (io.ReadCloser, error) {
		if p := fail.Load(); p != nil && *p == name {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
		}
		return os.Open(name)
	}
}

// TestUnreadableKeepsKey: a key file, or a whole upstream directory, that cannot be read
// keeps its last good keys and is reported.
func TestUnreadableKeepsKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "openai", "primary")
	write(t, path, "sk-SECRET-1")
	write(t, filepath.Join(dir, "openai", "second"), "sk-SECRET-2")
	s, logs := newStore(t, dir)
	var fail atomic.Pointer[string]
	failOpen(s, &fail)
	run(t, s, time.Hour)

	fail.Store(&path)
	write(t, path, "sk-SECRET-1") // an event, so the store reads the file again
	heldBecause(t, s, path, "permission denied")
	if got := values(s, "openai"); len(got) != 2 {
		t.Fatalf("keys with an unreadable file = %v, want both last good ones", got)
	}
	fail.Store(nil)
	write(t, path, "sk-SECRET-1b")
	eventually(t, "readable again", hasValues(s, "openai", "primary=sk-SECRET-1b", "second=sk-SECRET-2"))

	updir := filepath.Join(dir, "openai")
	fail.Store(&updir)
	write(t, filepath.Join(updir, "third"), "sk-SECRET-3")
	p := heldBecause(t, s, updir, "cannot read directory")
	if p.Upstream != "openai" || p.Key != "" {
		t.Errorf("directory problem = %+v", p)
	}
	if got := values(s, "openai"); len(got) != 2 {
		t.Fatalf("keys with an unreadable directory = %v, want the last good ones", got)
	}
	fail.Store(nil)
	write(t, filepath.Join(updir, "third"), "sk-SECRET-3")
	eventually(t, "directory readable again", hasValues(s, "openai", "primary=sk-SECRET-1b", "second=sk-SECRET-2", "third=sk-SECRET-3"))
	noKeyMaterial(t, logs, "sk-SECRET")

	if os.Geteuid() != 0 {
		// Where permissions bind, the real thing behaves the same.
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		heldBecause(t, s, path, "permission denied")
		if s.Count("openai") != 3 {
			t.Errorf("Count = %d with a mode-0 key file, want 3", s.Count("openai"))
		}
	}
}

// TestEmptyFromTheStart: a key file that never held a good value is reported and
// ignored, at start-up and when it appears later; it is used once it gets one.
func TestEmptyFromTheStart(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "anthropic", "k")
	write(t, empty, "")
	write(t, filepath.Join(dir, "openai", "a"), "sk-SECRET-a")
	s, logs := newStore(t, dir)
	if s.Count("anthropic") != 0 {
		t.Fatalf("an empty key file gave %d keys", s.Count("anthropic"))
	}
	if p, ok := problem(s, empty); !ok || p.Held || p.Reason != "empty" || p.Upstream != "anthropic" || p.Key != "k" {
		t.Errorf("problem for the empty file = %+v, %v; want reported, not held", p, ok)
	}
	if !strings.Contains(logs.String(), "skipping key file") {
		t.Errorf("want a warning about the empty file:\n%s", logs)
	}
	run(t, s, time.Hour)

	late := filepath.Join(dir, "openai", "b")
	write(t, late, "")
	eventually(t, "late empty file reported", func() bool { p, ok := problem(s, late); return ok && !p.Held })
	if got := values(s, "openai"); len(got) != 1 || got[0] != "a=sk-SECRET-a" {
		t.Errorf("keys = %v, want only a", got)
	}

	write(t, empty, "sk-SECRET-k")
	eventually(t, "key once written", hasValues(s, "anthropic", "k=sk-SECRET-k"))
	noKeyMaterial(t, logs, "sk-SECRET")
}

// TestStructuralProblemsDoNotHold: an entry that stops being a key file (replaced by a
// directory, or a symlink left dangling) retires the key like a deletion.
func TestStructuralProblemsDoNotHold(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "openai", "k")
	write(t, path, "sk-1")
	s, _ := newStore(t, dir)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", path); err != nil {
		t.Fatal(err)
	}
	if _, err := s.reload(true); err != nil {
		t.Fatal(err)
	}
	if s.Count("openai") != 0 {
		t.Error("a dangling symlink kept the key")
	}
	if p, ok := problem(s, path); !ok || p.Held {
		t.Errorf("problem = %+v, %v; want reported, not held", p, ok)
	}
}
