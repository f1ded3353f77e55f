package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/alert/alerttest"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// alertRegion: hk with a ratelimit; alice may make 5 requests an hour on openai; "dead"
// is an upstream nothing listens for (Envoy retries its connect failures, then gives up).
const alertRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    ratelimit: {{.RateLimit "hk"}}
    upstreams: [openai, dead]
upstreams:
{{.Provider "openai" "hk"}}
    retries: {enabled: false} # every 503 reaches the caller; "dead" is the retries case
  dead:
    url: http://127.0.0.1:DEAD_PORT
    allowed_regions: [hk]
routes:
{{.Route "openai"}}
{{.Route "dead"}}
callers:
  alice:
    tokens: [{{.Digest "alice"}}]
    upstreams: [openai]
    limits:
      - {requests: 5, per: hour}
  ops:
    tokens: [{{.Digest "ops"}}]
    upstreams: [openai, dead]
`

// TestAlertsOverTheRealStack evaluates llmedge's alert rules over the real components'
// state and metrics: a quota past 80 % counted by envoyproxy/ratelimit's limiter in
// extauthz (with the real Redis), an upstream answering 503 and one whose connections fail until Envoy's retries
// run out (Envoy's /stats/prometheus), and a killed extauthz (the control plane's
// /status). The alerter runs in the test process with the test's clock; each alert must
// reach the webhook exactly once firing and once resolved.
func TestAlertsOverTheRealStack(t *testing.T) {
	up := startUpstream(t, fakellm.Options{})
	dead := testenv.FreePort(t)
	s := newStack(t, up, strings.Replace(alertRegion, "DEAD_PORT", fmt.Sprint(dead), 1), "hk")
	s.needsAuthzProcess()

	hook := &alerttest.Webhook{}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	urlFile := filepath.Join(t.TempDir(), "hook.url")
	if err := os.WriteFile(urlFile, []byte(srv.URL+"/hook"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := model.Alerts{
		Repeat:    time.Hour,
		Notifiers: []model.Notifier{{Name: "ops", Kind: "webhook", URLFile: urlFile}},
		// Request quotas are counted by the limiter extauthz runs in process, which exports
		// ratelimit's own series on extauthz's /metrics.
		Scrape: []model.ScrapeTarget{{Region: "hk", EnvoyAdmin: s.envoys["hk"].AdminURL(), RatelimitMetrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"])}},
	}
	for _, name := range config.AlertRuleNames() {
		cfg.Rules = append(cfg.Rules, config.DefaultAlertRule(name))
	}
	log := slog.New(slog.DiscardHandler)
	d := alert.NewDispatcher(t.Context(), log, prometheus.NewRegistry(), alert.DispatchOptions{})
	metrics := alert.NewMetrics(nil, func(c string) (string, bool) { return strings.CutPrefix(c, "upstream_") })
	state := alert.SourceFunc(func(_ context.Context, _ time.Time, rule alert.RuleFunc) []alert.Condition {
		return alert.StateConditions(controlplane.AlertState(s.status(), func(string) bool { return true }), rule)
	})
	a := alert.NewAlerter(log, prometheus.NewRegistry(), d, metrics, state)
	a.SetConfig(cfg)

	now := time.Now()
	step := func(d time.Duration) []alert.Message {
		now = now.Add(d)
		return a.Step(t.Context(), now)
	}
	// stepUntil evaluates, a second of the test's clock apart, until rule fires: the
	// components' counters reach their metrics endpoints within a flush interval.
	stepUntil := func(rule, key string) {
		t.Helper()
		testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			step(time.Second)
			for _, act := range a.Engine.Active(now) {
				if act.State == alert.Firing && act.Rule == rule && act.Key == key {
					return nil
				}
			}
			return fmt.Errorf("%s %s has not fired; active: %+v", rule, key, a.Engine.Active(now))
		})
	}
	if msgs := step(0); len(msgs) != 0 {
		t.Fatalf("a healthy stack alerted: %+v", msgs)
	}

	// Quota: the 5th of alice's 5 requests is past 80 % of the window.
	for i := range 5 {
		if resp := s.models(t, "hk", "alice"); resp.StatusCode != http.StatusOK {
			t.Fatalf("alice request %d: %d %s", i+1, resp.StatusCode, readAll(resp))
		}
	}
	stepUntil("quota", quotaKey)

	// An upstream answering 503 (fakellm's fault queue) and one refusing connections.
	faults := fmt.Sprintf("http://%s/_fake/faults", up.httpAddr)
	resp, err := http.Post(faults, "application/json", strings.NewReader(`{"status": 503, "count": 30}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("queue faults: %d", resp.StatusCode)
	}
	for range 30 {
		if resp := s.models(t, "hk", "ops"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("openai with a 503 fault: %d %s", resp.StatusCode, readAll(resp))
		}
	}
	for range 3 {
		req, _ := http.NewRequest(http.MethodGet, s.edgeURL("hk", "/dead/v1/models"), nil)
		req.Header.Set("authorization", "Bearer "+s.tokens["ops"])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("dead upstream: %d %s", resp.StatusCode, readAll(resp))
		}
		resp.Body.Close()
	}
	stepUntil("upstream_errors", "hk/openai")
	stepUntil("retries_exhausted", "hk/dead")

	// The region's extauthz is killed: service_down after its "for".
	s.authz["hk"].Kill()
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		for _, r := range s.status().Regions {
			for _, n := range r.Nodes {
				if alert.NodeKind(n.Subscribed) == alert.KindExtAuthz {
					return fmt.Errorf("extauthz %s still connected", n.ID)
				}
			}
		}
		return nil
	})
	step(time.Second)
	step(2 * time.Minute)
	s.startExtAuthz("hk")
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		if st := s.status(); !st.Regions[0].InSync || len(st.Regions[0].Nodes) != 3 {
			return fmt.Errorf("hk not back in sync: %+v", st.Regions[0].Nodes)
		}
		return nil
	})
	// Everything has recovered; the metric rules clear once their window holds no failure.
	step(alert.Window + time.Minute)
	step(time.Minute)

	want := []string{}
	// openai's 503s failed after all their retries too (none are allowed there): Envoy
	// counts them in upstream_rq_retry_limit_exceeded, so retries_exhausted fires for it.
	for _, k := range []string{"quota " + quotaKey, "upstream_errors hk/openai", "retries_exhausted hk/dead", "retries_exhausted hk/openai", "service_down hk/extauthz"} {
		want = append(want, "firing "+k, "resolved "+k)
	}
	slices.Sort(want)
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		if got := slices.Sorted(slices.Values(hook.Got())); !slices.Equal(got, want) {
			return fmt.Errorf("webhook received\n  %q\nwant\n  %q", got, want)
		}
		return nil
	})
}

// quotaKey is alice's hourly limit as ratelimit's default Prometheus mapping names it
// (key1 "<descriptor key>_<value>", key2 the nested descriptor), prefixed by the region.
const quotaKey = "hk/llmedge_caller_hour.caller_alice"
