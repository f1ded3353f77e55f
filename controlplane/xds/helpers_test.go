package xds

import (
	"fmt"
	"github.com/llmedge/llmedge/internal/testenv"
	"log/slog"
	"maps"
	"net"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/translate"
)

// eventually polls f with a deadline (testenv.Eventually at a 5 ms interval).
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testenv.Eventually(t, timeout, 5*time.Millisecond, f)
}

// testFile is examples/routes.yaml as a decoded document: hk serves openai and anthropic,
// sg also serves gemini. Each call returns fresh maps, so edits never leak between cases.
func testFile() config.File {
	return config.File{
		Version: config.SchemaVersion,
		Regions: map[string]config.Region{
			"hk": {Listen: "127.0.0.1:10000", ExtAuthz: "127.0.0.1:10100", Upstreams: []string{"openai", "anthropic"}},
			"sg": {Listen: "127.0.0.1:10001", ExtAuthz: "127.0.0.1:10101", Upstreams: []string{"openai", "anthropic", "gemini"}},
		},
		Upstreams: map[string]config.Upstream{
			"openai":    {URL: "http://127.0.0.1:8090", AllowedRegions: []string{"hk", "sg"}},
			"anthropic": {URL: "http://127.0.0.1:8090", AllowedRegions: []string{"hk", "sg"}},
			"gemini":    {URL: "http://127.0.0.1:8090", AllowedRegions: []string{"sg"}},
		},
		Routes: map[string]config.Route{
			"openai":    {Match: config.Match{Prefix: "/openai"}, Upstream: "openai", PrefixRewrite: "/"},
			"anthropic": {Match: config.Match{Prefix: "/anthropic"}, Upstream: "anthropic", PrefixRewrite: "/"},
			"gemini":    {Match: config.Match{Prefix: "/gemini"}, Upstream: "gemini", PrefixRewrite: "/"},
		},
	}
}

// resources validates and translates f, as the control plane does before Update.
func resources(t *testing.T, f config.File) map[string]*translate.Resources {
	t.Helper()
	cfg, err := config.Validate(f)
	if err != nil {
		t.Fatalf("validate test config: %v", err)
	}
	all, err := translate.All(cfg)
	if err != nil {
		t.Fatalf("translate test config: %v", err)
	}
	return all
}

// bigFile is testFile with n more routes on openai, so that the route configurations are
// large (about 100 bytes a route) as a real deployment's are.
func bigFile(n int) config.File {
	f := testFile()
	for i := range n {
		name := fmt.Sprintf("extra%04d", i)
		f.Routes[name] = config.Route{Match: config.Match{Prefix: "/" + name}, Upstream: "openai", PrefixRewrite: "/"}
	}
	return f
}

func edited(edit func(*config.File)) config.File {
	f := testFile()
	if edit != nil {
		edit(&f)
	}
	return f
}

// withoutSG removes region sg from testFile, and what only sg served.
func withoutSG(f *config.File) {
	delete(f.Regions, "sg")
	delete(f.Upstreams, "gemini")
	delete(f.Routes, "gemini")
	for _, n := range []string{"openai", "anthropic"} {
		u := f.Upstreams[n]
		u.AllowedRegions = []string{"hk"}
		f.Upstreams[n] = u
	}
}

func newServer(t *testing.T, reg prometheus.Registerer) *Server {
	t.Helper()
	return New(t.Context(), slog.New(slog.DiscardHandler), reg)
}

// serve registers s on a gRPC server bound to a free loopback port and returns a client
// connection to it.
func serve(t *testing.T, s *Server) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ServerOptions()...)
	s.Register(g)
	served := make(chan error, 1)
	go func() { served <- g.Serve(ln) }()
	t.Cleanup(func() {
		g.Stop()
		if err := <-served; err != nil {
			t.Errorf("grpc Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func node(id, region string) *corev3.Node {
	return &corev3.Node{Id: id, Cluster: "edge-" + region, Locality: &corev3.Locality{Region: region}}
}

func findNode(s *Server, id string) (Node, error) {
	for _, n := range s.Tracker().Nodes() {
		if n.ID == id {
			return n, nil
		}
	}
	return Node{}, fmt.Errorf("node %q not connected (connected: %v)", id, nodeIDs(s))
}

func nodeIDs(s *Server) []string {
	var ids []string
	for _, n := range s.Tracker().Nodes() {
		ids = append(ids, n.ID)
	}
	return ids
}

// metric returns the value of the series name{labels} gathered from g.
func metric(g prometheus.Gatherer, name string, labels map[string]string) (float64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if !maps.Equal(got, labels) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), nil
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), nil
			}
			return 0, fmt.Errorf("%s%v is neither a counter nor a gauge", name, labels)
		}
		return 0, fmt.Errorf("no series %s%v", name, labels)
	}
	return 0, fmt.Errorf("no metric %s", name)
}

func wantMetric(g prometheus.Gatherer, name string, labels map[string]string, want float64) error {
	got, err := metric(g, name, labels)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
	return nil
}

// versionDiff describes how after differs from before: per region, the types whose version
// changed, or "added"/"removed".
func versionDiff(before, after map[string]map[string]string) map[string][]string {
	out := map[string][]string{}
	regions := slices.Sorted(maps.Keys(before))
	for r := range after {
		if _, ok := before[r]; !ok {
			regions = append(regions, r)
		}
	}
	for _, r := range regions {
		b, inBefore := before[r]
		a, inAfter := after[r]
		switch {
		case !inAfter:
			out[r] = []string{"removed"}
		case !inBefore:
			out[r] = []string{"added"}
		default:
			var changed []string
			for _, typ := range slices.Sorted(maps.Keys(a)) {
				if a[typ] != b[typ] {
					changed = append(changed, typ)
				}
			}
			if len(changed) > 0 {
				out[r] = changed
			}
		}
	}
	return out
}
