package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
)

// writeFiles creates files (name -> content) under dir; names may contain subdirectories.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	regionsYAML = `version: 1
regions:
  hk:
    listen: 0.0.0.0:10000
    extauthz: 127.0.0.1:10100
    upstreams: [openai]
`
	upstreamsYAML = `upstreams:
  openai:
    url: https://api.openai.com
    allowed_regions: [hk]
`
	routesYAML = `routes:
  openai:
    match: {prefix: /openai/}
    upstream: openai
    prefix_rewrite: /
`
	minimalYAML = regionsYAML + upstreamsYAML + routesYAML
)

func TestDirectoryEqualsSingleFile(t *testing.T) {
	tests := []struct {
		name  string
		paths func(t *testing.T) (single, dir string) // the same document as one file and split
	}{
		{
			name:  "testdata/split",
			paths: func(t *testing.T) (string, string) { return "testdata/valid.yaml", "testdata/split" },
		},
		{
			name: "one section per file, with empty and null ones",
			paths: func(t *testing.T) (string, string) {
				tmp := t.TempDir()
				writeFiles(t, tmp, map[string]string{"all.yaml": minimalYAML})
				dir := filepath.Join(tmp, "split")
				writeFiles(t, dir, map[string]string{
					"a-regions.yaml":   regionsYAML,
					"b-upstreams.yml":  upstreamsYAML,
					"c-routes.yaml":    routesYAML,
					"d-empty.yaml":     "",
					"e-comments.yaml":  "# nothing here yet\n",
					"f-null-sect.yaml": "routes:\nupstreams: ~\n",
				})
				return filepath.Join(tmp, "all.yaml"), dir
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			single, dir := tt.paths(t)
			srcOne, one, err := config.LoadConfig(single)
			if err != nil {
				t.Fatalf("LoadConfig(%s): %v", single, err)
			}
			srcDir, split, err := config.LoadConfig(dir)
			if err != nil {
				t.Fatalf("LoadConfig(%s): %v", dir, err)
			}
			if d := cmp.Diff(srcOne.File, srcDir.File); d != "" {
				t.Errorf("decoded document differs (-file +dir):\n%s", d)
			}
			if d := cmp.Diff(one, split); d != "" {
				t.Errorf("model differs (-file +dir):\n%s", d)
			}
			if len(one.Routes) == 0 || len(one.Upstreams) == 0 || len(one.Regions) == 0 {
				t.Errorf("model is missing sections: %+v", one)
			}
		})
	}
}

func TestDirectoryDuplicateName(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{
			name: "upstream in two files",
			files: map[string]string{
				"a.yaml": regionsYAML + upstreamsYAML,
				"b.yaml": upstreamsYAML + routesYAML,
			},
			want: "upstreams.openai: defined in both a.yaml and b.yaml",
		},
		{
			name: "route in two files, .yml and .yaml",
			files: map[string]string{
				"a.yaml": minimalYAML,
				"b.yml":  routesYAML,
			},
			want: "routes.openai: defined in both a.yaml and b.yml",
		},
		{
			name: "region in three files",
			files: map[string]string{
				"a.yaml": minimalYAML,
				"b.yaml": "regions:\n  hk:\n    listen: 0.0.0.0:1\n",
				"c.yaml": "regions:\n  hk:\n    listen: 0.0.0.0:2\n",
			},
			want: "regions.hk: defined in both a.yaml and b.yaml\n" +
				"regions.hk: defined in both b.yaml and c.yaml",
		},
		{
			name: "section key spelt with capitals",
			files: map[string]string{
				"a.yaml": minimalYAML,
				"b.yaml": "Upstreams:\n  openai:\n    url: https://evil.example.com\n",
			},
			want: "upstreams.openai: defined in both a.yaml and b.yaml",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			src, err := config.Load(dir)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", src.File)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestFiles(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		links map[string]string // symlink name -> target, relative to the directory
		want  []string          // relative to the directory, in order
	}{
		{
			name:  "sorted, .yaml and .yml",
			files: map[string]string{"b.yml": "", "c.yaml": "", "a.yaml": "", "10.yaml": "", "B.yaml": ""},
			want:  []string{"10.yaml", "B.yaml", "a.yaml", "b.yml", "c.yaml"},
		},
		{
			name: "hidden and non-YAML files ignored",
			files: map[string]string{
				"routes.yaml":       "",
				".routes.yaml.swp":  "junk",
				".hidden.yaml":      "junk",
				"routes.yaml~":      "junk",
				"routes.yaml.bak":   "junk",
				"README.md":         "junk",
				"routes.json":       "junk",
				"notes.YAML.txt":    "junk",
				"sub.yaml/x.yaml":   "a directory named like a file",
				"nested/more.yaml":  "not read: only files directly inside",
				"..2026_01_01/a.md": "",
			},
			want: []string{"routes.yaml"},
		},
		{
			name: "Kubernetes ConfigMap layout",
			files: map[string]string{
				"..2026_01_01_00_00_00.123/routes.yaml": minimalYAML,
			},
			links: map[string]string{
				"..data":      "..2026_01_01_00_00_00.123",
				"routes.yaml": "..data/routes.yaml",
			},
			want: []string{"routes.yaml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			for name, target := range tt.links {
				if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := config.Files(dir)
			if err != nil {
				t.Fatalf("Files: %v", err)
			}
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = filepath.Join(dir, w)
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("Files mismatch (-want +got):\n%s", d)
			}
		})
	}
}

func TestKubernetesLayoutLoads(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"..2026_01_01/routes.yaml": minimalYAML})
	for name, target := range map[string]string{"..data": "..2026_01_01", "routes.yaml": "..data/routes.yaml"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	_, cfg, err := config.LoadConfig(dir)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if got := cfg.RegionNames(); !cmp.Equal(got, []string{"hk"}) {
		t.Errorf("regions = %q, want [hk]", got)
	}
}

func TestFilesSingleFile(t *testing.T) {
	dir := t.TempDir()
	// A file given by name is used whatever its name.
	p := filepath.Join(dir, ".routes.conf")
	writeFiles(t, dir, map[string]string{".routes.conf": minimalYAML})
	got, err := config.Files(p)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{p}, got); d != "" {
		t.Errorf("Files mismatch (-want +got):\n%s", d)
	}
	if _, _, err := config.LoadConfig(p); err != nil {
		t.Errorf("LoadConfig(%s): %v", p, err)
	}
}

func TestLoadNoFiles(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		path  string // relative to the temporary directory
		want  string // %s is the full path
	}{
		{
			name: "empty directory",
			path: ".",
			want: `%s: read routes directory "%s": no .yaml or .yml files`,
		},
		{
			name:  "only hidden and non-YAML files",
			files: map[string]string{".routes.yaml.swp": minimalYAML, "routes.json": "{}"},
			path:  ".",
			want:  `%s: read routes directory "%s": no .yaml or .yml files`,
		},
		{
			name: "missing path",
			path: "nope.yaml",
			want: `%s: read routes "%s": open %s: no such file or directory`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			p := filepath.Join(dir, tt.path)
			src, err := config.Load(p)
			if err == nil {
				t.Fatal("Load succeeded; want an error")
			}
			want := strings.ReplaceAll(tt.want, "%s", p)
			if got := err.Error(); got != want {
				t.Errorf("error:\n%s\nwant:\n%s", got, want)
			}
			if src != nil {
				t.Errorf("Load returned Source %+v; want nil when there are no files to read", src)
			}
			if es := config.AsErrors(err); len(es) != 1 || es[0].Path != p {
				t.Errorf("AsErrors = %+v; want one error with path %q", es, p)
			}
		})
	}
}

func TestLoadAcceptsDocumentMarkers(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"leading ---", "---\n" + minimalYAML},
		{"trailing ---", minimalYAML + "---\n"},
		{"trailing --- and comment", minimalYAML + "---\n# end\n"},
		{"end marker", minimalYAML + "...\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"routes.yaml": tt.content})
			_, cfg, err := config.LoadConfig(filepath.Join(dir, "routes.yaml"))
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			if len(cfg.Routes) != 1 {
				t.Errorf("got %d routes, want 1", len(cfg.Routes))
			}
		})
	}
}

func TestEnvOverride(t *testing.T) {
	const yamlDoc = `version: 1
regions:
  hk:
    listen: 0.0.0.0:10000
    extauthz: 127.0.0.1:10100
    upstreams: [openai, my-up]
upstreams:
  openai:
    url: https://api.openai.com
    allowed_regions: [hk]
  my-up:
    url: https://my.example.com
    tls: {sni: my.example.com}
    allowed_regions: [hk]
`
	tests := []struct {
		name string
		env  map[string]string
		get  func(s *config.Source) any
		want any
	}{
		{
			name: "upstream url",
			env:  map[string]string{"LLMEDGE_UPSTREAMS_OPENAI_URL": "https://proxy.example.com/openai"},
			get:  func(s *config.Source) any { return s.File.Upstreams["openai"].URL },
			want: "https://proxy.example.com/openai",
		},
		{
			name: "without the variable the file wins",
			get:  func(s *config.Source) any { return s.File.Upstreams["openai"].URL },
			want: "https://api.openai.com",
		},
		{
			name: "name with a dash",
			env:  map[string]string{"LLMEDGE_UPSTREAMS_MY_UP_URL": "https://other.example.com"},
			get:  func(s *config.Source) any { return s.File.Upstreams["my-up"].URL },
			want: "https://other.example.com",
		},
		{
			name: "nested key",
			env:  map[string]string{"LLMEDGE_UPSTREAMS_MY_UP_TLS_SNI": "sni.example.com"},
			get:  func(s *config.Source) any { return s.File.Upstreams["my-up"].TLS.SNI },
			want: "sni.example.com",
		},
		{
			name: "region listen",
			env:  map[string]string{"LLMEDGE_REGIONS_HK_LISTEN": "127.0.0.1:9999"},
			get:  func(s *config.Source) any { return s.File.Regions["hk"].Listen },
			want: "127.0.0.1:9999",
		},
		{
			name: "key absent from the YAML is not overridden",
			env:  map[string]string{"LLMEDGE_UPSTREAMS_OPENAI_ENDPOINT": "10.0.0.1:443"},
			get:  func(s *config.Source) any { return s.File.Upstreams["openai"].Endpoint },
			want: "",
		},
		{
			name: "other prefixes are ignored",
			env:  map[string]string{"UPSTREAMS_OPENAI_URL": "https://wrong.example.com"},
			get:  func(s *config.Source) any { return s.File.Upstreams["openai"].URL },
			want: "https://api.openai.com",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"routes.yaml": yamlDoc})
			src, err := config.Load(filepath.Join(dir, "routes.yaml"))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.get(src); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEnvOverrideReachesModel(t *testing.T) {
	t.Setenv("LLMEDGE_UPSTREAMS_OPENAI_URL", "https://proxy.example.com:8443/openai/")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"routes.yaml": minimalYAML})
	_, cfg, err := config.LoadConfig(filepath.Join(dir, "routes.yaml"))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	u, _ := cfg.Upstream("openai")
	if u.Host != "proxy.example.com" || u.Authority != "proxy.example.com:8443" || u.BasePath != "/openai" {
		t.Errorf("upstream = host %q authority %q base %q; want the overridden URL", u.Host, u.Authority, u.BasePath)
	}
	if got := cfg.Routes[0].Rewrite; got != "/openai/" {
		t.Errorf("Rewrite = %q, want /openai/", got)
	}
}

func TestHash(t *testing.T) {
	// hash also works for files that do not load: Load returns their Source with the error.
	hash := func(t *testing.T, path string) string {
		t.Helper()
		src, err := config.Load(path)
		if src == nil {
			t.Fatalf("Load(%s) returned no Source: %v", path, err)
		}
		if len(src.Hash) != 64 {
			t.Fatalf("Hash %q is not a hex SHA-256", src.Hash)
		}
		return src.Hash
	}
	split := map[string]string{"a.yaml": regionsYAML + upstreamsYAML, "b.yaml": routesYAML}
	tests := []struct {
		name     string
		a, b     map[string]string // two directories
		file     string            // when set, load this file in each directory instead of the directory
		wantSame bool
	}{
		{name: "same file content", a: map[string]string{"r.yaml": minimalYAML}, b: map[string]string{"r.yaml": minimalYAML}, file: "r.yaml", wantSame: true},
		{name: "one byte changed", a: map[string]string{"r.yaml": minimalYAML}, b: map[string]string{"r.yaml": strings.Replace(minimalYAML, "10000", "10001", 1)}, file: "r.yaml"},
		{name: "byte appended", a: map[string]string{"r.yaml": minimalYAML}, b: map[string]string{"r.yaml": minimalYAML + "\n"}, file: "r.yaml"},
		{name: "same directory content", a: split, b: split, wantSame: true},
		{name: "one byte changed in one file of a directory", a: split, b: map[string]string{"a.yaml": regionsYAML + upstreamsYAML, "b.yaml": strings.Replace(routesYAML, "/openai/", "/openAI/", 1)}},
		{name: "file renamed in a directory", a: split, b: map[string]string{"a.yaml": regionsYAML + upstreamsYAML, "c.yaml": routesYAML}},
		{name: "content moved between files", a: split, b: map[string]string{"a.yaml": regionsYAML, "b.yaml": upstreamsYAML + routesYAML}},
		{name: "same broken content", a: map[string]string{"r.yaml": "version: [\n"}, b: map[string]string{"r.yaml": "version: [\n"}, file: "r.yaml", wantSame: true},
		{name: "broken content edited", a: map[string]string{"r.yaml": "version: [\n"}, b: map[string]string{"r.yaml": "version: [1\n"}, file: "r.yaml"},
		{name: "same undecodable directory", a: map[string]string{"a.yaml": minimalYAML, "b.yaml": upstreamsYAML}, b: map[string]string{"a.yaml": minimalYAML, "b.yaml": upstreamsYAML}, wantSame: true},
		{name: "ignored file added", a: split, b: map[string]string{"a.yaml": regionsYAML + upstreamsYAML, "b.yaml": routesYAML, ".b.yaml.swp": "x", "notes.txt": "x"}, wantSame: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			da, db := t.TempDir(), t.TempDir()
			writeFiles(t, da, tt.a)
			writeFiles(t, db, tt.b)
			pa, pb := da, db
			if tt.file != "" {
				pa, pb = filepath.Join(da, tt.file), filepath.Join(db, tt.file)
			}
			ha, hb := hash(t, pa), hash(t, pb)
			if again := hash(t, pa); again != ha {
				t.Errorf("loading the same files twice gave %s then %s", ha, again)
			}
			if (ha == hb) != tt.wantSame {
				t.Errorf("hashes %s and %s: same = %v, want %v", ha, hb, ha == hb, tt.wantSame)
			}
		})
	}
}

func TestHashRenameInPlace(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": regionsYAML + upstreamsYAML, "b.yaml": routesYAML})
	before, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "b.yaml"), filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	after, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if before.Hash == after.Hash {
		t.Errorf("renaming b.yaml to c.yaml kept hash %s", before.Hash)
	}
	if d := cmp.Diff(before.File, after.File); d != "" {
		t.Errorf("the document itself should not change (-before +after):\n%s", d)
	}
	if want := []string{filepath.Join(dir, "a.yaml"), filepath.Join(dir, "c.yaml")}; !cmp.Equal(after.Files, want) {
		t.Errorf("Files = %q, want %q", after.Files, want)
	}
}

func TestAsErrors(t *testing.T) {
	es := config.Errors{{Path: "a", Msg: "x"}, {Msg: "no path"}}
	if got, want := es.Error(), "a: x\nno path"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got := config.AsErrors(nil); got != nil {
		t.Errorf("AsErrors(nil) = %v", got)
	}
	if d := cmp.Diff(es, config.AsErrors(es)); d != "" {
		t.Errorf("AsErrors(Errors) (-want +got):\n%s", d)
	}
	if d := cmp.Diff(config.Errors{{Msg: os.ErrClosed.Error()}}, config.AsErrors(os.ErrClosed)); d != "" {
		t.Errorf("AsErrors(plain error) (-want +got):\n%s", d)
	}
}
