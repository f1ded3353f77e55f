package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// overloadRegions gives each way of shedding a deliberately tiny limit, so a handful of
// concurrent requests is past saturation: hk admits 2 requests a second (2 at once), and
// sg's upstream "narrow" holds one request in flight and one waiting.
const overloadRegions = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
    overload: {max_requests_per_second: 2, burst: 2}
  sg:
    listen: 127.0.0.1:{{.Port "sg"}}
    extauthz: {{.ExtAuthz "sg"}}
    upstreams: [narrow]
upstreams:
  openai:
    url: http://{{.PlainUpstream}}
    allowed_regions: [hk]
  narrow:
    url: http://{{.PlainUpstream}}
    allowed_regions: [sg]
    circuit_breaker: {max_connections: 1, max_pending_requests: 1, max_requests: 1}
routes:
  openai:
    match: {prefix: /openai/}
    upstream: openai
    prefix_rewrite: /
  narrow:
    match: {prefix: /narrow/}
    upstream: narrow
    prefix_rewrite: /
`

// TestOverloadShedsAndRecovers drives the real Envoy past each limit with back-to-back
// requests from several workers: the requests over the limit get at once a JSON 503
// "overloaded" with Retry-After, nothing hangs (every request is answered well within the
// client's timeout, which would count as a failure other than a status), Envoy's counter
// of shed requests rises and the overloaded alert rule reads it, once the load stops
// requests succeed again, and the usage ledger holds the requests admitted past the
// ceiling, not those it shed.
func TestOverloadShedsAndRecovers(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), overloadRegions, "hk", "sg")
	withLedger(t, s)
	for _, tt := range []struct {
		region, path string
		extra        map[string]string
		counter      string // Envoy's count of requests shed this way
		message      string // in the JSON error's message
	}{
		{"hk", "/openai/v1/chat/completions", nil, translate.OverloadStatPrefix + ".http_local_rate_limit.rate_limited", "admission ceiling (regions.hk.overload)"},
		// The fake holds each answer, so the breaker stays full while the workers send.
		{"sg", "/narrow/v1/chat/completions", map[string]string{"x-fake-delay": "300ms"}, "cluster.upstream_narrow.upstream_rq_pending_overflow", "too many requests in flight to this upstream"},
	} {
		t.Run(tt.region, func(t *testing.T) {
			url, headers := s.edgeURL(tt.region, tt.path), s.auth(tt.extra)
			// The alert rule reads the same counters from Envoy's /stats/prometheus.
			scrape := alert.NewMetrics(nil, func(c string) (string, bool) { return strings.CutPrefix(c, "upstream_") })
			scrape.SetTargets([]model.ScrapeTarget{{Region: tt.region, EnvoyAdmin: s.envoys[tt.region].AdminURL()}})
			overloaded := func(name string) (model.AlertRule, bool) {
				r := config.DefaultAlertRule(name)
				r.MinRequests = 10 // the test sends a few dozen requests, not the default's 100
				return r, name == "overloaded"
			}
			now := time.Now()
			if c := scrape.Conditions(t.Context(), now, overloaded); len(c) != 0 {
				t.Fatalf("before the load: %+v", c)
			}
			l := startPacedLoad(t, 6, 0, func(int) (string, *http.Request) {
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(chatBody))
				req.Header.Set("content-type", "application/json")
				for k, v := range headers {
					req.Header.Set(k, v)
				}
				return "", req
			})
			e := s.envoys[tt.region]
			testenv.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
				st, _ := l.answers()
				if st[http.StatusOK] == 0 || st[http.StatusServiceUnavailable] < 10 || envoyStat(t, e, tt.counter) == 0 {
					return fmt.Errorf("answers so far %v, %s %d", st, tt.counter, envoyStat(t, e, tt.counter))
				}
				return nil
			})
			l.halt() // returns once every request sent has its answer
			st, refused := l.answers()
			if want := st[http.StatusOK] + st[http.StatusServiceUnavailable]; int64(want) != l.ok.Load()+l.failed.Load() {
				t.Errorf("answers %v: every request is either served or shed with 503; failures %v", st, l.failures)
			}
			for _, f := range l.failures {
				if !strings.HasSuffix(f, "status 503") {
					t.Errorf("a request was not answered: %s", f)
				}
			}
			r := refused[http.StatusServiceUnavailable]
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(r.body, &body); err != nil || r.header.Get("content-type") != "application/json" {
				t.Fatalf("shed answer is not JSON (%v, content-type %q): %s", err, r.header.Get("content-type"), r.body)
			}
			var raw map[string]map[string]any
			_ = json.Unmarshal(r.body, &raw)
			id, _ := raw["error"]["request_id"].(string)
			if body.Error.Code != "overloaded" || !strings.Contains(body.Error.Message, tt.message) || id == "" {
				t.Errorf("shed answer: %s, want code overloaded, a message with %q and a request id", r.body, tt.message)
			}
			if got := r.header.Get("retry-after"); got != "1" {
				t.Errorf("shed answer Retry-After %q, want 1", got)
			}
			for k := range r.header {
				if strings.HasPrefix(strings.ToLower(k), "x-envoy-") {
					t.Errorf("shed answer carries Envoy's own header %s: %v", k, r.header)
				}
			}
			if n := envoyStat(t, e, tt.counter); n < st[http.StatusServiceUnavailable] {
				t.Errorf("%s = %d, fewer than the %d requests shed", tt.counter, n, st[http.StatusServiceUnavailable])
			}
			if c := scrape.Conditions(t.Context(), now.Add(time.Second), overloaded); len(c) != 1 || c[0].Key != tt.region {
				t.Errorf("the overloaded rule over the real Envoy's metrics: %+v, want one condition for region %s", c, tt.region)
			} else {
				t.Log(c[0].Summary)
			}
			// The load is gone: the edge serves again, without a restart.
			testenv.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
				resp, b := post(t, url, chatBody, headers)
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("after the load: %d %s", resp.StatusCode, b)
				}
				return nil
			})
			if tt.region == "hk" {
				// One record per admitted request (the load's and the one after it); the
				// shed ones, which have no caller, would be a group of their own.
				admitted := int64(st[http.StatusOK] + 1)
				var groups []usage.Total
				testenv.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
					totals, err := usageTotals(t, s, "region,caller")
					if err != nil {
						return err
					}
					groups = nil
					var n int64
					for _, g := range totals {
						if g.Group["region"] == "hk" {
							groups = append(groups, g)
							n += g.Requests
						}
					}
					if n < admitted {
						return fmt.Errorf("%d hk records in the ledger, want %d: %+v", n, admitted, groups)
					}
					return nil
				})
				if len(groups) != 1 || groups[0].Group["caller"] != "tester" || groups[0].Requests != admitted {
					t.Errorf("hk's ledger: %+v, want only the %d requests admitted, all the tester's", groups, admitted)
				}
			}
		})
	}
}
