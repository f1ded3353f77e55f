package statefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type payload struct {
	Version string `json:"version"`
	Data    []byte `json:"data"`
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if err := Save(dir, "x.json", "k1", payload{"v1", []byte("<&>")}, at); err != nil {
		t.Fatal(err)
	}
	// A second save replaces the first and leaves no temporary file behind.
	if err := Save(dir, "x.json", "k1", payload{"v2", []byte{0, 1, 2}}, at.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "x.json" {
		t.Fatalf("dir holds %v, want only x.json", entries)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "x.json"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v mode %v, want %v", path, err, fi.Mode().Perm(), want)
		}
	}
	var got payload
	savedAt, err := Load(dir, "x.json", "k1", &got)
	if err != nil || got.Version != "v2" || string(got.Data) != "\x00\x01\x02" || !savedAt.Equal(at.Add(time.Minute)) {
		t.Fatalf("Load = %+v, %v, %v", got, savedAt, err)
	}
}

func TestLoadRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(path string)
		kind  string
		want  string
	}{
		{name: "missing", spoil: func(p string) { os.Remove(p) }, want: ErrNotFound.Error()},
		{name: "other kind", kind: "k2", want: `holds "k1", want "k2"`},
		{name: "truncated", spoil: func(p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-3], 0o600)
		}, want: "damaged (not a state file)"},
		{name: "edited payload", spoil: func(p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"v1"`, `"v9"`, 1)), 0o600)
		}, want: "checksum mismatch"},
		{name: "group writable", spoil: func(p string) { os.Chmod(p, 0o620) }, want: "lets other users write"},
		{name: "not a file", spoil: func(p string) { os.Remove(p); os.Mkdir(p, 0o700) }, want: "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := Save(dir, "x.json", "k1", payload{Version: "v1"}, time.Now()); err != nil {
				t.Fatal(err)
			}
			if tc.spoil != nil {
				tc.spoil(filepath.Join(dir, "x.json"))
			}
			kind := tc.kind
			if kind == "" {
				kind = "k1"
			}
			var got payload
			_, err := Load(dir, "x.json", kind, &got)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load: err = %v, want %q", err, tc.want)
			}
			if tc.name == "missing" && !errors.Is(err, ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestDirRefusesOthersWritable(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o757)
	if err := Dir(dir); err == nil || !strings.Contains(err.Error(), "lets other users write") {
		t.Fatalf("Dir(0757) = %v", err)
	}
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o600)
	if err := Dir(file); err == nil {
		t.Fatal("Dir(a file) = nil")
	}
}
