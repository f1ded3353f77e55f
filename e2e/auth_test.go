package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// authRegion: one region, the three provider APIs over TLS, and callers for every rule.
const authRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai, anthropic, gemini, nokey]
upstreams:
{{.Provider "openai" "hk"}}
{{.Provider "anthropic" "hk"}}
{{.Provider "gemini" "hk"}}
  nokey:
    url: https://api.openai.test
    endpoint: {{.Upstream}}
    tls: {ca_file: {{.CA}}}
    allowed_regions: [hk]
routes:
{{.Route "openai"}}
{{.Route "anthropic"}}
{{.Route "gemini"}}
  nokey: {match: {prefix: /nokey}, upstream: nokey, prefix_rewrite: /}
callers:
  app:
    tokens: [{{.Digest "app"}}]
    upstreams: [openai, anthropic, gemini, nokey]
    tenant: team-a
  expired:
    tokens: [{{.Digest "expired"}}]
    upstreams: [openai]
    expires: 2020-01-01T00:00:00Z
  disabled:
    tokens: [{{.Digest "disabled"}}]
    upstreams: [openai]
    disabled: true
  claude-only:
    tokens: [{{.Digest "claude-only"}}]
    upstreams: [anthropic]
  offsite:
    tokens: [{{.Digest "offsite"}}]
    upstreams: [openai]
    allow_ips: [203.0.113.0/24]
  byok:
    tokens: [{{.Digest "byok"}}]
    upstreams: [openai]
    bring_your_own_key: true
`

const (
	anthropicBody = `{"model":"claude-x","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`
	geminiBody    = `{"contents":[{"parts":[{"text":"hi"}]}]}`
)

// TestCallerTokenInProviderKeyOut: each native SDK style authenticates the caller, and the
// upstream sees the injected provider key, never the caller's token.
func TestCallerTokenInProviderKeyOut(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, authRegion, "hk")
	tok := s.tokens["app"]

	cases := []struct {
		name, path, body string
		headers          map[string]string
		keyHeader, want  string
	}{
		{"openai bearer", "/openai/v1/chat/completions", chatBody, map[string]string{"authorization": "Bearer " + tok}, "authorization", "Bearer " + upstreamKey("openai")},
		{"anthropic x-api-key", "/anthropic/v1/messages", anthropicBody, map[string]string{"x-api-key": tok, "anthropic-version": "2023-06-01"}, "x-api-key", upstreamKey("anthropic")},
		{"gemini x-goog-api-key", "/gemini/v1beta/models/gemini-2.0-flash:generateContent", geminiBody, map[string]string{"x-goog-api-key": tok}, "x-goog-api-key", upstreamKey("gemini")},
		{"gemini ?key=", "/gemini/v1beta/models/gemini-2.0-flash:generateContent?alt=json&key=" + url.QueryEscape(tok), geminiBody, nil, "x-goog-api-key", upstreamKey("gemini")},
		{"gemini ?k%65y= (encoded name)", "/gemini/v1beta/models/gemini-2.0-flash:generateContent?k%65y=" + url.QueryEscape(tok), geminiBody, nil, "x-goog-api-key", upstreamKey("gemini")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up.Reset()
			resp, body := post(t, s.edgeURL("hk", c.path), c.body, c.headers)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			reqs := up.Requests()
			if len(reqs) != 1 {
				t.Fatalf("upstream saw %d requests", len(reqs))
			}
			got := reqs[0]
			if v := got.Header.Get(c.keyHeader); v != c.want {
				t.Errorf("upstream %s = %q, want the injected key", c.keyHeader, v)
			}
			if vs := got.Header.Values(c.keyHeader); len(vs) != 1 {
				t.Errorf("upstream got %d %s values, want exactly the injected one", len(vs), c.keyHeader)
			}
			raw, _ := json.Marshal(got)
			if strings.Contains(string(raw), tok) {
				t.Errorf("the caller's token reached the upstream: %s", raw)
			}
			if q, _ := url.ParseQuery(got.RawQuery); q.Has("key") {
				t.Errorf("the key query parameter reached the upstream: %q", got.RawQuery)
			}
		})
	}
}

// TestAccessLogNamesTheCaller: usage per caller and tenant comes from the access log, which
// takes both from what extauthz authenticated.
func TestAccessLogNamesTheCaller(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), authRegion, "hk")
	if resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, line := range strings.Split(s.envoys["hk"].Log(), "\n") {
			if strings.Contains(line, `"route":"openai"`) && strings.Contains(line, `"caller":"app"`) && strings.Contains(line, `"tenant":"team-a"`) {
				return nil
			}
		}
		return fmt.Errorf("no access log line with caller app and tenant team-a yet")
	})
}

func TestDenialsAreActionableJSON(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, authRegion, "hk")
	bearer := func(caller string) map[string]string {
		return map[string]string{"authorization": "Bearer " + s.tokens[caller]}
	}
	cases := []struct {
		name, path, body string
		headers          map[string]string
		status           int
		check            func(body []byte) error
	}{
		{"missing token", "/openai/v1/chat/completions", chatBody, nil, 401, openAIError("missing_token")},
		{"unknown token", "/openai/v1/chat/completions", chatBody, map[string]string{"authorization": "Bearer llme_not-a-real-token"}, 401, openAIError("unknown_token")},
		{"expired", "/openai/v1/chat/completions", chatBody, bearer("expired"), 401, openAIError("expired")},
		{"disabled", "/openai/v1/chat/completions", chatBody, bearer("disabled"), 401, openAIError("disabled")},
		{"upstream not allowed", "/openai/v1/chat/completions", chatBody, bearer("claude-only"), 403, openAIError("upstream_not_allowed")},
		{"ip not allowed", "/openai/v1/chat/completions", chatBody, bearer("offsite"), 403, openAIError("ip_denied")},
		{"no key for upstream", "/nokey/v1/chat/completions", chatBody, bearer("app"), 503, openAIError("no_key")},
		{"anthropic shape", "/anthropic/v1/messages", anthropicBody, map[string]string{"x-api-key": "wrong"}, 401, anthropicError("authentication_error")},
		{"gemini shape", "/gemini/v1beta/models/m:generateContent", geminiBody, map[string]string{"x-goog-api-key": "wrong"}, 401, geminiError("UNAUTHENTICATED")},
		{"byok without own key", "/openai/v1/chat/completions", chatBody, map[string]string{"llmedge-token": s.tokens["byok"]}, 401, openAIError("byok_key_missing")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up.Reset()
			resp, body := post(t, s.edgeURL("hk", c.path), c.body, c.headers)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if ct := resp.Header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("content-type %q, want application/json", ct)
			}
			if err := c.check(body); err != nil {
				t.Errorf("%v: %s", err, body)
			}
			if n := len(up.Requests()); n != 0 {
				t.Errorf("a denied request reached the upstream %d times", n)
			}
		})
	}

	t.Run("byok passes the caller's own key", func(t *testing.T) {
		up.Reset()
		resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody,
			map[string]string{"llmedge-token": s.tokens["byok"], "authorization": "Bearer sk-callers-own"})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		h := up.Requests()[0].Header
		if got := h.Get("authorization"); got != "Bearer sk-callers-own" {
			t.Errorf("upstream authorization = %q, want the caller's own key", got)
		}
		if h.Get("llmedge-token") != "" {
			t.Error("the llmedge-token header reached the upstream")
		}
	})

	t.Run("internal headers are stripped", func(t *testing.T) {
		up.Reset()
		resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody,
			s.authAs("app", map[string]string{"x-llmedge-caller": "someone-else", "x-llmedge-tenant": "other"}))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		for k := range up.Requests()[0].Header {
			if strings.HasPrefix(strings.ToLower(k), "x-llmedge-") {
				t.Errorf("caller-set %s reached the upstream", k)
			}
		}
	})
}

func (s *stack) authAs(caller string, extra map[string]string) map[string]string {
	h := map[string]string{"authorization": "Bearer " + s.tokens[caller]}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

func openAIError(code string) func([]byte) error {
	return func(b []byte) error {
		var e struct {
			Error struct{ Message, Type, Code string }
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" || e.Error.Code != code {
			return fmt.Errorf("want an OpenAI-shaped error with code %q", code)
		}
		return nil
	}
}

func anthropicError(typ string) func([]byte) error {
	return func(b []byte) error {
		var e struct {
			Type  string
			Error struct{ Type, Message string }
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Type != "error" || e.Error.Type != typ || e.Error.Message == "" {
			return fmt.Errorf("want an Anthropic-shaped error of type %q", typ)
		}
		return nil
	}
}

func geminiError(status string) func([]byte) error {
	return func(b []byte) error {
		var e struct {
			Error struct {
				Code    int
				Message string
				Status  string
			}
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Error.Status != status || e.Error.Message == "" || e.Error.Code == 0 {
			return fmt.Errorf("want a Gemini-shaped error with status %q", status)
		}
		return nil
	}
}

// TestKeyRotationUnderLoad rewrites, adds and removes key files while concurrent requests
// run: none fails, and the new key reaches the upstream.
func TestKeyRotationUnderLoad(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{MaxRequests: 100000})
	s := newStack(t, up, authRegion, "hk")
	l := startLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.authAs("app", nil), 4)
	l.waitRequests(t, 50)

	dir := filepath.Join(s.keysDir, "openai")
	replace := func(name, value string) {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(value), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	seen := func(want string) error {
		for _, r := range up.Requests() {
			if r.Header.Get("authorization") == "Bearer "+want {
				return nil
			}
		}
		return fmt.Errorf("no request carried %s yet", want)
	}
	for i := 2; i <= 6; i++ {
		next := fmt.Sprintf("sk-rotated-%d", i)
		up.Reset()
		replace("key-1", next) // change in place (atomic rename)
		testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error { return seen(next) })
	}
	up.Reset()
	replace("key-2", "sk-added")
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error { return seen("sk-added") })
	if err := os.Remove(filepath.Join(dir, "key-1")); err != nil {
		t.Fatal(err)
	}
	// After the removal only key-2 may be used; wait until a fresh window shows only it.
	testenv.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		up.Reset()
		l.waitRequests(t, 20)
		for _, r := range up.Requests() {
			if got := r.Header.Get("authorization"); got != "Bearer sk-added" {
				return fmt.Errorf("a request still carried %q", got)
			}
		}
		return nil
	})
	l.halt()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during key rotation: %v", n, n+l.ok.Load(), l.failures)
	}
	t.Logf("%d requests during 7 key rotations, none failed", l.ok.Load())
}

// TestExtAuthzDownFailsClosed: with extauthz stopped nothing is forwarded (503 JSON); when
// it comes back, traffic recovers without touching Envoy.
func TestExtAuthzDownFailsClosed(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, authRegion, "hk")
	s.needsAuthzProcess()
	path := s.edgeURL("hk", "/openai/v1/chat/completions")
	if resp, body := post(t, path, chatBody, s.authAs("app", nil)); resp.StatusCode != http.StatusOK {
		t.Fatalf("before: %d %s", resp.StatusCode, body)
	}
	envoyPid := s.envoys["hk"].Pid()
	s.authz["hk"].Kill()
	up.Reset()
	resp, body := post(t, path, chatBody, s.authAs("app", nil))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "auth service is unavailable") {
		t.Fatalf("with extauthz down: %d %s, want 503 JSON saying the auth service is unavailable", resp.StatusCode, body)
	}
	if n := len(up.Requests()); n != 0 {
		t.Errorf("%d requests reached the upstream while extauthz was down", n)
	}
	s.startExtAuthz("hk")
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		resp, body := post(t, path, chatBody, s.authAs("app", nil))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})
	if s.envoys["hk"].Pid() != envoyPid || s.envoys["hk"].Exited() {
		t.Error("Envoy was restarted")
	}
}

// TestSecretsNeverLeak seeds a caller token and upstream keys, drives allowed, denied and
// failing requests, and then looks for them everywhere an operator or attacker could read.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, authRegion, "hk")
	tok := s.tokens["app"]
	secrets := map[string]string{"caller token": tok, "openai key": upstreamKey("openai"), "gemini key": upstreamKey("gemini")}

	var responses strings.Builder
	var failures atomic.Int32
	for _, c := range []struct {
		path, body string
		headers    map[string]string
	}{
		{"/openai/v1/chat/completions", chatBody, map[string]string{"authorization": "Bearer " + tok}},
		{"/gemini/v1beta/models/m:generateContent?key=" + url.QueryEscape(tok), geminiBody, nil},
		{"/openai/v1/chat/completions", chatBody, map[string]string{"authorization": "Bearer " + tok, "x-fake-status": "500"}},
		{"/anthropic/v1/messages", anthropicBody, map[string]string{"x-api-key": tok + "x"}},
		{"/nokey/v1/chat/completions", chatBody, map[string]string{"authorization": "Bearer " + tok}},
		{"/nowhere", chatBody, map[string]string{"authorization": "Bearer " + tok}},
	} {
		resp, body := post(t, s.edgeURL("hk", c.path), c.body, c.headers)
		fmt.Fprintf(&responses, "%d %v %s\n", resp.StatusCode, resp.Header, body)
		if resp.StatusCode >= 500 && c.headers["x-fake-status"] == "" && !strings.HasPrefix(c.path, "/nokey") {
			failures.Add(1)
		}
	}
	places := map[string]string{
		"responses":               responses.String(),
		"control plane log":       s.cp.Log(),
		"extauthz log":            s.authzLog("hk"),
		"envoy log":               s.envoys["hk"].Log(),
		"envoy /config_dump":      string(s.envoys["hk"].ConfigDump(t)),
		"envoy /stats":            string(adminGet(t, s.envoys["hk"], "/stats")),
		"envoy /stats/prometheus": string(adminGet(t, s.envoys["hk"], "/stats/prometheus")),
		"envoy /clusters":         string(adminGet(t, s.envoys["hk"], "/clusters")),
		"control plane /status":   get(t, s.statusURL("/status")),
		"control plane /metrics":  get(t, s.statusURL("/metrics")),
		"extauthz /metrics":       get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", s.authzHTTP["hk"])),
	}
	for place, text := range places {
		if text == "" {
			t.Errorf("%s is empty: the canary would prove nothing", place)
		}
		for what, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("the %s appears in the %s", what, place)
			}
		}
	}
	if failures.Load() != 0 {
		t.Errorf("unexpected 5xx answers: %s", responses.String())
	}
	// The same logs name the part each line comes from once (README, --log-format): a
	// repeated "component" key is resolved to either value by JSON readers.
	for _, place := range []string{"control plane log", "extauthz log"} {
		n := 0
		for _, line := range strings.Split(places[place], "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			n++
			if c := strings.Count(line, `"component":`); c > 1 {
				t.Errorf("%s: %d component keys in %s", place, c, line)
			}
		}
		if n == 0 {
			t.Errorf("%s has no JSON line to check", place)
		}
	}
}

func adminGet(t *testing.T, e *testenv.EnvoyProcess, path string) []byte {
	t.Helper()
	code, body := e.AdminGet(t, path)
	if code != http.StatusOK {
		t.Fatalf("admin %s: %d", path, code)
	}
	return body
}
