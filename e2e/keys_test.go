package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// TestEmptyKeyFileKeepsLastKeyUnderLoad truncates an upstream's only key file in place
// while requests run through the real Envoy and extauthz: not one request is refused (no
// 503 no_key), the last good key keeps reaching the upstream, extauthz reports the held
// key by upstream and name, and a good value written later takes over.
func TestEmptyKeyFileKeepsLastKeyUnderLoad(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{MaxRequests: 100000})
	s := newStack(t, up, authRegion, "hk")
	l := startLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.authAs("app", nil), 4)
	l.waitRequests(t, 50)

	path := filepath.Join(s.keysDir, "openai", "key-1")
	if err := os.Truncate(path, 0); err != nil { // an in-place write, caught before its second half
		t.Fatal(err)
	}
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", s.authzHTTP["hk"])
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !heldKey(get(t, readyz), "openai", "key-1") {
			return fmt.Errorf("extauthz /readyz does not report openai/key-1 as held yet")
		}
		return nil
	})
	// Traffic after the store has seen the empty file still carries the last good key.
	up.Reset()
	l.waitRequests(t, 100)
	for _, r := range up.Requests() {
		if got := r.Header.Get("authorization"); got != "Bearer "+upstreamKey("openai") {
			t.Fatalf("with the key file empty the upstream got authorization %q, want the last good key", got)
		}
	}
	if m := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"])); !strings.Contains(m, `llmedge_extauthz_upstream_keys_held{upstream="openai"} 1`) {
		t.Error("extauthz /metrics does not count the held key")
	}

	// The file is written properly again: the new key takes over, the report clears.
	const next = "sk-test-openai-after-truncation"
	if err := os.WriteFile(path, []byte(next+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, r := range up.Requests() {
			if r.Header.Get("authorization") == "Bearer "+next {
				return nil
			}
		}
		return fmt.Errorf("no request carried the rewritten key yet")
	})
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if heldKey(get(t, readyz), "openai", "key-1") {
			return fmt.Errorf("extauthz still reports openai/key-1 as held")
		}
		return nil
	})
	l.halt()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed while the key file was empty: %v", n, n+l.ok.Load(), l.failures)
	}

	// The warning names the upstream and the key file, never a key.
	log := s.authzLog("hk")
	warned := false
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "keeping its last good key") && strings.Contains(line, "openai") && strings.Contains(line, "key-1") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("the extauthz log has no warning naming openai and key-1:\n%s", log)
	}
	for _, secret := range []string{upstreamKey("openai"), next} {
		if strings.Contains(log, secret) {
			t.Errorf("the extauthz log contains a key")
		}
	}
	t.Logf("%d requests while the only key file was empty and rewritten, none failed", l.ok.Load())
}

// heldKey reports whether an extauthz /readyz body lists upstream/key as held.
func heldKey(readyz, upstream, key string) bool {
	var rz struct {
		Keys []struct {
			Upstream string
			Problems []struct {
				Key  string
				Held bool
			}
		}
	}
	if err := json.Unmarshal([]byte(readyz), &rz); err != nil {
		return false
	}
	for _, u := range rz.Keys {
		for _, p := range u.Problems {
			if u.Upstream == upstream && p.Key == key && p.Held {
				return true
			}
		}
	}
	return false
}

// TestCredentialMistakesThroughEnvoy: through the real Envoy, a bring-your-own-key caller's
// llmedge token in the provider's key header is refused with an OpenAI-shaped JSON error
// and never reaches the provider, and tokens of two callers on the Anthropic route are
// refused with an Anthropic-shaped one.
func TestCredentialMistakesThroughEnvoy(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, authRegion, "hk")
	cases := []struct {
		name, path, body string
		headers          map[string]string
		status           int
		check            func([]byte) error
		secrets          []string
	}{
		{"byok: own token as the provider key", "/openai/v1/chat/completions", chatBody,
			map[string]string{"llmedge-token": s.tokens["byok"], "authorization": "Bearer " + s.tokens["byok"]},
			http.StatusUnauthorized, openAIError("byok_token_as_key"), []string{s.tokens["byok"]}},
		{"byok: another caller's token as the provider key", "/openai/v1/chat/completions", chatBody,
			map[string]string{"llmedge-token": s.tokens["byok"], "authorization": "Bearer " + s.tokens["app"]},
			http.StatusUnauthorized, openAIError("byok_token_as_key"), []string{s.tokens["byok"], s.tokens["app"]}},
		{"anthropic: tokens of two callers", "/anthropic/v1/messages", anthropicBody,
			map[string]string{"authorization": "Bearer " + s.tokens["claude-only"], "x-api-key": s.tokens["app"], "anthropic-version": "2023-06-01"},
			http.StatusBadRequest, anthropicError("invalid_request_error"), []string{s.tokens["claude-only"], s.tokens["app"]}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up.Reset()
			resp, body := post(t, s.edgeURL("hk", c.path), c.body, c.headers)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if err := c.check(body); err != nil {
				t.Errorf("%v: %s", err, body)
			}
			if n := len(up.Requests()); n != 0 {
				t.Errorf("the refused request reached the upstream %d times", n)
			}
			for _, secret := range c.secrets {
				if strings.Contains(string(body), secret) {
					t.Errorf("the error body echoes a token: %s", body)
				}
			}
		})
	}
	// The Anthropic route accepts the valid token even when Authorization holds a stale
	// one: Authorization does not win.
	up.Reset()
	resp, body := post(t, s.edgeURL("hk", "/anthropic/v1/messages"), anthropicBody,
		map[string]string{"authorization": "Bearer llme_rotated-out-token", "x-api-key": s.tokens["app"], "anthropic-version": "2023-06-01"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a valid x-api-key token next to a stale Bearer one: status %d: %s", resp.StatusCode, body)
	}
	if h := up.Requests()[0].Header; h.Get("x-api-key") != upstreamKey("anthropic") || h.Get("authorization") != "" {
		t.Errorf("upstream got x-api-key %q and authorization %q; want the injected key and no authorization", h.Get("x-api-key"), h.Get("authorization"))
	}
}
