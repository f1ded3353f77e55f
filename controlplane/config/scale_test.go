package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/config"
)

// generated writes a valid routes YAML with n routes (and n/10 callers) and returns its path.
func generated(t testing.TB, n int) string {
	t.Helper()
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
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadScales(t *testing.T) {
	for _, n := range []int{10_000, 100_000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			path := generated(t, n)
			start := time.Now()
			_, cfg, err := config.LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Routes) != n {
				t.Errorf("%d routes loaded, want %d", len(cfg.Routes), n)
			}
			t.Logf("%d routes loaded in %v", n, time.Since(start))
		})
	}
}
