package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmedge/llmedge/extauthz"
)

func TestEdgeStartsEveryComponentOfTopology(t *testing.T) {
	e := &Edge{}
	starters := slices.Sorted(maps.Keys(e.starters()))
	var names []string
	for _, c := range Topology(false) {
		names = append(names, c.Name)
	}
	if slices.Sort(names); !slices.Equal(starters, names) {
		t.Errorf("Edge starts %v, Topology has %v", starters, names)
	}
}

func TestTopologyOrder(t *testing.T) {
	for _, inEnvoy := range []bool{false, true} {
		index := map[string]int{}
		for i, c := range Topology(inEnvoy) {
			index[c.Name] = i
		}
		// Each must start before the ones after it: ratelimit exits without Redis, Envoy
		// fails closed without extauthz, everything waits for the control plane.
		for _, before := range [][2]string{{"redis", "ratelimit"}, {"controlplane", "extauthz"}, {"controlplane", "ratelimit"}, {"extauthz", "envoy"}, {"fakellm", "envoy"}} {
			if index[before[0]] >= index[before[1]] {
				t.Errorf("authzInEnvoy %v: %s starts after %s", inEnvoy, before[0], before[1])
			}
		}
	}
}

// TestTopologyAuthzMode: the mode moves extauthz into Envoy and changes nothing else; a
// component inside another lives in a component of the topology with the same scope, so
// that process can serve its ports and socket.
func TestTopologyAuthzMode(t *testing.T) {
	inside := func(inEnvoy bool) map[string]string {
		out := map[string]string{}
		scope := map[string]Scope{}
		for _, c := range Topology(inEnvoy) {
			scope[c.Name] = c.Scope
		}
		for _, c := range Topology(inEnvoy) {
			if c.In == "" {
				continue
			}
			out[c.Name] = c.In
			if s, ok := scope[c.In]; !ok || s != c.Scope {
				t.Errorf("authzInEnvoy %v: %s is in %q, which is not a component of the same scope", inEnvoy, c.Name, c.In)
			}
		}
		return out
	}
	if got := inside(false); len(got) != 0 {
		t.Errorf("Topology(false): components inside others %v, want none", got)
	}
	if got := inside(true); !maps.Equal(got, map[string]string{"extauthz": "envoy"}) {
		t.Errorf("Topology(true): components inside others %v, want extauthz in envoy", got)
	}
	strip := func(cs []Component) []Component {
		for i := range cs {
			cs[i].In = ""
		}
		return cs
	}
	if a, b := strip(Topology(false)), strip(Topology(true)); !slices.EqualFunc(a, b, func(x, y Component) bool {
		return x.Name == y.Name && x.Scope == y.Scope && slices.Equal(x.Ports, y.Ports) && x.Socket == y.Socket && x.Demo == y.Demo
	}) {
		t.Errorf("the modes differ in more than where extauthz runs:\n%+v\n%+v", a, b)
	}
	if !DefaultAuthzInEnvoy {
		t.Error("make run and compose run extauthz inside Envoy by default")
	}
}

func TestExtAuthzEnvoyEnv(t *testing.T) {
	ea := ExtAuthz{Region: "hk", XDSAddr: "unix:/s/xds.sock", GRPCAddr: "unix:/s/extauthz-hk.sock", HTTPAddr: "127.0.0.1:10200",
		KeysDir: "/k", RedisAddr: "unix:/s/redis.sock", StateDir: "/state"}
	got := ea.EnvoyEnv("/mod")
	want := []string{
		"ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/mod", "LLMEDGE_REGION=hk", "LLMEDGE_XDS=unix:/s/xds.sock",
		"LLMEDGE_HTTP_LISTEN=127.0.0.1:10200", "LLMEDGE_KEYS_DIR=/k",
		"LLMEDGE_LOG_FORMAT=json", "LLMEDGE_LOG_LEVEL=info", "LLMEDGE_REDIS=unix:/s/redis.sock", "LLMEDGE_STATE_DIR=/state",
	}
	if !slices.Equal(got, want) {
		t.Errorf("EnvoyEnv =\n%q\nwant\n%q", got, want)
	}
	// The module reads them as the process takes its flags, and refuses another region's
	// filter config.
	env := map[string]string{}
	for _, kv := range got {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	o, err := extauthz.EnvOptions("hk", func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Region != ea.Region || o.XDSServer != ea.XDSAddr || !o.NoGRPC || o.HTTPAddress != ea.HTTPAddr ||
		o.KeysDir != ea.KeysDir || o.RedisAddress != ea.RedisAddr || o.StateDir != ea.StateDir {
		t.Errorf("extauthz.EnvOptions read %+v from EnvoyEnv %+v", o, ea)
	}
	if _, err := extauthz.EnvOptions("sg", func(k string) string { return env[k] }, io.Discard); err == nil || !strings.Contains(err.Error(), "LLMEDGE_REGION") {
		t.Errorf("a filter config for sg in hk's Envoy: %v, want LLMEDGE_REGION named", err)
	}
}

func TestLocalPorts(t *testing.T) {
	envs, defaults := map[string]bool{}, map[int]bool{}
	keys := map[PortKey]bool{}
	for _, p := range LocalPorts() {
		if envs[p.Env] || defaults[p.Default] || keys[p.Key] {
			t.Errorf("%+v: variable, default or key used twice", p)
		}
		envs[p.Env], defaults[p.Default], keys[p.Key] = true, true, true
	}
	for _, k := range PortKeys(LocalRegions()) {
		if !keys[k] {
			t.Errorf("no make-run port for %s", k)
		}
	}
	if len(keys) != len(PortKeys(LocalRegions())) {
		t.Errorf("%d make-run ports, topology has %d", len(keys), len(PortKeys(LocalRegions())))
	}
	// The documented defaults.
	ports, err := ResolveLocalPorts(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[PortKey]int{
		{"envoy", "hk", RoleEdge}: 10000, {"envoy", "sg", RoleEdge}: 10001, {"envoy", "sg", RoleAdmin}: 9902,
		{"controlplane", "", RoleHTTP}: 18080, {"fakellm", "", RoleHTTP}: 8090,
		{"ratelimit", "hk", RoleDebug}: 10500, {"extauthz", "sg", RoleHTTP}: 10201,
	} {
		if ports[k] != want {
			t.Errorf("%s = %d, want %d", k, ports[k], want)
		}
	}
}

func TestResolveLocalPorts(t *testing.T) {
	env := map[string]string{"LLMEDGE_HK_PORT": "20000", "LLMEDGE_SG_ADMIN_PORT": "nope", "LLMEDGE_FAKE_PORT": "70000", "LLMEDGE_XDS_PORT": "18000"}
	_, err := ResolveLocalPorts(func(k string) string { return env[k] })
	for _, v := range []string{"LLMEDGE_SG_ADMIN_PORT", "LLMEDGE_FAKE_PORT", "LLMEDGE_XDS_PORT: no longer used"} {
		if err == nil || !strings.Contains(err.Error(), v) {
			t.Errorf("bad ports: %v, want %s named", err, v)
		}
	}
	delete(env, "LLMEDGE_SG_ADMIN_PORT")
	delete(env, "LLMEDGE_FAKE_PORT")
	delete(env, "LLMEDGE_XDS_PORT")
	ports, err := ResolveLocalPorts(func(k string) string { return env[k] })
	if err != nil || ports[PortKey{"envoy", "hk", RoleEdge}] != 20000 || ports[PortKey{"envoy", "sg", RoleEdge}] != 10001 {
		t.Errorf("override: %v, %v", ports, err)
	}
}

func TestEdgeNeedsEveryPort(t *testing.T) {
	e := &Edge{Regions: []string{"hk"}, Ports: map[PortKey]int{{"fakellm", "", RoleHTTP}: 1}}
	err := e.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "envoy-hk admin") {
		t.Errorf("Start with missing ports: %v", err)
	}
	e.Ports = map[PortKey]int{}
	for _, k := range PortKeys(e.Regions) {
		e.Ports[k] = 1
	}
	if err := e.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "Sockets") {
		t.Errorf("Start without a socket directory: %v", err)
	}
}

func TestEdgeSuperviseStartsAgainWhatExited(t *testing.T) {
	e := &Edge{Runner: Runner{Dir: t.TempDir()}, backoff0: 20 * time.Millisecond, backoffMax: 80 * time.Millisecond}
	var flakyStarts atomic.Int32
	e.starts = map[string]func(context.Context, string) error{
		"steady": func(context.Context, string) error {
			p, err := e.Runner.Start("steady", sh("sleep 30"))
			if err == nil {
				e.add(p)
			}
			return err
		},
		"ratelimit": func(_ context.Context, r string) error {
			if flakyStarts.Add(1) == 3 { // the second restart fails; the next try starts it
				return errors.New("not ready in time")
			}
			p, err := e.Runner.Start(ProcessName("ratelimit", r), sh("echo run; sleep 0.2; exit 1"))
			if err == nil {
				e.add(p)
			}
			return err
		},
	}
	defer e.Stop()
	for _, m := range []member{{"steady", ""}, {"ratelimit", "hk"}} {
		if err := e.startMember(t.Context(), e.starts[m.component], m); err != nil {
			t.Fatal(err)
		}
	}
	steady := e.Processes()[0]
	var mu sync.Mutex
	var logs []string
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Supervise(ctx, func(format string, args ...any) {
			mu.Lock()
			logs = append(logs, fmt.Sprintf(format, args...))
			mu.Unlock()
		})
	}()
	lines := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(logs, "\n")
	}
	deadline := time.Now().Add(20 * time.Second)
	for flakyStarts.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("ratelimit-hk started %d times; log:\n%s", flakyStarts.Load(), lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Supervise did not return after the context ended")
	}
	if steady.Exited() || !slices.Contains(e.Processes(), steady) {
		t.Errorf("the process that never exited was stopped or replaced")
	}
	e.Stop()
	got := lines()
	log1 := filepath.Join(e.Dir, "ratelimit-hk.1.log")
	for _, want := range []string{
		"ratelimit-hk exited (exit status 1); see " + log1 + "; starting it again in 20ms",
		"ratelimit-hk started again",
		"ratelimit-hk exited (exit status 1); see " + filepath.Join(e.Dir, "ratelimit-hk.2.log") + "; starting it again in 40ms",
		"ratelimit-hk did not start again (not ready in time); trying again in 80ms",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the log lacks %q:\n%s", want, got)
		}
	}
	if b, err := os.ReadFile(log1); err != nil || string(b) != "run\n" {
		t.Errorf("the first run's log: %q, %v", b, err)
	}
	for _, p := range e.Processes() {
		if !p.Exited() {
			t.Errorf("%s still runs after Stop", p.Name)
		}
	}
	if strings.Contains(got, "steady") {
		t.Errorf("steady reported though it never exited:\n%s", got)
	}
}
