package benchconfig

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
)

// The YAML the control-plane and e2e benchmarks write must be the document the build
// benchmarks validate, and that document must be the one BENCHMARKS.md describes.
func TestYAMLIsFile(t *testing.T) {
	for _, o := range []Options{{}, {Hosts: -1}, {Hosts: 16, Rename: "r0000-renamed"}, {Routes: 999}} {
		path := filepath.Join(t.TempDir(), "routes.yaml")
		if err := os.WriteFile(path, []byte(YAML(o)), 0o644); err != nil {
			t.Fatal(err)
		}
		src, err := config.Load(path)
		if err != nil {
			t.Fatalf("%+v: load: %v", o, err)
		}
		if d := cmp.Diff(File(o), src.File); d != "" {
			t.Errorf("%+v: YAML does not decode to File (-want +got):\n%s", o, d)
		}
		if _, err := config.Validate(src.File); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

func TestShape(t *testing.T) {
	f := File(Options{})
	hosts, headers, based := 0, 0, 0
	for _, r := range f.Routes {
		hosts += min(len(r.Match.Hosts), 1)
		headers += min(len(r.Match.Headers), 1)
	}
	for _, u := range f.Upstreams {
		if u.TLS.CAFile == "" || u.Endpoint == "" || len(u.AllowedRegions) != len(Regions) {
			t.Errorf("upstream %+v: want an endpoint, a ca_file and every region", u)
		}
		if filepath.Base(u.URL) == "v1beta" {
			based++
		}
	}
	got := []int{len(f.Regions), len(f.Upstreams), len(f.Routes), hosts, headers, based}
	if want := []int{5, 20, 1000, 100, 143, 5}; !cmp.Equal(got, want) {
		t.Errorf("regions, upstreams, routes, host-bound, header-bound, with base path = %v, want %v", got, want)
	}
}
