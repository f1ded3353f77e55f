package xds_test

// Control-plane build benchmarks: the whole reload pipeline for a large routes YAML, stage by
// stage (load, validate, translate, snapshot build), on one synthetic config of 1,000 routes
// over 5 regions and 20 upstreams. They measure; they assert nothing about time. Run them with
// `make bench`; results and their reading are in docs/BENCHMARKS.md.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/xds"
	"github.com/llmedge/llmedge/internal/benchconfig"
)

// benchFile is the shared benchmark document with hosts host names (0: no host-bound
// route) and route 0 renamed to rename when set.
func benchFile(hosts int, rename string) config.File {
	return benchconfig.File(benchOpts(hosts, rename))
}

func benchOpts(hosts int, rename string) benchconfig.Options {
	if hosts == 0 {
		hosts = -1
	}
	return benchconfig.Options{Hosts: hosts, Rename: rename}
}

func benchValidate(b *testing.B, f config.File) *model.Config {
	b.Helper()
	cfg, err := config.Validate(f)
	if err != nil {
		b.Fatalf("validate: %v", err)
	}
	if len(cfg.Routes) != len(f.Routes) || len(cfg.Regions) != len(f.Regions) {
		b.Fatalf("validated %d routes in %d regions, want %d in %d", len(cfg.Routes), len(cfg.Regions), len(f.Routes), len(f.Regions))
	}
	return cfg
}

func benchTranslate(b *testing.B, cfg *model.Config) map[string]*translate.Resources {
	b.Helper()
	all, err := translate.All(cfg)
	if err != nil {
		b.Fatalf("translate: %v", err)
	}
	return all
}

// benchWrite writes the document's YAML into a fresh directory and checks that it loads
// back as the document.
func benchWrite(b *testing.B, hosts int, rename string) string {
	b.Helper()
	opts := benchOpts(hosts, rename)
	f := benchconfig.File(opts)
	path := filepath.Join(b.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(benchconfig.YAML(opts)), 0o644); err != nil {
		b.Fatal(err)
	}
	src, err := config.Load(path)
	if err != nil {
		b.Fatalf("load generated YAML: %v", err)
	}
	if d := cmp.Diff(f, src.File); d != "" {
		b.Fatalf("generated YAML does not decode to the generated document (-want +got):\n%s", d)
	}
	return path
}

func newBenchServer(ctx context.Context) *xds.Server {
	return xds.New(ctx, slog.New(slog.DiscardHandler), nil)
}

// reportShape records the size of what one region's Envoys receive (all regions are alike).
// Call it after the b.Loop loop: the timer reset at the loop's start drops earlier metrics.
func reportShape(b *testing.B, all map[string]*translate.Resources) {
	res := all[benchconfig.Regions[0]]
	routes, size := 0, 0
	for _, rc := range res.Routes {
		for _, vh := range rc.VirtualHosts {
			routes += len(vh.Routes)
		}
		size += proto.Size(rc)
	}
	b.ReportMetric(float64(routes), "envoy-routes/region")
	b.ReportMetric(float64(size)/1024, "rds-KiB/region")
}

// BenchmarkValidate is config.Validate: the decoded document to the model.
func BenchmarkValidate(b *testing.B) {
	f := benchFile(benchconfig.Hosts, "")
	benchValidate(b, f)
	for b.Loop() {
		if _, err := config.Validate(f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadConfig is config.LoadConfig: read the file, parse and decode it with viper,
// check names, validate. The reload runs it on every watcher event, even before it knows
// the content is unchanged.
func BenchmarkLoadConfig(b *testing.B) {
	path := benchWrite(b, benchconfig.Hosts, "")
	for b.Loop() {
		if _, _, err := config.LoadConfig(path); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTranslateAll is translate.All for every region, which includes the deep
// validation of every resource; validated=true adds config.Validate in front.
func BenchmarkTranslateAll(b *testing.B) {
	f := benchFile(benchconfig.Hosts, "")
	b.Run("validated=false", func(b *testing.B) {
		cfg := benchValidate(b, f)
		for b.Loop() {
			if _, err := translate.All(cfg); err != nil {
				b.Fatal(err)
			}
		}
		reportShape(b, benchTranslate(b, cfg))
	})
	// What a reload of an edit costs: the control plane translates through a Cache, which
	// re-translates only the routes the edit changed (here route 0, in every region).
	b.Run("cached-one-route-changed", func(b *testing.B) {
		cfgs := []*model.Config{benchValidate(b, f), benchValidate(b, benchFile(benchconfig.Hosts, "r0000-renamed"))}
		c := translate.NewCache()
		i := 0
		for b.Loop() {
			i++
			if _, err := c.All(cfgs[i%2]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("validated=true", func(b *testing.B) {
		benchValidate(b, f)
		for b.Loop() {
			cfg, err := config.Validate(f)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := translate.All(cfg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTranslateHostFanout shows how host-bound routes multiply the route table: each
// host name gets a virtual host holding its own routes plus every host-less route.
func BenchmarkTranslateHostFanout(b *testing.B) {
	for _, hosts := range []int{0, benchconfig.Hosts, 16} {
		b.Run(fmt.Sprintf("hosts=%d", hosts), func(b *testing.B) {
			cfg := benchValidate(b, benchFile(hosts, ""))
			for b.Loop() {
				if _, err := translate.All(cfg); err != nil {
					b.Fatal(err)
				}
			}
			reportShape(b, benchTranslate(b, cfg))
		})
	}
}

// BenchmarkSnapshotBuild is Server.Update: content-hash every resource (a deterministic
// re-encoding, Any fields included), build and check each region's snapshot, set it.
//   - fresh: a new server each iteration (server creation not timed), so every region is set.
//   - unchanged: the same input again; everything is still hashed, nothing is set.
//   - one-route-changed: alternates between two inputs differing in one route that every
//     region serves, so every region's routes are set each time.
//
// No Envoy is connected, so no response is sent (see BenchmarkWriteToACK in e2e for that).
func BenchmarkSnapshotBuild(b *testing.B) {
	all := benchTranslate(b, benchValidate(b, benchFile(benchconfig.Hosts, "")))
	b.Run("fresh", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			ctx, cancel := context.WithCancel(b.Context())
			s := newBenchServer(ctx)
			b.StartTimer()
			changed, err := s.Update(all)
			b.StopTimer()
			cancel()
			if err != nil || len(changed) != len(benchconfig.Regions) {
				b.Fatalf("Update changed %v, err %v; want all %d regions", changed, err, len(benchconfig.Regions))
			}
			b.StartTimer()
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		s := newBenchServer(b.Context())
		if _, err := s.Update(all); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			changed, err := s.Update(all)
			if err != nil || len(changed) != 0 {
				b.Fatalf("Update changed %v, err %v; want no-op", changed, err)
			}
		}
	})
	b.Run("one-route-changed", func(b *testing.B) {
		other := benchTranslate(b, benchValidate(b, benchFile(benchconfig.Hosts, "r0000-renamed")))
		alternateUpdates(b, all, other)
	})
	// As the control plane runs it: the two inputs come from one translate.Cache, so they
	// share every route but route 0, and Update re-encodes only that one.
	b.Run("one-route-changed-cached", func(b *testing.B) {
		c := translate.NewCache()
		var inputs []map[string]*translate.Resources
		for _, rename := range []string{"", "r0000-renamed"} {
			in, err := c.All(benchValidate(b, benchFile(benchconfig.Hosts, rename)))
			if err != nil {
				b.Fatal(err)
			}
			inputs = append(inputs, in)
		}
		alternateUpdates(b, inputs[0], inputs[1])
	})
}

// alternateUpdates times Update switching between two inputs that differ in every region.
func alternateUpdates(b *testing.B, x, y map[string]*translate.Resources) {
	inputs := []map[string]*translate.Resources{x, y}
	s := newBenchServer(b.Context())
	if _, err := s.Update(x); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		changed, err := s.Update(inputs[i%2])
		if err != nil || len(changed) != len(benchconfig.Regions) {
			b.Fatalf("Update changed %v, err %v; want all %d regions", changed, err, len(benchconfig.Regions))
		}
	}
}

// BenchmarkFullRebuild is one applied edit as controlplane.Main.reload does it, minus the
// watcher hold-off and the network: LoadConfig (file, decode, validate), translation
// through a translate.Cache and Update on a running server, alternating between two files
// that differ in one route so that every iteration pushes every region. hosts=4 is the benchmark config; hosts=0 is the
// same 1,000 routes with no host-bound route (no virtual-host fan-out).
func BenchmarkFullRebuild(b *testing.B) {
	for _, hosts := range []int{benchconfig.Hosts, 0} {
		b.Run(fmt.Sprintf("hosts=%d", hosts), func(b *testing.B) {
			paths := []string{
				benchWrite(b, hosts, ""),
				benchWrite(b, hosts, "r0000-renamed"),
			}
			s := newBenchServer(b.Context())
			c := translate.NewCache()
			i := 0
			for b.Loop() {
				_, cfg, err := config.LoadConfig(paths[i%2])
				if err != nil {
					b.Fatal(err)
				}
				all, err := c.All(cfg)
				if err != nil {
					b.Fatal(err)
				}
				changed, err := s.Update(all)
				if err != nil || len(changed) != len(benchconfig.Regions) {
					b.Fatalf("Update changed %v, err %v; want all %d regions", changed, err, len(benchconfig.Regions))
				}
				i++
			}
		})
	}
}
