package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// addKey writes a second key for the upstream and waits until extauthz serves it.
func (s *stack) addKey(t *testing.T, upstream, name, value string, want int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.keysDir, upstream, name), []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", s.authzHTTP["hk"])
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		var body struct {
			Keys []struct {
				Upstream string `json:"upstream"`
				Keys     int    `json:"keys"`
			} `json:"keys"`
		}
		if err := json.Unmarshal([]byte(get(t, readyz)), &body); err != nil {
			return err
		}
		for _, k := range body.Keys {
			if k.Upstream == upstream && k.Keys == want {
				return nil
			}
		}
		return fmt.Errorf("extauthz does not hold %d keys for %s yet", want, upstream)
	})
}

// TestKeyFailover: the provider rate-limits key 1 while key 2 still serves. A request
// whose first try carries key 1 gets 429 there and is retried with key 2, which answers
// 200; first tries and retries alike never show the provider x-envoy-attempt-count.
func TestKeyFailover(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    retries: {backoff: {base: 10ms, max: 50ms}}`), "hk")
	key1, key2 := upstreamKey("openai"), "sk-test-openai-key-2"
	s.addKey(t, "openai", "key-2", key2, 2)
	queueFault(t, up, `{"status": 429, "count": 100, "when_header": {"name": "authorization", "value": "Bearer `+key1+`"}}`)

	// Round robin makes one of two requests start on key 1, whichever it is.
	for i := range 2 {
		resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(nil))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200 from key 2: %s", i, resp.StatusCode, body)
		}
	}
	reqs := up.Requests()
	if len(reqs) != 3 {
		t.Fatalf("upstream saw %d tries, want 3 (key 1: 429, key 2: 200, and one request straight to key 2)", len(reqs))
	}
	failedOver := false
	for i, r := range reqs {
		if v := r.Header.Get("x-envoy-attempt-count"); v != "" {
			t.Errorf("try %d: the provider saw x-envoy-attempt-count %q", i+1, v)
		}
		switch got := r.Header.Get("authorization"); got {
		case "Bearer " + key1:
			if i+1 >= len(reqs) || reqs[i+1].Header.Get("authorization") != "Bearer "+key2 {
				t.Errorf("try %d carried key 1 and got 429; the next try did not carry key 2", i+1)
			} else {
				failedOver = true
			}
		case "Bearer " + key2:
		default:
			t.Errorf("try %d carried neither key (%d bytes in authorization)", i+1, len(got))
		}
	}
	if !failedOver {
		t.Error("no try carried key 1: round robin should have started one request on it")
	}
	if n := s.clusterStat(t, "upstream_rq_retry_success"); n != 1 {
		t.Errorf("upstream_rq_retry_success = %d, want 1", n)
	}
}

// TestKeyFailoverSingleKey: with one key a retry keeps it (and still succeeds).
func TestKeyFailoverSingleKey(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, retryRoutes(`    retries: {backoff: {base: 10ms, max: 50ms}}`), "hk")
	queueFault(t, up, `{"status": 429, "count": 1}`)
	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(nil))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 from the retry: %s", resp.StatusCode, body)
	}
	reqs := up.Requests()
	if len(reqs) != 2 {
		t.Fatalf("upstream saw %d tries, want 2", len(reqs))
	}
	for i, r := range reqs {
		if got := r.Header.Get("authorization"); got != "Bearer "+upstreamKey("openai") {
			t.Errorf("try %d did not carry the upstream's only key", i+1)
		}
		if v := r.Header.Get("x-envoy-attempt-count"); v != "" {
			t.Errorf("try %d: the provider saw x-envoy-attempt-count %q", i+1, v)
		}
	}
}
