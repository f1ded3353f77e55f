package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

const replayRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    ratelimit: {{.RateLimit "hk"}}
    upstreams: [openai]
upstreams:
{{.Provider "openai" "hk"}}
routes:
{{.Route "openai"}}
callers:
  app:
    tokens: [{{.Digest "app"}}]
    tenant: team-replay
    upstreams: [openai]
    limits:
      - {requests: 100000, per: hour}
      - {requests: 3, per: hour, model: m-scarce}
  other:
    tokens: [{{.Digest "other"}}]
    upstreams: [openai]
    OTHER
`

// replayMetric is a counter on the module's /metrics at url ("" reads 0).
func replayMetric(t *testing.T, url, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(get(t, url), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// TestCheckReplayInEnvoy: with extauthz inside Envoy, a request whose inputs are those of
// one allowed before on the same worker is answered from that decision (the module's fast
// path, extauthz/module/fast.c) and the provider, the response, the quotas and the ledger
// see what the full check gives: the key, the caller's token removed, the quota headers
// counting down, the body's model. A change the decision depends on — the caller's policy,
// the key — holds from the very next request; a request that differs in any input the
// check reads (another token, another model, a credential in the query) is checked for
// itself. LLMEDGE_CHECK_REPLAY=off checks every request in Go.
func TestCheckReplayInEnvoy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStackAuthz(t, up, strings.ReplaceAll(replayRegion, "OTHER", ""), true, "hk")
	withLedger(t, s)
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"])
	url := s.edgeURL("hk", "/openai/v1/chat/completions")
	body := `{"model":"m-replay","stream":false,"messages":[{"role":"user","content":"hi"}]}`

	const n = 30
	last := -1
	for i := range n {
		resp, b := post(t, url, body, s.authAs("app", nil))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
		rem, err := strconv.Atoi(resp.Header.Get("x-ratelimit-remaining"))
		if err != nil {
			t.Fatalf("request %d: x-ratelimit-remaining %q", i, resp.Header.Get("x-ratelimit-remaining"))
		}
		if last >= 0 && rem != last-1 {
			t.Errorf("request %d: x-ratelimit-remaining %d after %d: want one less each request", i, rem, last)
		}
		last = rem
	}
	replays := replayMetric(t, metrics, "llmedge_extauthz_check_replays_total")
	if replays < n/2 {
		t.Errorf("%v of %d identical requests replayed; want most", replays, n)
	}
	// Each on a new connection, from a new port: the same caller, the same decision.
	const fresh = 6
	for i := range fresh {
		if resp, b := post(t, url, body, s.authAs("app", map[string]string{"connection": "close"})); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d on a new connection: %d %s", i, resp.StatusCode, b)
		}
	}
	if more := replayMetric(t, metrics, "llmedge_extauthz_check_replays_total") - replays; more < fresh-2 {
		t.Errorf("%v of %d requests from new ports replayed; want most (the port is not an input)", more, fresh)
	}
	if ok := replayMetric(t, metrics, `llmedge_extauthz_checks_total{result="ok",upstream="openai"}`); ok != n+fresh {
		t.Errorf("checks ok %v, want %d: replays are counted as checks", ok, n+fresh)
	}
	reqs := up.Requests()
	if len(reqs) != n+fresh {
		t.Fatalf("upstream saw %d requests, want %d", len(reqs), n+fresh)
	}
	for i, r := range reqs {
		if got := r.Header.Get("Authorization"); got != "Bearer "+upstreamKey("openai") {
			t.Fatalf("upstream request %d: Authorization %q, want the provider key", i, got)
		}
	}
	// What the edge reserved ahead or lent to its fast path and did not use goes back to
	// Redis once idle: the caller's hourly count is then what was admitted, exactly.
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		keys, err := s.redis.Do("KEYS", "*caller_app*")
		list, _ := keys.([]any)
		if err != nil || len(list) != 1 {
			return fmt.Errorf("Redis keys for app: %v, %v; want its hourly limit's", keys, err)
		}
		if v, err := s.redis.Do("GET", list[0].(string)); err != nil || fmt.Sprint(v) != strconv.Itoa(n+fresh) {
			return fmt.Errorf("%s = %v, %v; want the %d admitted", list[0], v, err, n+fresh)
		}
		return nil
	})
	rows := ledgerRows(t, s, "team-replay", n+fresh)
	for _, r := range rows {
		if r["requested_model"] != "m-replay" || r["stream"] != "false" || r["caller"] != "app" || r["status"] != "200" {
			t.Fatalf("ledger record %v: want caller app, model m-replay, stream false, 200", r)
		}
	}

	// A model-scoped quota counts every replay and refuses the fourth.
	scarce := strings.Replace(body, "m-replay", "m-scarce", 1)
	for i := range 4 {
		resp, b := post(t, url, scarce, s.authAs("app", nil))
		want := http.StatusOK
		if i == 3 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Errorf("m-scarce request %d: %d %s, want %d", i, resp.StatusCode, b, want)
		}
	}

	// Another caller with the same body and path gets its own decision: no quota. Past
	// its second request the fast path answers it from a lending, without Go.
	lentBefore := replayMetric(t, metrics, "llmedge_extauthz_check_replays_lent_total")
	const others = 10
	for range others {
		resp, b := post(t, url, body, s.authAs("other", nil))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("other caller: %d %s", resp.StatusCode, b)
		}
		if l := resp.Header.Get("x-ratelimit-limit"); l != "" {
			t.Fatalf("other caller, who has no limits, got x-ratelimit-limit %q", l)
		}
	}
	if lent := replayMetric(t, metrics, "llmedge_extauthz_check_replays_lent_total") - lentBefore; lent < others/2 {
		t.Errorf("%v of %d requests of a caller without limits answered from a lending; want most", lent, others)
	}
	// A credential in the query is removed on a replay too.
	q := url + "?api_key=" + s.tokens["app"] + "&keep=1"
	for i := range 3 {
		if resp, b := post(t, q, body, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("query request %d: %d %s", i, resp.StatusCode, b)
		}
		r := up.Requests()
		if u := r[len(r)-1].Path + "?" + r[len(r)-1].RawQuery; strings.Contains(u, "api_key") || strings.Contains(u, s.tokens["app"]) || !strings.Contains(u, "keep=1") {
			t.Fatalf("query request %d reached the provider as %s", i, u)
		}
	}

	// The policy: "other" disabled is refused on its very next request.
	before := s.status().Config.Hash
	s.writeRoutes(strings.ReplaceAll(replayRegion, "OTHER", "disabled: true"))
	testenv.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		if st := s.waitInSync(30 * time.Second); st.Config.Hash == before {
			return fmt.Errorf("the edited routes are not in force yet")
		}
		return nil
	})
	if resp, b := post(t, url, body, s.authAs("other", nil)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("disabled caller: %d %s, want 401", resp.StatusCode, b)
	}

	// The key: a new value is what the next requests carry, once the module holds it.
	keyFile := filepath.Join(s.keysDir, "openai", "key-1")
	if _, err := os.Stat(keyFile); err != nil {
		t.Fatalf("the stack's openai key file: %v", err)
	}
	if err := os.WriteFile(keyFile, []byte("sk-rotated-for-replay\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		if resp, b := post(t, url, body, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("after the key change: %d %s", resp.StatusCode, b)
		}
		r := up.Requests()
		if got := r[len(r)-1].Header.Get("Authorization"); got != "Bearer sk-rotated-for-replay" {
			return fmt.Errorf("the provider still gets %q", got)
		}
		return nil
	})
	for i := range 5 {
		post(t, url, body, s.authAs("app", nil))
		r := up.Requests()
		if got := r[len(r)-1].Header.Get("Authorization"); got != "Bearer sk-rotated-for-replay" {
			t.Fatalf("request %d after the key change carried %q", i, got)
		}
	}

	// A caller's expiry holds in the fast path too: a caller without limits, answered from
	// lendings in C, gets 401 from its expiry on. Each 200 was checked before the expiry,
	// so it was sent before it: none may have been sent after.
	expires := time.Now().Add(3 * time.Second).Truncate(time.Second).UTC()
	before = s.status().Config.Hash
	s.writeRoutes(strings.ReplaceAll(replayRegion, "OTHER", "disabled: true") + `  soon:
    tokens: [{{.Digest "soon"}}]
    upstreams: [openai]
    expires: ` + expires.Format(time.RFC3339) + "\n")
	testenv.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		if st := s.waitInSync(30 * time.Second); st.Config.Hash == before {
			return fmt.Errorf("the edited routes are not in force yet")
		}
		return nil
	})
	if time.Now().After(expires.Add(-time.Second)) {
		t.Fatalf("the routes with the expiring caller took until %v to apply, its expiry is %v", time.Now(), expires)
	}
	lentBefore = replayMetric(t, metrics, "llmedge_extauthz_check_replays_lent_total")
	var beforeExpiry, refused int
	for deadline := expires.Add(5 * time.Second); time.Now().Before(deadline) && refused == 0; {
		sent := time.Now()
		resp, b := post(t, url, body, s.authAs("soon", nil))
		switch resp.StatusCode {
		case http.StatusOK:
			if !sent.Before(expires) {
				t.Fatalf("a request of the expired caller, sent %v after its expiry, was allowed", sent.Sub(expires))
			}
			beforeExpiry++
		case http.StatusUnauthorized:
			refused++
		default:
			t.Fatalf("expiring caller: %d %s", resp.StatusCode, b)
		}
	}
	if refused == 0 {
		t.Fatal("the expired caller was never refused")
	}
	if lent := replayMetric(t, metrics, "llmedge_extauthz_check_replays_lent_total") - lentBefore; lent < float64(beforeExpiry)/2 {
		t.Errorf("%v of the %d requests before the expiry answered from a lending; want most (the fast path is what this tests)", lent, beforeExpiry)
	}

	// Off: every request checked in Go.
	e := s.withAuthz(stk.Envoy{Region: "hk", NodeID: "envoy-hk-noreplay", XDSAddr: stk.Unix(s.sock.XDS())}, true)
	e.Env = append(e.Env, "LLMEDGE_CHECK_REPLAY=off")
	var offMetrics string
	for _, v := range e.Env {
		if addr, ok := strings.CutPrefix(v, "LLMEDGE_HTTP_LISTEN="); ok {
			offMetrics = "http://" + addr + "/metrics"
		}
	}
	testenv.StartRegionEnvoy(t, llmedgeBin, "envoy-hk-noreplay", e)
	testenv.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(offMetrics)
		if err != nil {
			return err
		}
		if m := readAll(resp); !strings.Contains(m, "\nllmedge_extauthz_policy_ready 1\n") {
			return fmt.Errorf("the Envoy without replays has no policy yet")
		}
		return nil
	})
	// Both Envoys listen on the region's port; with the first one gone, the other serves.
	s.envoys["hk"].Stop()
	offURL := url
	testenv.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Post(offURL, "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		readAll(resp)
		if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("the Envoy without replays: %d", resp.StatusCode)
		}
		return nil
	})
	for range 5 {
		if resp, b := post(t, offURL, body, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("the Envoy without replays: %d %s", resp.StatusCode, b)
		}
	}
	if r := replayMetric(t, offMetrics, "llmedge_extauthz_check_replays_total"); r != 0 {
		t.Errorf("%v replays with %s=off", r, "LLMEDGE_CHECK_REPLAY")
	}
	if ok := replayMetric(t, offMetrics, `llmedge_extauthz_checks_total{result="ok",upstream="openai"}`); ok != 5 {
		t.Errorf("checks ok %v on the Envoy without replays, want 5", ok)
	}
}

// TestKeyPoolReplayInEnvoy: an upstream with three keys. Identical requests are answered
// by the fast path (most from lendings, without a call into Go) and still get the keys in
// turn, each key as often as the others; a key added later joins the turn at once.
func TestKeyPoolReplayInEnvoy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStackAuthz(t, up, strings.ReplaceAll(replayRegion, "OTHER", ""), true, "hk")
	keys := []string{upstreamKey("openai"), "sk-test-openai-pool-2", "sk-test-openai-pool-3"}
	s.addKey(t, "openai", "key-2", keys[1], 2)
	s.addKey(t, "openai", "key-3", keys[2], 3)
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"])
	url := s.edgeURL("hk", "/openai/v1/chat/completions")
	body := `{"model":"m-pool","messages":[{"role":"user","content":"hi"}]}`
	// by counts each key's requests among the upstream's from the from-th on, and checks
	// that no two requests in a row carried the same key.
	by := func(from int, keys []string) map[string]int {
		t.Helper()
		count := map[string]int{}
		prev := ""
		for i, r := range up.Requests()[from:] {
			got := strings.TrimPrefix(r.Header.Get("authorization"), "Bearer ")
			if !slices.Contains(keys, got) {
				t.Fatalf("upstream request %d carried none of the pool's keys", from+i)
			}
			if got == prev {
				t.Errorf("upstream requests %d and %d carried the same key: want the next key each time", from+i-1, from+i)
			}
			prev = got
			count[got]++
		}
		return count
	}
	const n = 30
	lent := replayMetric(t, metrics, "llmedge_extauthz_check_replays_lent_total")
	for i := range n {
		if resp, b := post(t, url, body, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if got := replayMetric(t, metrics, "llmedge_extauthz_check_replays_lent_total") - lent; got < n/2 {
		t.Errorf("%v of %d identical requests to a key pool answered from lendings; want most", got, n)
	}
	for i, k := range keys {
		if c := by(0, keys)[k]; c != n/3 {
			t.Errorf("key %d carried %d of %d requests; want %d", i+1, c, n, n/3)
		}
	}

	// A routes edit that leaves the caller's decision as it was (another caller's tenant)
	// still voids it: the next request is decided in Go again, and takes the key after the
	// last one the fast path gave (KeysGiven), not one it just gave.
	goChecks := func() float64 {
		return replayMetric(t, metrics, `llmedge_extauthz_checks_total{result="ok",upstream="openai"}`) -
			replayMetric(t, metrics, "llmedge_extauthz_check_replays_total")
	}
	before, sent := goChecks(), n
	s.writeRoutes(strings.ReplaceAll(replayRegion, "OTHER", "tenant: team-other"))
	send := func() {
		t.Helper()
		if resp, b := post(t, url, body, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", sent, resp.StatusCode, b)
		}
		sent++
	}
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		send()
		if goChecks() > before {
			return nil
		}
		return fmt.Errorf("no request decided in Go again after the routes edit (%d requests)", sent)
	})
	for sent%len(keys) != 0 || sent < n+2*len(keys) {
		send()
	}
	counts := by(0, keys)
	for i, k := range keys {
		if c := counts[k]; c != sent/len(keys) {
			t.Errorf("across a decision made again: key %d carried %d of %d requests; want %d", i+1, c, sent, sent/len(keys))
		}
	}

	// A fourth key: the next requests go through the Go check once, then turn over four.
	keys = append(keys, "sk-test-openai-pool-4")
	s.addKey(t, "openai", "key-4", keys[3], 4)
	from := len(up.Requests())
	for i := range n + 2 {
		if resp, b := post(t, url, body, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after a key was added: %d %s", i, resp.StatusCode, b)
		}
	}
	for i, k := range keys {
		if c := by(from, keys)[k]; c != (n+2)/4 {
			t.Errorf("after a key was added: key %d carried %d of %d requests; want %d", i+1, c, n+2, (n+2)/4)
		}
	}
}
