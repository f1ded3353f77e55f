package config_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/watch"
)

// generatedYAML is a valid routes YAML with n routes and n/10 callers (at least one).
func generatedYAML(n int) string {
	var b strings.Builder
	b.WriteString("version: 1\nregions:\n  hk: {listen: 127.0.0.1:10000, extauthz: 127.0.0.1:10100, upstreams: [openai]}\n")
	b.WriteString("upstreams:\n  openai: {url: https://api.openai.com, allowed_regions: [hk]}\nroutes:\n")
	for i := range n {
		fmt.Fprintf(&b, "  r%d:\n    match: {prefix: /r%d/}\n    upstream: openai\n    prefix_rewrite: /v1/\n", i, i)
	}
	b.WriteString("callers:\n")
	for i := range max(1, n/10) {
		fmt.Fprintf(&b, "  c%d: {tokens: [sha256:%064x], upstreams: [openai]}\n", i, i)
	}
	return b.String()
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLoadScales loads generated files; the time is logged, not asserted (see
// BenchmarkLoadConfig for figures). Before decoding was linear, 100,000 routes did not
// load in minutes.
func TestLoadScales(t *testing.T) {
	for _, n := range []int{10_000, 100_000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			path := writeTemp(t, generatedYAML(n))
			start := time.Now()
			_, cfg, err := config.LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Routes) != n || len(cfg.Callers) != n/10 {
				t.Errorf("%d routes and %d callers loaded, want %d and %d", len(cfg.Routes), len(cfg.Callers), n, n/10)
			}
			t.Logf("%d routes loaded in %v", n, time.Since(start))
		})
	}
}

func TestLimits(t *testing.T) {
	big := generatedYAML(config.DefaultMaxEntries + 1)
	tests := []struct {
		name     string
		files    map[string]string
		file     string // load this file of the directory instead of the directory
		limits   config.Limits
		wantPath string
		wantMsg  string
	}{
		{
			name: "default entry limit", files: map[string]string{"r.yaml": big}, file: "r.yaml",
			wantPath: "routes", wantMsg: fmt.Sprintf("%d entries; at most %d are accepted", config.DefaultMaxEntries+1, config.DefaultMaxEntries),
		},
		{
			name: "default size limit", files: map[string]string{"r.yaml": strings.Repeat("# padding\n", config.DefaultMaxBytes/10+1)}, file: "r.yaml",
			wantPath: "r.yaml", wantMsg: "larger than 32 MiB",
		},
		{
			name: "entries counted across the files of a directory", limits: config.Limits{MaxEntries: 2},
			files:    map[string]string{"a.yaml": "callers:\n  a: {}\n  b: {}\n", "b.yaml": "callers:\n  c: {}\n"},
			wantPath: "callers", wantMsg: "3 entries; at most 2",
		},
		{
			name: "bytes counted across the files of a directory", limits: config.Limits{MaxBytes: 100},
			files:    map[string]string{"a.yaml": strings.Repeat("#", 60), "b.yaml": strings.Repeat("#", 60)},
			wantPath: "b.yaml", wantMsg: "larger than 100 bytes",
		},
		{
			name: "files in a directory", limits: config.Limits{MaxFiles: 2},
			files:   map[string]string{"a.yaml": "", "b.yaml": "", "c.yaml": ""},
			wantMsg: "3 YAML files; at most 2 are read",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			path := dir
			if tt.file != "" {
				path = filepath.Join(dir, tt.file)
			}
			ctx := t.Context()
			var err error
			snap, err := config.NewProvider(path, tt.limits, watch.Options{}, nil).Load(ctx)
			if err == nil {
				_, err = config.Parse(ctx, snap, tt.limits)
			}
			es := config.AsErrors(err)
			if len(es) != 1 || !strings.HasSuffix(es[0].Path, tt.wantPath) || !strings.Contains(es[0].Msg, tt.wantMsg) {
				t.Errorf("errors %v; want one at %q saying %q", es, tt.wantPath, tt.wantMsg)
			}
			if !strings.Contains(err.Error(), "docs/CONFIG.md#size-limits") {
				t.Errorf("error %q does not point at the documentation", err)
			}
		})
	}
}

// TestParseStopsWhenCancelled: a cancelled context stops a long parse with the context's
// error (not a config error the control plane would report as a rejected edit).
func TestParseStopsWhenCancelled(t *testing.T) {
	snap := config.NewSnapshot([]config.Document{{Name: "r.yaml", Data: []byte(generatedYAML(20_000))}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := config.Parse(ctx, snap, config.Limits{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Parse with a cancelled context = %v, want context.Canceled", err)
	}
	// Cancelled while running: it returns, with the context's error, well before a
	// generous deadline.
	ctx, cancel = context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { _, err := config.Parse(ctx, snap, config.Limits{}); done <- err }()
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Parse cancelled mid-way = %v, want nil (it had finished) or context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Parse did not return after its context was cancelled")
	}
}

func TestYAMLFeatures(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // "" when it must load
	}{
		{
			name: "anchors, aliases and merge keys",
			yaml: strings.Replace(minimalYAML, "upstreams:\n", "x-base: &base {allowed_regions: [hk]}\nupstreams:\n", 1),
			// x-base is an unknown top-level field: aliases resolve, the schema still applies
			wantErr: "x-base: unknown field",
		},
		{
			name: "merge key",
			yaml: regionsYAML + "upstreams:\n  openai: &o\n    url: https://api.openai.com\n    allowed_regions: [hk]\n  other:\n    <<: *o\n    url: https://other.example.com\n" + routesYAML,
		},
		{
			name:    "billion laughs",
			yaml:    "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
			wantErr: "aliases expand",
		},
		{
			name:    "a mapping as a key",
			yaml:    minimalYAML + "? {a: 1}\n: x\n",
			wantErr: "a mapping key must be a plain value",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cfg, err := config.LoadConfig(writeTemp(t, tt.yaml))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("LoadConfig: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("LoadConfig = %v, want an error saying %q", err, tt.wantErr)
			}
			if tt.name == "merge key" {
				u, _ := cfg.Upstream("other")
				if u.Host != "other.example.com" || len(u.AllowedRegions) != 1 {
					t.Errorf("merged upstream = %+v; want the explicit url and the merged allowed_regions", u)
				}
			}
		})
	}
}

func TestNewProvider(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"routes.yaml": minimalYAML})
	for path, want := range map[string]string{
		dir:                                "*config.DirProvider",
		filepath.Join(dir, "routes.yaml"):  "*config.FileProvider",
		filepath.Join(dir, "later.yaml"):   "*config.FileProvider",
		filepath.Join(dir, "missing", "x"): "*config.FileProvider",
	} {
		p := config.NewProvider(path, config.Limits{}, watch.Options{}, nil)
		if got := fmt.Sprintf("%T", p); got != want || p.String() != path {
			t.Errorf("NewProvider(%s) = %s named %q, want %s", path, got, p.String(), want)
		}
	}
}
