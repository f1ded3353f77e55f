package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

// filterConfigValue is the JSON string of a module's filter_config in /config_dump.
var filterConfigValue = regexp.MustCompile(`"value":\s*"((?:[^"\\]|\\.)*)"`)

// failoverConfig is the filter_config of key failover on one of region hk's upstreams.
var failoverConfig = regexp.MustCompile(`^\{\\"region\\":\\"hk\\",\\"upstream\\":\\"[a-z0-9_-]+\\"\}$`)

// TestAuthzInEnvoy: with extauthz_in_envoy, the region runs no extauthz process; its
// Envoy checks callers itself and injects the key, counts its checks on extauthz's
// metrics port, and shows nothing but the region (and, for key failover on an upstream
// cluster, the upstream) in the module's config (no key, no path). The whole suite also
// runs this way (LLMEDGE_E2E_AUTHZ=envoy, `make test`); this test pins what is particular
// to it whichever way the suite runs.
func TestAuthzInEnvoy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStackAuthz(t, up, authRegion, true, "hk")
	if len(s.authz) != 0 {
		t.Fatalf("extauthz processes %v, want none", s.authz)
	}
	path := s.edgeURL("hk", "/openai/v1/chat/completions")
	resp, body := post(t, path, chatBody, s.authAs("app", nil))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("allowed caller: %d %s", resp.StatusCode, body)
	}
	reqs := up.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+upstreamKey("openai") {
		t.Fatalf("upstream saw %d requests, the first with Authorization %q; want the provider key", len(reqs), reqs[0].Header.Get("Authorization"))
	}
	resp, body = post(t, path, chatBody, map[string]string{"authorization": "Bearer llme_not-a-caller"})
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), `"code":"unknown_token"`) {
		t.Fatalf("unknown token: %d %s, want 401 unknown_token", resp.StatusCode, body)
	}

	metrics := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"]))
	for _, want := range []string{
		`llmedge_extauthz_checks_total{result="ok",upstream="openai"} 1`,
		`llmedge_extauthz_checks_total{result="unknown_token",upstream="openai"} 1`,
		"llmedge_extauthz_policy_ready 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("extauthz /metrics inside Envoy lacks %q", want)
		}
	}

	// The module's configs, as /config_dump shows them, are the region and, for key
	// failover, the upstream: nothing else.
	var dump struct{ Configs []json.RawMessage }
	if err := json.Unmarshal(s.envoys["hk"].ConfigDump(t), &dump); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, c := range dump.Configs {
		for _, m := range strings.SplitAfter(string(c), `"filter_config":`)[1:] {
			v := "(none)"
			if sm := filterConfigValue.FindStringSubmatch(m); sm != nil {
				v = sm[1]
			}
			seen[v]++
		}
	}
	check, failover := `{\"region\":\"hk\"}`, `{\"region\":\"hk\",\"upstream\":\"openai\"}`
	if seen[check] == 0 || seen[failover] == 0 {
		t.Errorf("module filter_configs in /config_dump %v: want the check's %s and the openai cluster's key failover %s", seen, check, failover)
	}
	for v := range seen {
		if v != check && !failoverConfig.MatchString(v) {
			t.Errorf("module filter_config %s in /config_dump: want the region, and for key failover the upstream, only", v)
		}
	}
}

// gomaxprocsLine is the Go runtime's P count on extauthz's /metrics.
var gomaxprocsLine = regexp.MustCompile(`(?m)^go_sched_gomaxprocs_threads .*$`)

// TestAuthzInEnvoyLeavesAPFree: the module gives its Go runtime one P more than Envoy has
// workers, even when Envoy has more workers than the machine has CPUs (Go's default), so
// that one P stays free for the module's goroutines while each worker holds its own
// (extauthz/module/hooks.c; docs/BENCHMARKS.md has what this saves). A larger GOMAXPROCS
// in Envoy's environment is kept.
func TestAuthzInEnvoyLeavesAPFree(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStackAuthz(t, up, authRegion, true, "hk")
	workers := runtime.NumCPU() + 1
	for _, c := range []struct {
		name string
		env  []string
		want int
	}{
		{"envoy-hk-workers", nil, workers + 1},
		{"envoy-hk-gomaxprocs", []string{fmt.Sprintf("GOMAXPROCS=%d", workers+3)}, workers + 3},
	} {
		e := s.withAuthz(stk.Envoy{Region: "hk", NodeID: c.name, XDSAddr: stk.Unix(s.sock.XDS()), Concurrency: workers}, true)
		e.Env = append(e.Env, c.env...)
		var metricsURL string
		for _, v := range e.Env {
			if addr, ok := strings.CutPrefix(v, "LLMEDGE_HTTP_LISTEN="); ok {
				metricsURL = "http://" + addr + "/metrics"
			}
		}
		if metricsURL == "" {
			t.Fatalf("no LLMEDGE_HTTP_LISTEN in the Envoy's environment %q", e.Env)
		}
		testenv.StartRegionEnvoy(t, llmedgeBin, c.name, e)
		want := fmt.Sprintf("go_sched_gomaxprocs_threads %d", c.want)
		testenv.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
			resp, err := http.Get(metricsURL)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if got := gomaxprocsLine.FindString(string(body)); got != want {
				return fmt.Errorf("%s's module /metrics with %d Envoy workers (extra environment %q): %q, want %q", c.name, workers, c.env, got, want)
			}
			return nil
		})
	}
}

// TestAuthzInEnvoyNeedsItsSettings: an Envoy started without one of extauthz's settings
// refuses the listener (the control plane sees the NACK) and its log names the variable;
// the region's other Envoy serves on.
func TestAuthzInEnvoyNeedsItsSettings(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStackAuthz(t, up, authRegion, true, "hk")
	e := s.withAuthz(stk.Envoy{Region: "hk", NodeID: "envoy-hk-nokeys", XDSAddr: stk.Unix(s.sock.XDS())}, true)
	var env []string
	for _, v := range e.Env {
		if !strings.HasPrefix(v, "LLMEDGE_KEYS_DIR=") {
			env = append(env, v)
		}
	}
	e.Env = env
	bad := testenv.StartRegionEnvoy(t, llmedgeBin, "envoy-hk-nokeys", e)
	bad.WaitLog(t, "extauthz in Envoy: LLMEDGE_KEYS_DIR is not set", 15*time.Second)
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		for _, r := range s.status().Regions {
			for _, n := range r.Nodes {
				if n.ID == "envoy-hk-nokeys" && n.LastNack != nil && strings.Contains(n.LastNack.Error, "Failed to initialize dynamic module") {
					return nil
				}
			}
		}
		return fmt.Errorf("no listener NACK from envoy-hk-nokeys in /status")
	})
	if resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
		t.Fatalf("the region's other Envoy: %d %s", resp.StatusCode, body)
	}
	// Gone, it leaves no NACK behind for the stack's own check.
	bad.Stop()
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		for _, r := range s.status().Regions {
			for _, n := range r.Nodes {
				if n.ID == "envoy-hk-nokeys" {
					return fmt.Errorf("envoy-hk-nokeys still in /status")
				}
			}
		}
		return nil
	})
}
