package config_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/controlplane/config"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestGoldenErrors loads every testdata/invalid/<case>.yaml and compares the error text,
// exactly as Errors.Error() prints it (one "path: message" line per error), with
// testdata/invalid/<case>.errors. `make golden` rewrites the .errors files.
func TestGoldenErrors(t *testing.T) {
	inputs, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no invalid inputs: %v", err)
	}
	want := map[string]bool{}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		golden := strings.TrimSuffix(in, ".yaml") + ".errors"
		want[golden] = true
		t.Run(name, func(t *testing.T) {
			src, cfg, err := config.LoadConfig(in)
			if err == nil {
				t.Fatalf("LoadConfig(%s) succeeded; want errors (model: %+v, warnings: %q)", in, cfg, cfg.Warnings)
			}
			if cfg != nil {
				t.Errorf("LoadConfig(%s) returned a model along with the error", in)
			}
			// The files could be read, so the Source comes back too: the control plane uses its
			// hash to tell an unchanged broken file from a new edit.
			if src == nil || len(src.Hash) != 64 || len(src.Files) != 1 || src.Files[0] != in {
				t.Errorf("LoadConfig(%s) returned Source %+v with the error; want its file and hash", in, src)
			}
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("LoadConfig(%s) error is %T, not config.Errors: %v", in, err, err)
			}
			got := err.Error() + "\n"
			if n := strings.Count(got, "\n"); n != len(es) {
				t.Errorf("%d errors printed on %d lines; a message spans lines:\n%s", len(es), n, got)
			}
			for _, e := range es {
				if e.Msg == "" {
					t.Errorf("error at %q has no message", e.Path)
				}
			}
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run `make golden` to create it)", err)
			}
			if got != string(exp) {
				t.Errorf("errors for %s differ from %s (run `make golden` if the change is intended)\n--- want\n%s--- got\n%s", in, golden, exp, got)
			}
		})
	}
	// A golden file whose input is gone is drift too.
	goldens, _ := filepath.Glob("testdata/invalid/*.errors")
	for _, g := range goldens {
		if !want[g] {
			t.Errorf("%s has no input %s; delete it", g, strings.TrimSuffix(g, ".errors")+".yaml")
		}
	}
}
