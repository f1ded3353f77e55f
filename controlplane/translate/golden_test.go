package translate_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/translate"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/out")

// TestGolden translates every testdata/in/<case>.yaml and compares each region's listeners,
// routes and clusters with testdata/out/<case>/<region>.<kind>.yaml. Each input exercises
// one feature on the smallest config that shows it (basic.yaml is the baseline), so a
// change to one feature rewrites only the goldens of that feature and of what it touches.
func TestGolden(t *testing.T) {
	cases, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range cases {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			_, cfg, err := config.LoadConfig(in)
			if err != nil {
				t.Fatalf("load %s: %v", in, err)
			}
			all, err := translate.All(cfg)
			if err != nil {
				t.Fatalf("translate: %v", err)
			}
			outDir := filepath.Join("testdata", "out", name)
			if *update {
				os.RemoveAll(outDir)
				if err := os.MkdirAll(outDir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			want := map[string]bool{}
			for region, res := range all {
				// The full reflective walk: proves every Any the translator emits was
				// made (and so validated) by toAny.
				if err := res.ValidateDeep(); err != nil {
					t.Errorf("region %s: %v", region, err)
				}
				l, r, c, sec, pol, rls, err := res.YAML()
				if err != nil {
					t.Fatal(err)
				}
				for kind, got := range map[string][]byte{"listeners": l, "routes": r, "clusters": c, "secrets": sec, "policy": pol, "ratelimits": rls} {
					file := filepath.Join(outDir, region+"."+kind+".yaml")
					want[file] = true
					if *update {
						if err := os.WriteFile(file, got, 0o644); err != nil {
							t.Fatal(err)
						}
						continue
					}
					exp, err := os.ReadFile(file)
					if err != nil {
						t.Fatalf("%v (run `make golden` to create it)", err)
					}
					if !bytes.Equal(got, exp) {
						t.Errorf("%s differs from the translator's output (run `make golden` if the change is intended):\n%s", file, lineDiff(string(exp), string(got)))
					}
				}
			}
			// A stale golden file for a region that no longer exists is drift too.
			files, _ := filepath.Glob(filepath.Join(outDir, "*.yaml"))
			for _, f := range files {
				if !want[f] {
					t.Errorf("%s is not produced any more; run `make golden`", f)
				}
			}
		})
	}
}

// lineDiff shows the first lines that differ, enough to see what changed.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  - " + wl + "\n  + " + gl + "\n")
			if shown++; shown == 10 {
				break
			}
		}
	}
	return b.String()
}
