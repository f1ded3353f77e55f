package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// quotaRegions: hk fails open, sg fails closed; each has its own ratelimit, sharing Redis.
// Hourly windows keep a test from straddling a window edge (the tests still check).
const quotaRegions = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    ratelimit: {{.RateLimit "hk"}}
    upstreams: [openai, anthropic]
  sg:
    listen: 127.0.0.1:{{.Port "sg"}}
    extauthz: {{.ExtAuthz "sg"}}
    ratelimit: {{.RateLimit "sg"}}
    ratelimit_failure: deny
    upstreams: [openai]
upstreams:
{{.Provider "openai" "hk" "sg"}}
{{.Provider "anthropic" "hk"}}
    limits:
      - {requests: LIMIT_ANTHROPIC, per: hour}
routes:
{{.Route "openai"}}
{{.Route "anthropic"}}
callers:
  alice:
    tokens: [{{.Digest "alice"}}]
    upstreams: [openai, anthropic]
    limits:
      - {requests: LIMIT_ALICE, per: hour}
      - {requests: 1000, per: day}
  bob:
    tokens: [{{.Digest "bob"}}]
    upstreams: [openai, anthropic]
  shadowed:
    tokens: [{{.Digest "shadowed"}}]
    upstreams: [openai]
    limits:
      - {requests: 2, per: hour, shadow: true}
  crowd:
    tokens: [{{.Digest "crowd"}}]
    upstreams: [openai]
    limits:
      - {requests: 100, per: hour}
`

func quotaYAML(alice, anthropic int) string {
	return strings.NewReplacer("LIMIT_ALICE", strconv.Itoa(alice), "LIMIT_ANTHROPIC", strconv.Itoa(anthropic)).Replace(quotaRegions)
}

func (s *stack) models(t *testing.T, region, caller string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.edgeURL(region, "/openai/v1/models"), nil)
	req.Header.Set("authorization", "Bearer "+s.tokens[caller])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// withinWindow runs f and reports the problems it found, unless a quota window edge (window
// is time.Hour or time.Minute) passed meanwhile: the counts may then be the edge's doing, so
// the problems are dropped and f runs again, at most retries times. f reports through
// errorf, never through t, so that a discarded run leaves no failure behind.
func withinWindow(t *testing.T, window time.Duration, retries int, f func(errorf func(format string, args ...any))) {
	t.Helper()
	for try := 0; ; try++ {
		start := time.Now().UTC().Truncate(window)
		var problems []string
		f(func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) })
		if try < retries && !time.Now().UTC().Truncate(window).Equal(start) {
			t.Logf("a %v window edge passed during the check; trying again (dropping %d problem(s))", window, len(problems))
			continue
		}
		for _, p := range problems {
			t.Error(p)
		}
		if len(problems) > 0 {
			t.FailNow()
		}
		return
	}
}

func TestQuotaRefusesTheRequestPastTheLimit(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(5, 1000), "hk", "sg")

	withinWindow(t, time.Hour, 1, func(errorf func(string, ...any)) {
		for i := 1; i <= 5; i++ {
			resp := s.models(t, "hk", "alice")
			readAll(resp)
			if resp.StatusCode != http.StatusOK {
				errorf("request %d of 5: status %d", i, resp.StatusCode)
				return
			}
			// Allowed requests carry the X-RateLimit headers of the limit with the least
			// left (docs/CONFIG.md, limits).
			if got := resp.Header.Get("x-ratelimit-limit"); !strings.HasPrefix(got, `5, 5;w=3600;name="callers.alice.limits[0]"`) {
				errorf("request %d of 5: x-ratelimit-limit = %q, want alice's hourly limit first", i, got)
			}
			if got, err := strconv.Atoi(resp.Header.Get("x-ratelimit-remaining")); err != nil || got < 0 || got > 5-i {
				errorf("request %d of 5: x-ratelimit-remaining = %q, want 0 to %d", i, resp.Header.Get("x-ratelimit-remaining"), 5-i)
			}
			if got, err := strconv.Atoi(resp.Header.Get("x-ratelimit-reset")); err != nil || got < 0 || got > 3600 {
				errorf("request %d of 5: x-ratelimit-reset = %q, want the seconds left in the hour", i, resp.Header.Get("x-ratelimit-reset"))
			}
		}
		resp := s.models(t, "hk", "alice")
		body := readAll(resp)
		if resp.StatusCode != http.StatusTooManyRequests {
			errorf("request 6: status %d, want 429: %s", resp.StatusCode, body)
			return
		}
		if got := resp.Header.Get("x-ratelimit-remaining"); got != "0" {
			errorf("x-ratelimit-remaining = %q, want 0", got)
		}
		if got := resp.Header.Get("x-ratelimit-limit"); !strings.Contains(got, `name="callers.alice.limits[0]"`) {
			errorf("x-ratelimit-limit = %q, want it to name callers.alice.limits[0]", got)
		}
		reset, err := strconv.Atoi(resp.Header.Get("x-ratelimit-reset"))
		if err != nil || reset <= 0 || reset > 3600 {
			errorf("x-ratelimit-reset = %q, want the seconds left in the hour", resp.Header.Get("x-ratelimit-reset"))
		}
		if got := resp.Header.Get("retry-after"); got != resp.Header.Get("x-ratelimit-reset") {
			errorf("retry-after = %q, want the reset %q", got, resp.Header.Get("x-ratelimit-reset"))
		}
		var e struct {
			Error struct{ Type, Message, Code string }
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Type != "requests" || e.Error.Code != "rate_limit_exceeded" ||
			!strings.Contains(e.Error.Message, "alice") || !strings.Contains(e.Error.Message, "callers.alice.limits[0]") {
			errorf("429 body %s: want an OpenAI-shaped error naming the caller and the limit", body)
		}
		// Another caller is unaffected.
		if resp := s.models(t, "hk", "bob"); resp.StatusCode != http.StatusOK {
			errorf("bob: status %d after alice hit her limit", resp.StatusCode)
		}
	})

	// The limits in force show on /status, with each ratelimit's ACK.
	st := s.status()
	r := s.region(st, "hk")
	found := false
	for _, l := range r.Limits {
		found = found || (l.Name == "callers.alice.limits[0]" && l.Requests == 5 && l.Per == "hour")
	}
	if !found {
		t.Errorf("/status hk limits %+v lack callers.alice.limits[0]", r.Limits)
	}
	acked := false
	for _, n := range r.Nodes {
		if n.Acked["ratelimit_config"] == r.Versions["ratelimit_config"] && strings.HasPrefix(n.ID, "ratelimit-") {
			acked = true
		}
	}
	if !acked {
		t.Errorf("no ratelimit node ACKed hk's ratelimit_config %s: %+v", r.Versions["ratelimit_config"], r.Nodes)
	}
}

func TestQuotaChangeAppliesWithoutRestart(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(3, 1000), "hk")
	// loaded waits until the region's ratelimit holds alice's hourly limit n (every refused
	// request counts too, so probing with requests would use the room up).
	loaded := func(n int) {
		testenv.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
			if c := s.rl["hk"].Config(t); !strings.Contains(c, fmt.Sprintf("requests_per_unit=%d", n)) && !strings.Contains(c, fmt.Sprintf("%d/HOUR", n)) {
				return fmt.Errorf("ratelimit config not updated yet:\n%s", c)
			}
			return nil
		})
	}
	withinWindow(t, time.Hour, 1, func(errorf func(string, ...any)) {
		// A second run (after an hourly edge) starts from the first limit again.
		s.writeRoutes(quotaYAML(3, 1000))
		loaded(3)
		for i := 1; i <= 3; i++ {
			s.models(t, "hk", "alice")
		}
		if resp := s.models(t, "hk", "alice"); resp.StatusCode != http.StatusTooManyRequests {
			errorf("request 4 with limit 3: status %d", resp.StatusCode)
			return
		}
		s.writeRoutes(quotaYAML(6, 1000))
		loaded(6)
		// The count carries over (4 so far): requests 5 and 6 pass, the 7th is refused.
		for i := 5; i <= 6; i++ {
			if resp := s.models(t, "hk", "alice"); resp.StatusCode != http.StatusOK {
				errorf("request %d with the raised limit of 6: status %d", i, resp.StatusCode)
			}
		}
		if resp := s.models(t, "hk", "alice"); resp.StatusCode != http.StatusTooManyRequests {
			errorf("request 7 past the raised limit: status %d", resp.StatusCode)
		}
	})
}

func TestQuotaHoldsUnderConcurrency(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(5, 1000), "hk")
	withinWindow(t, time.Hour, 1, func(errorf func(string, ...any)) {
		var ok, limited, other atomic.Int64
		var wg sync.WaitGroup
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					req, _ := http.NewRequest(http.MethodGet, s.edgeURL("hk", "/openai/v1/models"), nil)
					req.Header.Set("authorization", "Bearer "+s.tokens["crowd"])
					resp, err := client.Do(req)
					if err != nil {
						other.Add(1)
						continue
					}
					readAll(resp)
					switch resp.StatusCode {
					case http.StatusOK:
						ok.Add(1)
					case http.StatusTooManyRequests:
						limited.Add(1)
					default:
						other.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("320 concurrent requests against a limit of 100: %d admitted, %d refused, %d other", ok.Load(), limited.Load(), other.Load())
		if ok.Load() != 100 || limited.Load() != 220 || other.Load() != 0 {
			errorf("admitted %d, refused %d, other %d; want exactly 100 admitted and 220 refused", ok.Load(), limited.Load(), other.Load())
			return
		}
	})
}

func TestQuotaShadowModeCountsWithoutBlocking(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(5, 1000), "hk")
	for i := 1; i <= 6; i++ {
		if resp := s.models(t, "hk", "shadowed"); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d of a caller with a shadow limit of 2: status %d", i, resp.StatusCode)
		}
	}
	// extauthz checks request quotas with envoyproxy/ratelimit's limiter in process, whose
	// counters it exports on its own /metrics.
	testenv.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		m := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"]))
		for _, line := range strings.Split(m, "\n") {
			if strings.Contains(line, "shadow_mode") && strings.Contains(line, "caller_hour") && !strings.HasPrefix(line, "#") {
				if v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64); v >= 4 {
					return nil
				}
			}
		}
		return fmt.Errorf("extauthz's rate-limit metrics show no shadow-mode hits for caller_hour yet")
	})
}

// Steady traffic under a limit is answered from what the edge reserved ahead: few
// requests wait on Redis, and Redis counts every admitted request (plus at most what the
// edge holds) under each of the caller's limits.
func TestQuotaReservedAhead(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(100000, 1000), "hk")
	const n = 300
	withinWindow(t, time.Hour, 1, func(errorf func(string, ...any)) {
		if _, err := s.redis.Do("FLUSHALL"); err != nil { // a second run starts afresh
			errorf("FLUSHALL: %v", err)
			return
		}
		waitedBefore := s.quotaReservations(t, "request")
		for i := 1; i <= n; i++ {
			resp := s.models(t, "hk", "alice")
			readAll(resp)
			if resp.StatusCode != http.StatusOK {
				errorf("request %d of %d under alice's limits: status %d", i, n, resp.StatusCode)
				return
			}
		}
		waited, ahead := s.quotaReservations(t, "request")-waitedBefore, s.quotaReservations(t, "ahead")
		t.Logf("%d requests: %v waited on their own reservation, %v reservations ahead", n, waited, ahead)
		if waited > n/10 || ahead == 0 {
			errorf("%v of %d requests waited on Redis, %v reservations ahead; want most answered from reservations", waited, n, ahead)
		}
		keys, err := s.redis.Do("KEYS", "*alice*")
		list, _ := keys.([]any)
		if err != nil || len(list) != 2 { // her hourly and daily limits
			errorf("Redis keys for alice: %v, %v; want one per limit (2)", keys, err)
			return
		}
		for _, k := range list {
			v, err := s.redis.Do("GET", k.(string))
			count, _ := strconv.Atoi(fmt.Sprint(v))
			// An edge holds at most 1,024 hits of a lease, and with extauthz inside Envoy
			// lends at most 256 to the requests its fast path answers (extauthz/lease.go).
			if err != nil || count < n || count > n+1024+256 {
				errorf("%s = %v, %v; want the %d admitted plus at most the 1,280 an edge holds or lends", k, v, err, n)
			}
		}
		// Idle for 2 s, the edge gives back what it holds: Redis then counts what was
		// admitted, exactly.
		deadline := time.Now().Add(10 * time.Second)
		for _, k := range list {
			for {
				v, err := s.redis.Do("GET", k.(string))
				if fmt.Sprint(v) == strconv.Itoa(n) && err == nil {
					break
				}
				if time.Now().After(deadline) {
					errorf("%s = %v, %v 10 s after the last request; want the %d admitted once the edge gave back what it held", k, v, err, n)
					return
				}
				time.Sleep(50 * time.Millisecond) // polling a deadline, not waiting for an event
			}
		}
		if got := s.quotaReservations(t, "return"); got == 0 {
			errorf("no reservation given back on extauthz's /metrics")
		}
	})
}

// quotaReservations is extauthz's count of quota round trips of kind in region hk.
func (s *stack) quotaReservations(t *testing.T, kind string) float64 {
	t.Helper()
	m := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"]))
	for _, line := range strings.Split(m, "\n") {
		if rest, ok := strings.CutPrefix(line, `llmedge_extauthz_quota_reservations_total{kind="`+kind+`"} `); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// TestQuotaFailureModes: with Redis down, hk (fail open) keeps serving and sg (fail
// closed) refuses with a JSON 500; both recover by themselves. The ratelimit process being
// down changes nothing at request time: extauthz checks quotas against Redis itself, and
// only token limits (none here) go through ratelimit.
func TestQuotaFailureModes(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(1000, 1000), "hk", "sg")
	expect := func(what string, hk, sg int) {
		t.Helper()
		testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
			// alice has limits, so her checks use Redis once what her edge reserved ahead
			// is spent (bob's never would).
			a, b := s.models(t, "hk", "alice"), s.models(t, "sg", "alice")
			bodyB := readAll(b)
			readAll(a)
			if a.StatusCode != hk || b.StatusCode != sg {
				return fmt.Errorf("%s: hk %d (want %d), sg %d (want %d) %s", what, a.StatusCode, hk, b.StatusCode, sg, bodyB)
			}
			if sg != http.StatusOK && !strings.Contains(bodyB, "rate-limit service is unavailable") {
				return fmt.Errorf("%s: sg body %s does not explain the refusal", what, bodyB)
			}
			return nil
		})
	}
	expect("all up", 200, 200)

	s.rl["hk"].Kill()
	s.rl["sg"].Kill()
	expect("ratelimit down", 200, 200)
	s.startRatelimit("hk")
	s.startRatelimit("sg")
	expect("ratelimit back", 200, 200)

	s.redis.Kill()
	expect("redis down", 200, 500)
	s.redis.Restart(t)
	expect("redis back", 200, 200)
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
