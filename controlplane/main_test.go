package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/llmedge/llmedge/internal/testenv"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/watch"
	"github.com/llmedge/llmedge/controlplane/xds/xdstest"
)

const waitFor = 5 * time.Second

// routesYAML has examples/routes.yaml's shape: hk serves openai and anthropic, sg also
// serves gemini, which may not be served from hk.
const routesYAML = `version: 1
regions:
  hk:
    listen: 127.0.0.1:10000
    extauthz: 127.0.0.1:10100
    upstreams: [openai, anthropic]
  sg:
    listen: 127.0.0.1:10001
    extauthz: 127.0.0.1:10100
    upstreams: [openai, anthropic, gemini]
upstreams:
  openai:
    url: http://127.0.0.1:8090
    allowed_regions: [hk, sg]
  anthropic:
    url: http://127.0.0.1:8090
    allowed_regions: [hk, sg]
  gemini:
    url: http://127.0.0.1:8090
    allowed_regions: [sg]
routes:
  openai:
    match: {prefix: /openai}
    upstream: openai
    prefix_rewrite: /
  anthropic:
    match: {prefix: /anthropic}
    upstream: anthropic
    prefix_rewrite: /
  gemini:
    match: {prefix: /gemini}
    upstream: gemini
    prefix_rewrite: /
`

// eventually polls f with a deadline (testenv.Eventually at a 5 ms interval).
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testenv.Eventually(t, timeout, 5*time.Millisecond, f)
}

// lockedBuffer collects the program's log lines; slog handlers may write concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cp is one control plane running in-process on free loopback ports.
type cp struct {
	m      *Main
	path   string // the routes YAML
	url    string // http://host:port of the status server
	logs   *lockedBuffer
	cancel context.CancelFunc
	done   chan error // Run's result
}

func start(t *testing.T, routes string) *cp {
	t.Helper()
	return startWith(t, routes, func(*Options) {})
}

// startWith is start with options changed by set before New.
func startWith(t *testing.T, routes string, set func(*Options)) *cp {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(path, []byte(routes), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	o := Options{
		ConfigPath:  path,
		XDSAddress:  "127.0.0.1:0",
		HTTPAddress: "127.0.0.1:0",
		Watch:       watch.Options{Holdoff: 20 * time.Millisecond, Poll: time.Hour},
		Logger:      slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	set(&o)
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	c := &cp{m: m, path: path, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- m.Run(ctx) }()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case <-m.Ready():
	case err := <-c.done:
		t.Fatalf("Run returned before it was ready: %v", err)
	case <-timer.C:
		t.Fatal("control plane not ready in time")
	}
	c.url = "http://" + m.HTTPAddr()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-c.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("Run did not return after cancel")
		}
	})
	return c
}

// write replaces the routes YAML atomically, as editors and Kubernetes do, so the watcher
// never sees a half-written file.
func (c *cp) write(t *testing.T, routes string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(c.path), ".routes.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(routes), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		t.Fatal(err)
	}
}

func (c *cp) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, c.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if ct := resp.Header.Get("Content-Type"); path != "/metrics" && ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q, want application/json", path, ct)
	}
	return resp.StatusCode, body
}

func (c *cp) status(t *testing.T) Status {
	t.Helper()
	code, body := c.get(t, "/status")
	if code != http.StatusOK {
		t.Fatalf("GET /status: %d %s", code, body)
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("decode /status: %v\n%s", err, body)
	}
	return st
}

// metric reads one series from /metrics; a missing series is an error, so a misspelt name
// cannot pass as zero.
func (c *cp) metric(t *testing.T, name string, labels map[string]string) (float64, error) {
	t.Helper()
	code, body := c.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	mf, ok := mfs[name]
	if !ok {
		return 0, fmt.Errorf("no metric %s", name)
	}
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		if !maps.Equal(got, labels) {
			continue
		}
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue(), nil
		}
		return m.GetGauge().GetValue(), nil
	}
	return 0, fmt.Errorf("no series %s%v", name, labels)
}

// count is a counter that may not have been created yet (0 then).
func (c *cp) count(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := c.metric(t, name, labels)
	if err != nil && !strings.HasPrefix(err.Error(), "no series") {
		t.Fatal(err)
	}
	return v
}

func reloads(result string) map[string]string { return map[string]string{"result": result} }

func regionVersions(st Status) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, r := range st.Regions {
		out[r.Name] = r.Versions
	}
	return out
}

func errorPaths(st Status) []string {
	var out []string
	for _, e := range st.Config.Errors {
		out = append(out, e.Path)
	}
	return out
}

func TestHealthReadyStatus(t *testing.T) {
	c := start(t, routesYAML)

	for _, tc := range []struct {
		path     string
		wantCode int
		wantBody map[string]string
	}{
		{"/healthz", http.StatusOK, map[string]string{"status": "ok"}},
		{"/readyz", http.StatusOK, map[string]string{"status": "ready"}},
	} {
		code, body := c.get(t, tc.path)
		var got map[string]string
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("GET %s: %v\n%s", tc.path, err, body)
		}
		if code != tc.wantCode || !maps.Equal(got, tc.wantBody) {
			t.Errorf("GET %s = %d %v, want %d %v", tc.path, code, got, tc.wantCode, tc.wantBody)
		}
	}
	if code, body := c.get(t, "/nope"); code != http.StatusNotFound || !json.Valid(body) {
		t.Errorf("GET /nope = %d %s, want a JSON 404", code, body)
	}

	st := c.status(t)
	if !st.Config.Valid || len(st.Config.Errors) != 0 || st.Config.AppliedAt == nil || st.Config.Hash == "" {
		t.Errorf("config status after a good load = %+v", st.Config)
	}
	if diff := cmp.Diff([]string{c.path}, st.Config.Files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	want := []RegionStatus{
		{Name: "hk", Listen: "127.0.0.1:10000", Upstreams: []string{"anthropic", "openai"}, Nodes: []NodeStatus{}, Limits: []LimitStatus{}, InSync: true},
		{Name: "sg", Listen: "127.0.0.1:10001", Upstreams: []string{"anthropic", "gemini", "openai"}, Nodes: []NodeStatus{}, Limits: []LimitStatus{}, InSync: true},
	}
	served := c.m.xds.Versions()
	for i := range want {
		want[i].Versions = served[want[i].Name]
		if len(want[i].Versions) != 6 {
			t.Errorf("region %s serves versions %v, want listeners, routes, clusters, secrets, authz_policy and ratelimit_config", want[i].Name, want[i].Versions)
		}
	}
	if diff := cmp.Diff(want, st.Regions); diff != "" {
		t.Errorf("regions (-want +got):\n%s", diff)
	}
	if err := wantValue(c.metric(t, "llmedge_config_valid", nil))(1); err != nil {
		t.Error(err)
	}
	if err := wantValue(c.metric(t, "llmedge_config_reloads_total", reloads("applied")))(1); err != nil {
		t.Error(err)
	}
}

func wantValue(got float64, err error) func(want float64) error {
	return func(want float64) error {
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	}
}

func TestStartWithInvalidConfig(t *testing.T) {
	bad := strings.Replace(routesYAML, "  gemini:\n    url:", "  gemini:\n    urll:", 1)
	c := start(t, bad)

	code, body := c.get(t, "/readyz")
	var ready map[string]string
	if err := json.Unmarshal(body, &ready); err != nil {
		t.Fatalf("/readyz body: %v\n%s", err, body)
	}
	if code != http.StatusServiceUnavailable || ready["status"] != "not ready" || ready["reason"] == "" {
		t.Errorf("/readyz with no valid config = %d %v, want 503 with a reason", code, ready)
	}
	if code, _ := c.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d; liveness must not depend on the config", code)
	}
	st := c.status(t)
	if st.Config.Valid || st.Config.AppliedAt != nil || len(st.Regions) != 0 {
		t.Errorf("status with no valid config = %+v", st)
	}
	if paths := errorPaths(st); !slices.Contains(paths, "upstreams.gemini.urll") {
		t.Errorf("error paths %v do not name upstreams.gemini.urll", paths)
	}
	if err := wantValue(c.metric(t, "llmedge_config_valid", nil))(0); err != nil {
		t.Error(err)
	}
	if len(c.m.xds.Versions()) != 0 {
		t.Errorf("an invalid config was served: %v", c.m.xds.Versions())
	}

	c.write(t, routesYAML)
	eventually(t, waitFor, func() error {
		if code, body := c.get(t, "/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz = %d %s", code, body)
		}
		return nil
	})
	st = c.status(t)
	if !st.Config.Valid || len(st.Config.Errors) != 0 || len(st.Regions) != 2 {
		t.Errorf("status after the fix = %+v", st)
	}
}

// TestBadEditKeepsServing: a rejected edit leaves the last good config serving and says
// why; the next good edit applies.
func TestBadEditKeepsServing(t *testing.T) {
	tests := []struct {
		name     string
		edit     func(string) string
		wantPath func(c *cp) string // an error must name this path
		wantMsg  string             // ...with a message containing this
	}{
		{
			name:     "syntax error",
			edit:     func(s string) string { return s + "  broken: [\n" },
			wantPath: func(c *cp) string { return c.path },
			wantMsg:  "line",
		},
		{
			name:     "unknown field",
			edit:     func(s string) string { return strings.Replace(s, "  gemini:\n    url:", "  gemini:\n    urll:", 1) },
			wantPath: func(*cp) string { return "upstreams.gemini.urll" },
			wantMsg:  "unknown field",
		},
		{
			name: "upstream in a forbidden region",
			edit: func(s string) string {
				return strings.Replace(s, "upstreams: [openai, anthropic]\n", "upstreams: [openai, anthropic, gemini]\n", 1)
			},
			wantPath: func(*cp) string { return "regions.hk.upstreams[2]" },
			wantMsg:  `may not be served from region "hk"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := start(t, routesYAML)
			before := c.status(t)
			served := c.m.xds.Versions()
			if diff := cmp.Diff(served, regionVersions(before)); diff != "" {
				t.Fatalf("status versions differ from served versions (-served +status):\n%s", diff)
			}
			errorsBefore := c.count(t, "llmedge_config_reloads_total", reloads("error"))

			bad := tc.edit(routesYAML)
			if bad == routesYAML {
				t.Fatal("the edit changed nothing")
			}
			c.write(t, bad)
			var st Status
			eventually(t, waitFor, func() error {
				st = c.status(t)
				if st.Config.Valid {
					return errors.New("status still valid")
				}
				return nil
			})
			want := tc.wantPath(c)
			found := false
			for _, e := range st.Config.Errors {
				if e.Path == want && strings.Contains(e.Msg, tc.wantMsg) {
					found = true
				}
			}
			if !found {
				t.Errorf("no error at %s containing %q; errors: %+v", want, tc.wantMsg, st.Config.Errors)
			}
			if diff := cmp.Diff(served, c.m.xds.Versions()); diff != "" {
				t.Errorf("a rejected edit changed the served versions (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(regionVersions(before), regionVersions(st)); diff != "" {
				t.Errorf("a rejected edit changed the status versions (-before +after):\n%s", diff)
			}
			if st.Config.Hash != before.Config.Hash || !st.Config.AppliedAt.Equal(*before.Config.AppliedAt) {
				t.Errorf("status no longer describes the serving config: hash %s applied %v, was %s %v",
					st.Config.Hash, st.Config.AppliedAt, before.Config.Hash, before.Config.AppliedAt)
			}
			if code, _ := c.get(t, "/readyz"); code != http.StatusOK {
				t.Errorf("/readyz = %d after a rejected edit; the last good config still serves", code)
			}
			if err := wantValue(c.metric(t, "llmedge_config_valid", nil))(0); err != nil {
				t.Errorf("llmedge_config_valid: %v", err)
			}
			if err := wantValue(c.metric(t, "llmedge_config_errors", nil))(float64(len(st.Config.Errors))); err != nil {
				t.Errorf("llmedge_config_errors: %v", err)
			}
			if got := c.count(t, "llmedge_config_reloads_total", reloads("error")); got != errorsBefore+1 {
				t.Errorf("reloads{result=error} = %v, want %v", got, errorsBefore+1)
			}

			// A good edit (gemini's route, served only in sg) applies.
			good := strings.Replace(routesYAML, "match: {prefix: /gemini}", "match: {prefix: /gemini/v1beta}", 1)
			c.write(t, good)
			eventually(t, waitFor, func() error {
				st = c.status(t)
				if !st.Config.Valid || len(st.Config.Errors) != 0 {
					return fmt.Errorf("config status = valid %v errors %v", st.Config.Valid, st.Config.Errors)
				}
				return nil
			})
			after := regionVersions(st)
			if diff := cmp.Diff(before.Regions[0].Versions, after["hk"]); diff != "" || before.Regions[0].Name != "hk" {
				t.Errorf("hk versions moved although only an sg route changed (-before +after):\n%s", diff)
			}
			if after["sg"]["routes"] == served["sg"]["routes"] {
				t.Errorf("sg routes version did not change: %v", after["sg"])
			}
			if after["sg"]["listeners"] != served["sg"]["listeners"] || after["sg"]["clusters"] != served["sg"]["clusters"] {
				t.Errorf("sg versions other than routes changed: before %v after %v", served["sg"], after["sg"])
			}
			if st.Config.Hash == before.Config.Hash {
				t.Error("config hash did not change with the good edit")
			}
			if err := wantValue(c.metric(t, "llmedge_config_valid", nil))(1); err != nil {
				t.Errorf("llmedge_config_valid: %v", err)
			}
			if err := wantValue(c.metric(t, "llmedge_config_errors", nil))(0); err != nil {
				t.Errorf("llmedge_config_errors: %v", err)
			}
		})
	}
}

// Rewriting the same bytes, good or bad, changes nothing and is counted as unchanged.
func TestIdenticalRewrite(t *testing.T) {
	c := start(t, routesYAML)
	before := c.status(t)
	unchanged := c.count(t, "llmedge_config_reloads_total", reloads("unchanged"))

	c.write(t, routesYAML)
	eventually(t, waitFor, func() error {
		if got := c.count(t, "llmedge_config_reloads_total", reloads("unchanged")); got <= unchanged {
			return fmt.Errorf("reloads{result=unchanged} = %v, still %v", got, unchanged)
		}
		return nil
	})
	st := c.status(t)
	if diff := cmp.Diff(regionVersions(before), regionVersions(st)); diff != "" {
		t.Errorf("rewriting identical content changed versions (-before +after):\n%s", diff)
	}
	if !st.Config.AppliedAt.Equal(*before.Config.AppliedAt) || st.Config.Hash != before.Config.Hash {
		t.Errorf("rewriting identical content re-applied it: applied %v hash %s, was %v %s",
			st.Config.AppliedAt, st.Config.Hash, before.Config.AppliedAt, before.Config.Hash)
	}
	if err := wantValue(c.metric(t, "llmedge_config_reloads_total", reloads("applied")))(1); err != nil {
		t.Errorf("reloads{result=applied}: %v", err)
	}

	// The same broken bytes twice: one error, then unchanged.
	bad := routesYAML + "  broken: [\n"
	c.write(t, bad)
	eventually(t, waitFor, func() error {
		if got := c.count(t, "llmedge_config_reloads_total", reloads("error")); got != 1 {
			return fmt.Errorf("reloads{result=error} = %v, want 1", got)
		}
		return nil
	})
	unchanged = c.count(t, "llmedge_config_reloads_total", reloads("unchanged"))
	c.write(t, bad)
	eventually(t, waitFor, func() error {
		if got := c.count(t, "llmedge_config_reloads_total", reloads("unchanged")); got <= unchanged {
			return fmt.Errorf("reloads{result=unchanged} = %v, still %v", got, unchanged)
		}
		return nil
	})
	if got := c.count(t, "llmedge_config_reloads_total", reloads("error")); got != 1 {
		t.Errorf("the same broken file counted as a new error: reloads{result=error} = %v", got)
	}
	if st := c.status(t); st.Config.Valid || len(st.Config.Errors) == 0 {
		t.Errorf("status after an unchanged broken rewrite = valid %v errors %v", st.Config.Valid, st.Config.Errors)
	}
}

func dialADS(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func regionNamed(st Status, name string) (RegionStatus, bool) {
	for _, r := range st.Regions {
		if r.Name == name {
			return r, true
		}
	}
	return RegionStatus{}, false
}

func TestStatusWithADSNode(t *testing.T) {
	c := start(t, routesYAML)
	conn := dialADS(t, c.m.XDSAddr())
	hk := xdstest.Open(t, conn)
	node := &corev3.Node{Id: "envoy-hk-1", Cluster: "edge-hk", Locality: &corev3.Locality{Region: "hk"}}

	hk.RequestAndAck(t, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}, waitFor)
	hk.RequestAndAck(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}, waitFor)

	// Two of three types ACKed: listed, not in sync.
	eventually(t, waitFor, func() error {
		r, ok := regionNamed(c.status(t), "hk")
		if !ok || len(r.Nodes) != 1 {
			return fmt.Errorf("hk region %+v: want one node", r)
		}
		n := r.Nodes[0]
		if len(n.Acked) != 2 {
			return fmt.Errorf("node acked %v, want clusters and listeners", n.Acked)
		}
		if n.InSync || r.InSync {
			return fmt.Errorf("in sync with routes not ACKed: node %v region %v", n.InSync, r.InSync)
		}
		return nil
	})

	hk.RequestAndAck(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"llmedge-hk"}}, waitFor)
	eventually(t, waitFor, func() error {
		st := c.status(t)
		r, ok := regionNamed(st, "hk")
		if !ok || len(r.Nodes) != 1 {
			return fmt.Errorf("hk region %+v: want one node", r)
		}
		n := r.Nodes[0]
		if n.ID != "envoy-hk-1" || n.Region != "hk" || n.Cluster != "edge-hk" {
			return fmt.Errorf("node = %+v", n.Node)
		}
		envoyTypes := map[string]string{"listeners": r.Versions["listeners"], "clusters": r.Versions["clusters"], "routes": r.Versions["routes"]}
		if diff := cmp.Diff(envoyTypes, n.Acked); diff != "" {
			return fmt.Errorf("acked versions (-served +acked):\n%s", diff)
		}
		if !n.InSync || !r.InSync {
			return fmt.Errorf("not in sync after ACKing all three types: node %v region %v", n.InSync, r.InSync)
		}
		if sg, _ := regionNamed(st, "sg"); len(sg.Nodes) != 0 || !sg.InSync {
			return fmt.Errorf("sg = %+v, want no nodes and in sync", sg)
		}
		return nil
	})

	// A node of a region the config does not define is listed as unassigned.
	mars := xdstest.Open(t, conn)
	mars.Send(t, &discoveryv3.DiscoveryRequest{
		Node:    &corev3.Node{Id: "envoy-mars-1", Locality: &corev3.Locality{Region: "mars"}},
		TypeUrl: resourcev3.ListenerType,
	})
	eventually(t, waitFor, func() error {
		st := c.status(t)
		if len(st.Unassigned) != 1 || st.Unassigned[0].ID != "envoy-mars-1" || st.Unassigned[0].Region != "mars" {
			return fmt.Errorf("unassigned = %+v", st.Unassigned)
		}
		return nil
	})
	if err := wantValue(c.metric(t, "llmedge_xds_connected_nodes", map[string]string{"region": "mars"}))(1); err != nil {
		t.Error(err)
	}
	if err := wantValue(c.metric(t, "llmedge_xds_acks_total", map[string]string{"region": "hk", "type": "routes"}))(1); err != nil {
		t.Error(err)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	c := start(t, routesYAML)
	addrs := []string{c.m.XDSAddr(), c.m.HTTPAddr()}
	for _, a := range addrs {
		conn, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			t.Fatalf("dial %s while running: %v", a, err)
		}
		conn.Close()
	}
	// An open ADS stream must not hold shutdown up.
	stream := xdstest.Open(t, dialADS(t, c.m.XDSAddr()))
	stream.RequestAndAck(t, &discoveryv3.DiscoveryRequest{
		Node:    &corev3.Node{Id: "n1", Locality: &corev3.Locality{Region: "hk"}},
		TypeUrl: resourcev3.ListenerType,
	}, waitFor)

	c.cancel()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
		c.done <- err // for the cleanup
	case <-timer.C:
		t.Fatal("Run did not return after its context was cancelled")
	}
	for _, a := range addrs {
		if conn, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			conn.Close()
			t.Errorf("%s still accepts connections after Run returned", a)
		}
	}
}

func TestNewRequiresConfigPath(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New accepted options without a config path")
	}
}

// TestStatusHidesURLCredentials: a URL with credentials is rejected, and neither /status,
// /readyz nor the log repeats them.
func TestStatusHidesURLCredentials(t *testing.T) {
	const secret = "pass" // user:pass@, as an operator might paste it
	withURL := func(upstream, value string) string {
		return strings.Replace(routesYAML, "  "+upstream+":\n    url: http://127.0.0.1:8090\n", "  "+upstream+":\n    url: "+value+"\n", 1)
	}
	tests := []struct {
		name     string
		routes   string
		wantPath string
	}{
		{"https", withURL("gemini", "https://user:"+secret+"@example.com"), "upstreams.gemini.url"},
		{"http loopback", withURL("openai", "http://user:"+secret+"@127.0.0.1:8090"), "upstreams.openai.url"},
		{"bad port too", withURL("openai", "https://user:"+secret+"@example.com:99999"), "upstreams.openai.url"},
		{"not a string", withURL("openai", "[https://user:"+secret+"@example.com]"), "upstreams.openai.url"},
		{"in a duration", strings.Replace(routesYAML, "    allowed_regions: [sg]\n", "    allowed_regions: [sg]\n    connect_timeout: https://user:"+secret+"@example.com\n", 1), "upstreams.gemini.connect_timeout"},
		{"with a syntax error", withURL("gemini", "https://user:"+secret+"@example.com") + "  broken: [\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(tc.routes, secret) {
				t.Fatal("test YAML lacks the secret")
			}
			c := start(t, tc.routes)
			st := c.status(t)
			if st.Config.Valid || len(st.Config.Errors) == 0 {
				t.Fatalf("a URL with credentials was accepted: %+v", st.Config)
			}
			if tc.wantPath != "" && !slices.Contains(errorPaths(st), tc.wantPath) {
				t.Errorf("error paths %v do not name %s", errorPaths(st), tc.wantPath)
			}
			_, statusBody := c.get(t, "/status")
			_, readyBody := c.get(t, "/readyz")
			for what, text := range map[string]string{
				"/status":  string(statusBody),
				"/readyz":  string(readyBody),
				"errors":   config.Errors(st.Config.Errors).Error(),
				"log":      c.logs.String(),
				"warnings": strings.Join(st.Config.Warnings, "\n"),
			} {
				for _, leak := range []string{secret, "user:"} {
					if strings.Contains(text, leak) {
						t.Errorf("%s contains %q:\n%s", what, leak, text)
					}
				}
			}
			eventually(t, waitFor, func() error {
				if !strings.Contains(c.logs.String(), "routes config rejected") {
					return fmt.Errorf("the rejection was not logged (so the log check proves nothing):\n%s", c.logs.String())
				}
				return nil
			})
		})
	}
}
