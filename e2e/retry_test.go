package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// retryRoutes is one region serving the plain-HTTP fake as upstream "openai", with the
// upstream settings in extra (indented under the upstream).
func retryRoutes(extra string) string {
	return `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
upstreams:
  openai:
    url: http://127.0.0.1
    endpoint: {{.PlainUpstream}}
    allowed_regions: [hk]
` + extra + `
routes:
{{.Route "openai"}}
`
}

// queueFault queues a misbehaviour for the fake's next requests (POST /_fake/faults).
func queueFault(t *testing.T, up *upstream, fault string) {
	t.Helper()
	resp, err := http.Post("http://"+up.httpAddr+"/_fake/faults", "application/json", strings.NewReader(fault))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("queue fault %s: %d %s", fault, resp.StatusCode, b)
	}
}

// clusterStat reads one counter of the upstream cluster from Envoy's admin /stats.
func (s *stack) clusterStat(t *testing.T, name string) int {
	t.Helper()
	return s.envoyStat(t, "cluster.upstream_openai."+name)
}

// envoyStat is the value of hk's Envoy counter or gauge full.
func (s *stack) envoyStat(t *testing.T, full string) int {
	t.Helper()
	body := adminGet(t, s.envoys["hk"], "/stats?filter=^"+strings.ReplaceAll(full, ".", `\.`)+"$")
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, full+": "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("stat %s: %q", full, line)
			}
			return n
		}
	}
	t.Fatalf("stat %s not found in:\n%s", full, body)
	return 0
}

// lastAccessLine is the last access log line for the caller's path: each test's stack has
// its own Envoy, so the request a test sent last is that line.
func (s *stack) lastAccessLine(t *testing.T, path string) map[string]any {
	t.Helper()
	var found map[string]any
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		found = nil
		sc := bufio.NewScanner(strings.NewReader(s.envoys["hk"].Log()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			if m["path"] == path {
				found = m
			}
		}
		if found == nil {
			return fmt.Errorf("no access log line for %s yet", path)
		}
		return nil
	})
	return found
}

func TestRetryHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(""), "hk")
	queueFault(t, up, `{"status": 429, "retry_after": 1, "count": 2}`)

	start := time.Now()
	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(nil))
	elapsed := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d after the provider's 429s, want 200 from the third attempt: %s", resp.StatusCode, body)
	}
	reqs := up.Requests()
	if len(reqs) != 3 {
		t.Fatalf("upstream saw %d attempts, want 3 (429, 429, 200)", len(reqs))
	}
	// Envoy waits Retry-After × random(1, 1.5) between attempts (its timers have
	// millisecond grain, and the fake stamps a request before it answers: hence 950 ms).
	for i := 1; i < len(reqs); i++ {
		if gap := reqs[i].Time.Sub(reqs[i-1].Time); gap < 950*time.Millisecond {
			t.Errorf("attempt %d came %s after the 429 with Retry-After: 1; the provider's wait was not honoured", i+1, gap)
		}
	}
	if elapsed < 1900*time.Millisecond {
		t.Errorf("the caller got its answer after %s, less than the two advertised waits", elapsed)
	}
	if n := s.clusterStat(t, "upstream_rq_retry_success"); n != 1 {
		t.Errorf("upstream_rq_retry_success = %d, want 1", n)
	}
	line := s.lastAccessLine(t, "/openai/v1/chat/completions")
	if line["attempts"] != float64(3) || line["status"] != float64(200) {
		t.Errorf("access log attempts=%v status=%v, want 3 and 200: %v", line["attempts"], line["status"], line)
	}
}

func TestRetryGivesUpAfterFiveAttempts(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    retries: {backoff: {base: 10ms, max: 50ms}}`), "hk")

	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(map[string]string{"x-fake-status": "503"}))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want the provider's 503: %s", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), "fakellm: injected 503") {
		t.Errorf("the caller did not get the provider's own error body: %s", body)
	}
	if n := len(up.Requests()); n != 5 {
		t.Errorf("upstream saw %d attempts, want exactly 5", n)
	}
	if n := s.clusterStat(t, "upstream_rq_retry_limit_exceeded"); n != 1 {
		t.Errorf("upstream_rq_retry_limit_exceeded = %d, want 1 (the failed-after-retries counter)", n)
	}
	if n := s.clusterStat(t, "upstream_rq_retry"); n != 4 {
		t.Errorf("upstream_rq_retry = %d, want 4", n)
	}
	line := s.lastAccessLine(t, "/openai/v1/chat/completions")
	if line["attempts"] != float64(5) || !strings.Contains(fmt.Sprint(line["flags"]), "URX") {
		t.Errorf("access log attempts=%v flags=%v, want 5 and URX (retries exhausted): %v", line["attempts"], line["flags"], line)
	}

	// A client error is the caller's own: never retried.
	up.Reset()
	resp, body = post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(map[string]string{"x-fake-status": "400"}))
	if resp.StatusCode != http.StatusBadRequest || len(up.Requests()) != 1 {
		t.Errorf("400: status %d after %d attempts, want 400 after 1: %s", resp.StatusCode, len(up.Requests()), body)
	}
}

func TestRetriesOff(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    retries: {attempts: 1}`), "hk")
	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(map[string]string{"x-fake-status": "503"}))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503: %s", resp.StatusCode, body)
	}
	if n := len(up.Requests()); n != 1 {
		t.Errorf("upstream saw %d attempts with retries off, want 1", n)
	}
}

// TestRetryNeverAfterFirstByte: a stream that breaks after its first chunk reached the
// caller is not re-sent (the provider may have billed it, and the caller would see two
// answers spliced together): the caller sees the truncated stream.
func TestRetryNeverAfterFirstByte(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{ChunkInterval: 50 * time.Millisecond})
	s := newStack(t, up, retryRoutes(""), "hk")
	req, _ := http.NewRequest(http.MethodPost, s.edgeURL("hk", "/openai/v1/chat/completions"),
		strings.NewReader(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	for k, v := range s.auth(map[string]string{"content-type": "application/json", "x-fake-reset-after-chunks": "1"}) {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want the stream's 200", resp.StatusCode)
	}
	evs, err := readSSE(resp.Body, time.Now())
	if err == nil && len(evs) > 0 && evs[len(evs)-1].data == "[DONE]" {
		t.Errorf("the stream ended cleanly; want it cut after the first chunk")
	}
	if len(evs) == 0 {
		t.Errorf("caller got no event; want those sent before the upstream broke off")
	}
	for _, ev := range evs {
		if strings.Count(ev.data, `"role"`) > 0 && ev != evs[0] {
			t.Errorf("a second stream began inside the first (a retry spliced in): %v", evs)
		}
	}
	if n := len(up.Requests()); n != 1 {
		t.Errorf("upstream saw %d attempts, want 1: a stream is never retried once bytes went to the caller", n)
	}
}

// TestRetryLargeBody: request bodies up to 1 MiB are kept for re-sending; a larger one is
// forwarded once, without retries, and the abandonment is counted.
func TestRetryLargeBody(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    retries: {backoff: {base: 10ms, max: 50ms}}`), "hk")
	body := func(n int) string {
		return `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"` + strings.Repeat("x", n) + `"}]}`
	}

	queueFault(t, up, `{"status": 503, "count": 1}`)
	resp, b := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), body(512<<10), s.auth(nil))
	if resp.StatusCode != http.StatusOK || len(up.Requests()) != 2 {
		t.Fatalf("512 KiB body: status %d after %d attempts, want 200 after 2: %.300s", resp.StatusCode, len(up.Requests()), b)
	}

	up.Reset()
	queueFault(t, up, `{"status": 503, "count": 1}`)
	resp, b = post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), body(2<<20), s.auth(nil))
	if resp.StatusCode != http.StatusServiceUnavailable || len(up.Requests()) != 1 {
		t.Errorf("2 MiB body: status %d after %d attempts, want the provider's 503 after 1 (too large to keep for a retry): %.300s", resp.StatusCode, len(up.Requests()), b)
	}
	if n := s.clusterStat(t, "retry_or_shadow_abandoned"); n != 1 {
		t.Errorf("retry_or_shadow_abandoned = %d, want 1", n)
	}
}

// TestOutlierEjection: five consecutive gateway errors eject the endpoint. The upstream
// allows ejecting all its endpoints here: with the default max_ejection_percent (50) the
// only endpoint of a one-address upstream is never ejected (ejections_overflow counts it).
func TestOutlierEjection(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    retries: {attempts: 1}
    outlier_detection: {max_ejection_percent: 100}`), "hk")
	for i := 0; i < 5; i++ {
		if resp, b := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(map[string]string{"x-fake-status": "502"})); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, b)
		}
	}
	// Envoy ejects on its main thread, just after the fifth answer went out.
	testenv.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := s.clusterStat(t, "outlier_detection.ejections_enforced_total"); n != 1 {
			return fmt.Errorf("ejections_enforced_total = %d after 5 consecutive gateway errors, want 1", n)
		}
		cl := string(adminGet(t, s.envoys["hk"], "/clusters"))
		if !strings.Contains(cl, "upstream_openai::"+up.httpAddr+"::health_flags::/failed_outlier_check") {
			return fmt.Errorf("/clusters does not show the endpoint ejected:\n%s", linesWith(cl, "upstream_openai::"+up.httpAddr+"::health"))
		}
		return nil
	})
	// One endpoint ejected is all of them: Envoy's panic routing still sends traffic, so a
	// single-address upstream keeps serving rather than answering "no healthy upstream".
	if resp, b := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(nil)); resp.StatusCode != http.StatusOK {
		t.Errorf("after the ejection: status %d: %s", resp.StatusCode, b)
	}
}

// TestCircuitBreakerOverflow: past the upstream's bounds a request fails at once with a
// clear JSON 503 "overloaded" instead of queueing behind the slow ones. With one connection, one
// request in flight and one allowed to wait, of four more requests at least two overflow
// (which two depends on the Envoy worker each lands on).
func TestCircuitBreakerOverflow(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    circuit_breaker: {max_connections: 1, max_pending_requests: 1, max_requests: 1}`), "hk")
	url := s.edgeURL("hk", "/openai/v1/chat/completions")
	type result struct {
		code int
		body []byte
	}
	send := func(delay string, out chan<- result) {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(chatBody))
		for k, v := range s.auth(map[string]string{"content-type": "application/json", "x-fake-delay": delay}) {
			req.Header.Set(k, v)
		}
		// A connection of its own, so each request may land on another Envoy worker.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			out <- result{}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- result{resp.StatusCode, b}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	slowDone := make(chan result, 1)
	wg.Add(1)
	go func() { defer wg.Done(); send("5s", slowDone) }()
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := s.clusterStat(t, "upstream_rq_active"); n != 1 {
			return fmt.Errorf("%d requests in flight, want 1", n)
		}
		return nil
	})
	probes := make(chan result, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); send("0s", probes) }()
	}
	overflowed := 0
	for overflowed < 2 {
		select {
		case r := <-probes:
			if r.code != http.StatusServiceUnavailable {
				continue // it waited for the connection, as max_pending_requests allows one to
			}
			overflowed++
			if !bytes.Contains(r.body, []byte(`"code":"overloaded"`)) || !bytes.Contains(r.body, []byte("circuit_breaker")) {
				t.Errorf("overflow body is not the edge's clear JSON error: %s", r.body)
			}
		case r := <-slowDone:
			t.Fatalf("the slow request finished (%d) before two of four requests overflowed: they queued", r.code)
		}
	}
	if n := s.clusterStat(t, "upstream_rq_pending_overflow"); n < 2 {
		t.Errorf("upstream_rq_pending_overflow = %d, want at least 2", n)
	}
}

func linesWith(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
