package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/stack"
)

// The full edge row is make run's configuration: the benchmark's override leaves every
// process of that region as the stack starts it, and changes the pipelined variant's
// ratelimit by its two settings only.
func TestOverrideLeavesTheFullEdgeAlone(t *testing.T) {
	r := newRunner(t.TempDir(), stack.Paths{}, false, "150us", 8)
	rl := stack.Ratelimit{Region: vFull, XDSAddr: "127.0.0.1:1", RedisAddr: "127.0.0.1:2"}.Cmd("/bin/ratelimit")
	for name, c := range map[string]stack.Cmd{
		"controlplane":                        stack.ControlPlane{Config: "r.yaml", XDSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}.Cmd("/bin/llmedge"),
		stack.ProcessName("extauthz", vFull):  stack.ExtAuthz{Region: vFull, XDSAddr: "127.0.0.1:1"}.Cmd("/bin/llmedge"),
		stack.ProcessName("ratelimit", vFull): rl,
		stack.ProcessName("envoy", vFull):     stack.Envoy{Region: vFull, Concurrency: stack.LocalEnvoyConcurrency}.Cmd("/bin/envoy", "b.yaml", "a"),
		"redis":                               stack.Redis{Port: 3, Dir: "d"}.Cmd("/bin/redis-server"),
	} {
		got, err := r.override(name, c)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("override changed %s:\n got %+v\nwant %+v", name, got, c)
		}
	}

	got, err := r.override(stack.ProcessName("ratelimit", vFullPipe), rl)
	if err != nil {
		t.Fatal(err)
	}
	if extra, ok := cutPrefix(got.Env, rl.Env); !ok || !slices.Equal(extra, r.pipe) || got.Path != rl.Path {
		t.Errorf("pipelined ratelimit = %+v, want the stack's command plus %v", got, r.pipe)
	}
}

func cutPrefix(s, prefix []string) ([]string, bool) {
	if len(s) < len(prefix) || !slices.Equal(s[:len(prefix)], prefix) {
		return nil, false
	}
	return s[len(prefix):], true
}

// The row without usage recording is the full edge's routes YAML with usage.enabled off and
// nothing else changed.
func TestNoUsageRoutesDifferOnlyInTheSwitch(t *testing.T) {
	s := &rig{r: newRunner(t.TempDir(), stack.Paths{}, false, "150us", 8), fakeAddr: "127.0.0.1:9"}
	if err := s.writeKeys(); err != nil {
		t.Fatal(err)
	}
	rg := region{name: vNoUsage, listen: "127.0.0.1:10", authz: "127.0.0.1:11", ratelimit: "127.0.0.1:12"}
	load := func(noUsage bool) *model.Config {
		path, err := s.writeRoutes(fmt.Sprintf("routes-%v.yaml", noUsage), callerLimit, noUsage, rg)
		if err != nil {
			t.Fatal(err)
		}
		_, cfg, err := config.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	on, off := load(false), load(true)
	if !on.Usage.Enabled || off.Usage.Enabled {
		t.Fatalf("usage.enabled: with %v, without %v", on.Usage.Enabled, off.Usage.Enabled)
	}
	off.Usage.Enabled = true
	off.Warnings = on.Warnings
	if d := cmp.Diff(on, off, cmpopts.EquateEmpty()); d != "" {
		t.Errorf("the routes differ in more than usage.enabled (-with +without):\n%s", d)
	}
}

// The benchmark's regions have make run's admission ceiling.
func TestAdmissionCeilingIsMakeRuns(t *testing.T) {
	_, cfg, err := config.LoadConfig("../../examples/routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Regions) == 0 {
		t.Fatal("examples/routes.yaml has no regions")
	}
	for _, r := range cfg.Regions {
		if r.Overload.MaxRequestsPerSecond != admissionCeiling {
			t.Errorf("examples/routes.yaml: regions.%s.overload.max_requests_per_second = %d; the benchmark uses %d", r.Name, r.Overload.MaxRequestsPerSecond, admissionCeiling)
		}
	}
}

// A new report keeps the hand-written part of the old one.
func TestReportKeepsWhatIsWrittenByHand(t *testing.T) {
	path := t.TempDir() + "/datapath.md"
	kept := keptMarker + "\n\n## Past saturation\n\nwritten by hand\n"
	if err := os.WriteFile(path, []byte("# old generated part\n\n"+kept), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeMarkdown(path, &Results{Generated: "2026-12-01T00:00:00Z"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); !strings.HasSuffix(got, "\n"+kept) || strings.Contains(got, "old generated part") || strings.Count(got, keptMarker) != 1 {
		t.Errorf("report:\n%s\nwant the new report followed by:\n%s", got, kept)
	}
}

// The static Envoys run no llmedge module: the upstream cluster of make run's translation
// (extauthz inside Envoy, retries on, so key failover's module filter) comes out of
// staticClusters without upstream HTTP filters, and with everything else unchanged.
func TestStaticClustersRunNoModule(t *testing.T) {
	s := &rig{r: newRunner(t.TempDir(), stack.Paths{}, false, "150us", 8), fakeAddr: "127.0.0.1:9"}
	if err := s.writeKeys(); err != nil {
		t.Fatal(err)
	}
	rg := region{name: vFull, listen: "127.0.0.1:10", authz: "127.0.0.1:11", ratelimit: "127.0.0.1:12", inEnvoy: true}
	path, err := s.writeRoutes("routes-full.yaml", callerLimit, false, rg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := translated(path, vFull)
	if err != nil {
		t.Fatal(err)
	}
	const key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	filters := func(c *clusterv3.Cluster) int {
		var o upstreamhttpv3.HttpProtocolOptions
		if a, ok := c.TypedExtensionProtocolOptions[key]; ok {
			if err := a.UnmarshalTo(&o); err != nil {
				t.Fatal(err)
			}
		}
		return len(o.HttpFilters)
	}
	translatedWith := 0
	for _, c := range res.Clusters {
		translatedWith += filters(c)
	}
	if translatedWith == 0 {
		t.Fatal("make run's translation has no upstream filters: this test no longer tests anything")
	}
	for _, c := range staticClusters(res, staticBare) {
		if n := filters(c); n != 0 {
			t.Errorf("static cluster %s keeps %d upstream HTTP filters", c.Name, n)
		}
	}
}

// A static Envoy names no cluster it lacks: the translation's usage log streams to the
// control plane's cluster, which a static bootstrap has not, and Envoy accepts such a
// logger and fails every flush, a cost no edge pays.
func TestStaticBootstrapsNameOnlyTheirClusters(t *testing.T) {
	s := &rig{r: newRunner(t.TempDir(), stack.Paths{}, false, "150us", 8), fakeAddr: "127.0.0.1:9"}
	if err := s.writeKeys(); err != nil {
		t.Fatal(err)
	}
	for _, st := range []struct {
		routes string
		limit  int
		rg     region
		mode   staticMode
	}{
		{"routes-authz.yaml", 0, region{name: vAuthz, listen: "127.0.0.1:10", authz: "127.0.0.1:11"}, staticBare},
		{"routes-full.yaml", callerLimit, region{name: vFull, listen: "127.0.0.1:10", authz: "127.0.0.1:11", ratelimit: "127.0.0.1:12", inEnvoy: true}, staticBare},
		{"routes-full.yaml", callerLimit, region{name: vFull, listen: "127.0.0.1:10", authz: "127.0.0.1:11", ratelimit: "127.0.0.1:12", inEnvoy: true}, staticRateLimit},
	} {
		path, err := s.writeRoutes(st.routes, st.limit, false, st.rg)
		if err != nil {
			t.Fatal(err)
		}
		res, err := translated(path, st.rg.name)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "envoy.json")
		if err := writeStaticBootstrap(out, res, st.rg.name, 10, 11, st.mode, callerName, nil); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			StaticResources struct {
				Clusters []struct{ Name string } `json:"clusters"`
			} `json:"static_resources"`
		}
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, c := range b.StaticResources.Clusters {
			have[c.Name] = true
		}
		named := regexp.MustCompile(`"cluster_name":\s*"([^"]+)"`).FindAllStringSubmatch(string(raw), -1)
		if len(named) == 0 && st.mode == staticRateLimit {
			t.Errorf("%s: no cluster_name in the bootstrap: this test no longer reads it", st.routes)
		}
		for _, m := range named {
			if !have[m[1]] {
				t.Errorf("%s (mode %d): names cluster %q, which its bootstrap has not (clusters %v)", st.routes, st.mode, m[1], have)
			}
		}
	}
}
