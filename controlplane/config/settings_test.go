package config_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/internal/benchconfig"
)

// TestSettingsEqualsViper: for every routes YAML in the tree and the benchmark's, alone
// and merged in sequences, with and without environment overrides, Parse's own walk
// must hand mapstructure exactly what viper would.
func TestSettingsEqualsViper(t *testing.T) {
	files := routesYAMLs(t)
	// Documents that merge into each other in every way viper distinguishes: a mapping
	// over a mapping, a scalar over a mapping and the reverse, nil and empty values, lists
	// of mappings.
	merges := [][]byte{
		[]byte("version: 1\nusage: {enabled: true, retention: 24h}\nprobes: null\nalerts: {}\n"),
		[]byte("usage: {enabled: false, prices: {openai: {input: 1.5}}}\nversion: 2\nextra: {a: {}, b: {c: {}}}\n"),
		[]byte("usage: off\nalerts: {rules: [{name: x, for: 1m}, {name: y}]}\nextra: [1, 2]\n"),
		[]byte("version: {nested: 1}\nextra: {a: 1}\nregions: {hk: {listen: ':1', upstreams: null}}\n"),
	}
	type tc struct {
		name string
		docs [][]byte
	}
	var cases []tc
	for i, f := range files {
		cases = append(cases, tc{name: "file" + string(rune('a'+i%26)), docs: [][]byte{f}})
	}
	cases = append(cases, tc{"merges", merges}, tc{"merges reversed", [][]byte{merges[3], merges[2], merges[1], merges[0]}})
	for i := 0; i+1 < len(files); i += 7 {
		cases = append(cases, tc{"two files", [][]byte{files[i], files[i+1]}})
	}
	envs := []map[string]string{
		nil,
		{"LLMEDGE_UPSTREAMS_OPENAI_URL": "https://proxy.example.com/openai", "LLMEDGE_VERSION": "1"},
		{"LLMEDGE_UPSTREAMS_OPENAI_URL": "", "LLMEDGE_REGIONS_HK_LISTEN": "127.0.0.1:9999"},
		{"LLMEDGE_UPSTREAMS_OPENAI": "shadows every openai key", "LLMEDGE_USAGE_ENABLED": "true"},
		{"LLMEDGE_ROUTES": "x", "LLMEDGE_PROBES": "y", "LLMEDGE_REGIONS_HK_UPSTREAMS": "openai"},
		{"LLMEDGE_UPSTREAMS_MY_UP_URL": "https://other.example.com", "LLMEDGE_UPSTREAMS_MY_UP_TLS_SNI": "sni.example.com", "LLMEDGE_WATCH_SETTLE": "1s"},
	}
	decode := func(t *testing.T, docs [][]byte) []map[string]any {
		t.Helper()
		var out []map[string]any
		for _, d := range docs {
			m, err := config.DecodeMapping(d)
			if err != nil {
				continue // not a mapping: Parse reports it before this point
			}
			if m != nil {
				out = append(out, m)
			}
		}
		return out
	}
	fast := 0
	for _, env := range envs {
		for k, v := range env {
			t.Setenv(k, v)
		}
		for _, c := range cases {
			want := config.ViperSettings(decode(t, c.docs))
			got, ok := config.Settings(decode(t, c.docs), os.Environ())
			if !ok {
				continue
			}
			fast++
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("%s with env %v: settings differ from viper's (-viper +ours):\n%s", c.name, env, d)
			}
		}
		for k := range env {
			os.Unsetenv(k)
		}
	}
	if fast < len(envs)*len(files)/2 {
		t.Errorf("only %d of %d cases took the fast path", fast, len(envs)*len(cases))
	}
	// Keys viper would read differently are left to it.
	for _, doc := range []string{"routes: {a.b: {upstream: x}}\n", "Routes: {}\n", "routes: {r: {match: {Prefix: /x}}}\n", "x: [{A: 1}]\n", "'': 1\n"} {
		m, err := config.DecodeMapping([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := config.Settings([]map[string]any{m}, nil); ok {
			t.Errorf("%q took the fast path", doc)
		}
	}
}

// routesYAMLs is every routes YAML in the tree (valid or not) and the benchmark's.
func routesYAMLs(t *testing.T) [][]byte {
	t.Helper()
	var files [][]byte
	for _, pattern := range []string{"testdata/*.yaml", "testdata/*/*.yaml", "testdata/*/*.yml", "../translate/testdata/in/*.yaml", "../../examples/*.yaml", "../../examples/*/*.yaml"} {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, b)
		}
	}
	if len(files) < 50 {
		t.Fatalf("found %d routes YAML files; the globs are out of date", len(files))
	}
	files = append(files, []byte(benchconfig.YAML(benchconfig.Options{Hosts: benchconfig.Hosts})))
	return files
}

// TestDecodeRoutesEqualsMapstructure: decoding plain routes directly must give the File,
// and the error, that mapstructure gives, for every routes YAML in the tree and for
// routes mapstructure reads by weak typing or refuses (which must go to mapstructure).
func TestDecodeRoutesEqualsMapstructure(t *testing.T) {
	docs := routesYAMLs(t)
	for _, r := range []string{
		`{match: {prefix: /a, hosts: [], headers: []}, upstream: u}`,
		`{match: {prefix: /a, headers: [{}, {name: x-a, present: true}, {name: x-b, prefix: p, exact: e}]}, upstream: u, api: none, prefix_rewrite: /}`,
		`{match: {path: /a, hosts: [a.example.com, "*.b.example.com"]}}`,
		`{match: {prefix: /a, hosts: a.example.com}}`,      // a string for a list (weak)
		`{match: {prefix: 5}, upstream: 7}`,                // numbers for strings (weak)
		`{match: {headers: [{name: x, present: "true"}]}}`, // a string for a bool (weak)
		`{match: {headers: [{name: x, present: 1}]}}`,
		`{match: {prefix: /a}, priority: 1}`,   // unknown key
		`{match: {prefix: /a, hosts: [null]}}`, // nil in a list
		`{match: {headers: [x-a]}}`,            // not a mapping
		`{match: [/a]}`,
		`/a`,
	} {
		docs = append(docs, []byte("version: 1\nroutes:\n  r: "+r+"\n  s: {match: {prefix: /s}, upstream: u}\n"))
	}
	direct := 0
	for i, d := range docs {
		m, err := config.DecodeMapping(d)
		if err != nil || m == nil {
			continue
		}
		input := config.ViperSettings([]map[string]any{m})
		want, wantErr := config.DecodeFile(t.Context(), input, false)
		got, gotErr := config.DecodeFile(t.Context(), input, true)
		// A document with errors in several map entries gets them in map order, from
		// either decoder: the same errors, in any order.
		if (wantErr == nil) != (gotErr == nil) || (wantErr != nil && errorLines(wantErr) != errorLines(gotErr)) {
			t.Errorf("document %d: error %v, mapstructure's %v", i, gotErr, wantErr)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("document %d: decoded File differs from mapstructure's (-mapstructure +direct):\n%s", i, diff)
		}
		if wantErr == nil && len(want.Routes) > 0 {
			direct++
		}
	}
	if direct < 40 {
		t.Errorf("only %d of %d documents decoded with routes; the corpus is out of date", direct, len(docs))
	}
}

// errorLines is an error's lines, sorted.
func errorLines(err error) string {
	lines := strings.Split(err.Error(), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
