package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// viewRegion: the three provider APIs over TLS, an upstream that opts in to the client
// address and request id, one whose endpoint nobody listens on, a slow one, and quotas of
// one request per caller, so every kind of local reply can be produced per API.
const viewRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    ratelimit: {{.RateLimit "hk"}}
    upstreams: [openai, anthropic, gemini, optin, down, slow]
upstreams:
{{.Provider "openai" "hk"}}
{{.Provider "anthropic" "hk"}}
{{.Provider "gemini" "hk"}}
  optin:
    url: http://127.0.0.1
    endpoint: {{.PlainUpstream}}
    allowed_regions: [hk]
    forward_client_ip: true
    forward_request_id: true
  down:
    url: http://127.0.0.1
    api: anthropic
    endpoint: 127.0.0.1:{{.Port "nobody-listens"}}
    allowed_regions: [hk]
  slow:
    url: http://127.0.0.1
    api: gemini
    endpoint: {{.PlainUpstream}}
    response_timeout: 1s
    allowed_regions: [hk]
routes:
{{.Route "openai"}}
{{.Route "anthropic"}}
{{.Route "gemini"}}
  optin: {match: {prefix: /optin}, upstream: optin, prefix_rewrite: /}
  down: {match: {prefix: /down}, upstream: down, prefix_rewrite: /}
  slow: {match: {prefix: /slow}, upstream: slow, prefix_rewrite: /}
callers:
  app:
    tokens: [{{.Digest "app"}}]
    upstreams: [openai, anthropic, gemini, optin, down, slow]
  lim-openai:
    tokens: [{{.Digest "lim-openai"}}]
    upstreams: [openai]
    limits: [{requests: 1, per: hour}]
  lim-anthropic:
    tokens: [{{.Digest "lim-anthropic"}}]
    upstreams: [anthropic]
    limits: [{requests: 1, per: hour}]
  lim-gemini:
    tokens: [{{.Digest "lim-gemini"}}]
    upstreams: [gemini]
    limits: [{requests: 1, per: hour}]
  byok:
    tokens: [{{.Digest "byok"}}]
    upstreams: [gemini]
    bring_your_own_key: true
`

// providerStyle is one provider API as its SDK calls it through the edge.
type providerStyle struct {
	name      string
	path      func(stream bool) string
	body      func(stream bool) string
	auth      func(tok string) map[string]string
	keyHeader string
}

var providerStyles = []providerStyle{
	{
		name: "openai",
		path: func(bool) string { return "/openai/v1/chat/completions" },
		body: func(stream bool) string {
			return fmt.Sprintf(`{"model":"gpt-4o-mini","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)
		},
		auth:      func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} },
		keyHeader: "Authorization",
	},
	{
		name: "anthropic",
		path: func(bool) string { return "/anthropic/v1/messages" },
		body: func(stream bool) string {
			return fmt.Sprintf(`{"model":"claude-x","max_tokens":16,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)
		},
		auth: func(tok string) map[string]string {
			return map[string]string{"X-Api-Key": tok, "Anthropic-Version": "2023-06-01"}
		},
		keyHeader: "X-Api-Key",
	},
	{
		name: "gemini",
		path: func(stream bool) string {
			if stream {
				return "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
			}
			return "/gemini/v1beta/models/gemini-2.0-flash:generateContent"
		},
		body:      func(bool) string { return geminiBody },
		auth:      func(tok string) map[string]string { return map[string]string{"X-Goog-Api-Key": tok} },
		keyHeader: "X-Goog-Api-Key",
	},
}

// send issues one request with headers set exactly as given (names keep their case, a
// name listed with several values is sent several times).
func send(t *testing.T, method, url, body string, headers map[string][]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range headers {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, b
}

func single(h map[string]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range h {
		out[k] = []string{v}
	}
	return out
}

// TestProviderSeesOnlyTheCallersAPIHeaders: whatever the caller's network and the edge add
// (client address, forwarding headers, request id, Envoy's own headers), the provider
// receives the caller's API headers and the injected key, nothing else.
func TestProviderSeesOnlyTheCallersAPIHeaders(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{ChunkInterval: -1})
	s := newStack(t, up, viewRegion, "hk")
	tok := s.tokens["app"]
	// What a client, or proxies in front of the edge, may add; none of it may go on.
	noise := map[string]string{
		"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.test",
		"X-Real-Ip": "198.51.100.7", "Forwarded": "for=198.51.100.7", "Via": "1.1 corp-proxy",
		"True-Client-Ip": "198.51.100.7", "X-Request-Id": "caller-chosen-id",
		"X-Envoy-Original-Path": "/elsewhere", "X-Envoy-Foo": "bar", "X-Envoy-External-Address": "198.51.100.7",
	}
	for _, st := range providerStyles {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", st.name, stream), func(t *testing.T) {
				up.Reset()
				h := map[string]string{"Content-Type": "application/json", "User-Agent": "sdk-under-test/1.0"}
				for k, v := range st.auth(tok) {
					h[k] = v
				}
				for k, v := range noise {
					h[k] = v
				}
				resp, body := send(t, http.MethodPost, s.edgeURL("hk", st.path(stream)), st.body(stream), single(h))
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				if stream && !strings.Contains(string(body), "data:") {
					t.Errorf("want an SSE answer, got %.200s", body)
				}
				reqs := up.Requests()
				if len(reqs) != 1 {
					t.Fatalf("upstream saw %d requests", len(reqs))
				}
				// The caller's own API headers, the key header, and what HTTP itself needs.
				allowed := []string{"Content-Type", "User-Agent", "Accept-Encoding", "Content-Length", st.keyHeader}
				if st.name == "anthropic" {
					allowed = append(allowed, "Anthropic-Version")
				}
				var extra []string
				for k := range reqs[0].Header {
					if !slices.Contains(allowed, k) {
						extra = append(extra, k+": "+strings.Join(reqs[0].Header.Values(k), ", "))
					}
				}
				if len(extra) > 0 {
					slices.Sort(extra)
					t.Errorf("the provider received headers outside the allow-list %v:\n  %s", allowed, strings.Join(extra, "\n  "))
				}
				for _, k := range []string{"Content-Type", "User-Agent", st.keyHeader} {
					if reqs[0].Header.Get(k) == "" {
						t.Errorf("the provider did not receive %s", k)
					}
				}
			})
		}
	}

	t.Run("opt-in client address and request id", func(t *testing.T) {
		up.Reset()
		h := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + tok}
		for k, v := range noise {
			h[k] = v
		}
		resp, body := send(t, http.MethodPost, s.edgeURL("hk", "/optin/v1/chat/completions?alt=json"), chatBody, single(h))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		got := up.Requests()[0].Header
		// No trusted hop: the caller is the connection's peer, whatever it wrote.
		if xff := got.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q, want only the caller's address 127.0.0.1", xff)
		}
		id := got.Get("X-Request-Id")
		if id == "" || id == "caller-chosen-id" {
			t.Fatalf("X-Request-Id = %q, want the edge's request id", id)
		}
		for k := range got {
			if strings.HasPrefix(strings.ToLower(k), "x-envoy-") || k == "X-Real-Ip" || k == "Forwarded" {
				t.Errorf("opting in leaked %s", k)
			}
		}
		// The same id names the request in the access log, with the path the caller sent
		// (without its query).
		testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			for _, line := range strings.Split(s.envoys["hk"].Log(), "\n") {
				if strings.Contains(line, `"request_id":"`+id+`"`) && strings.Contains(line, `"path":"/optin/v1/chat/completions"`) &&
					strings.Contains(line, `"upstream_path":"/v1/chat/completions"`) && strings.Contains(line, `"client":"127.0.0.1"`) {
					return nil
				}
			}
			return fmt.Errorf("no access log line with request id %s, the caller's path and address", id)
		})
	})
}

// TestCallerTokenNeverReachesProvider puts the caller's token in every place a client can
// put one — each credential header, Cookie, Proxy-Authorization, query parameters under
// many spellings, duplicated headers, mixed-case names — and checks that nothing the
// provider received contains it.
func TestCallerTokenNeverReachesProvider(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{ChunkInterval: -1})
	s := newStack(t, up, viewRegion, "hk")
	tok := s.tokens["app"]
	query := url.Values{}
	for _, name := range []string{"api_key", "API-KEY", "apiKey", "access_token", "token", "Token", "key", "Key", "x-api-key", "llmedge-token", "q"} {
		query.Add(name, tok)
	}
	rawQuery := query.Encode() + "&%61pi_key=" + tok + "&k%65y=" + tok + "&other=Bearer%20" + tok + "&" + tok
	everywhere := map[string][]string{
		"Content-Type":        {"application/json"},
		"Llmedge-Token":       {tok},
		"Authorization":       {"Bearer " + tok, "Bearer " + tok},
		"x-API-key":           {tok},
		"X-Goog-Api-Key":      {tok},
		"X-GOOG-API-KEY":      {tok},
		"Cookie":              {"session=" + tok, "other=" + tok},
		"Proxy-Authorization": {"Bearer " + tok},
		"proxy-authorization": {"Basic " + tok},
		"Anthropic-Version":   {"2023-06-01"},
	}
	reached := 0
	for _, st := range providerStyles {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", st.name, stream), func(t *testing.T) {
				up.Reset()
				path := st.path(stream)
				sep := "?"
				if strings.Contains(path, "?") {
					sep = "&"
				}
				resp, body := send(t, http.MethodPost, s.edgeURL("hk", path+sep+rawQuery), st.body(stream), everywhere)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				reqs := up.Requests()
				if len(reqs) != 1 {
					t.Fatalf("upstream saw %d requests", len(reqs))
				}
				reached++
				raw, _ := json.Marshal(reqs[0])
				if strings.Contains(strings.ToLower(string(raw)), strings.ToLower(tok[len("llme_"):])) {
					t.Errorf("the caller's token reached the provider: %s", raw)
				}
				if got := reqs[0].Header.Get(st.keyHeader); !strings.Contains(got, upstreamKey(st.name)) {
					t.Errorf("provider %s = %q, want the injected key", st.keyHeader, got)
				}
			})
		}
	}
	if reached == 0 {
		t.Fatal("no request reached the provider: the test proved nothing")
	}

	t.Run("bring your own key", func(t *testing.T) {
		// The caller's own Gemini key in ?key= is meant for the provider; its llmedge token,
		// wherever else it is, is not.
		up.Reset()
		byok := s.tokens["byok"]
		path := "/gemini/v1beta/models/m:generateContent?key=own-gemini-key&api_key=" + byok + "&access_token=" + byok
		resp, body := send(t, http.MethodPost, s.edgeURL("hk", path), geminiBody, map[string][]string{
			"Llmedge-Token": {byok}, "Cookie": {"t=" + byok}, "Content-Type": {"application/json"},
		})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		got := up.Requests()[0]
		raw, _ := json.Marshal(got)
		if strings.Contains(string(raw), byok) {
			t.Errorf("the BYOK caller's llmedge token reached the provider: %s", raw)
		}
		if got.RawQuery != "key=own-gemini-key" {
			t.Errorf("provider query = %q, want only the caller's own key", got.RawQuery)
		}
	})
}

// errorReply is the union of the three providers' error shapes plus the request id.
type errorReply struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
	Error     struct {
		Message   string `json:"message"`
		Type      string `json:"type"`
		Code      any    `json:"code"`
		Status    string `json:"status"`
		RequestID string `json:"request_id"`
	} `json:"error"`
}

// TestLocalRepliesSpeakTheProvidersErrorShape: every reply the edge itself makes has the
// error shape of the route's API (or, without a route, of the API the request looks like),
// a message and a request id.
func TestLocalRepliesSpeakTheProvidersErrorShape(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, viewRegion, "hk")
	big := strings.Repeat("a", 70*1024)
	cases := []struct {
		name, api, path string
		headers         map[string]string
		status          int
		kind            string // error.type (OpenAI, Anthropic) or error.status (Gemini)
	}{
		{"openai 429", "openai", "/openai/v1/chat/completions", map[string]string{"Authorization": "Bearer " + s.tokens["lim-openai"]}, 429, "requests"},
		{"anthropic 429", "anthropic", "/anthropic/v1/messages", map[string]string{"X-Api-Key": s.tokens["lim-anthropic"], "Anthropic-Version": "2023-06-01"}, 429, "rate_limit_error"},
		{"gemini 429", "gemini", "/gemini/v1beta/models/m:generateContent", map[string]string{"X-Goog-Api-Key": s.tokens["lim-gemini"]}, 429, "RESOURCE_EXHAUSTED"},
		{"anthropic 503 upstream down", "anthropic", "/down/v1/messages", map[string]string{"X-Api-Key": s.tokens["app"]}, 503, "api_error"},
		{"gemini 504 upstream timeout", "gemini", "/slow/v1beta/models/m:generateContent", map[string]string{"X-Goog-Api-Key": s.tokens["app"], "X-Fake-Delay": "3s"}, 504, "DEADLINE_EXCEEDED"},
		{"openai 404 no route", "openai", "/nowhere/v1/chat/completions", map[string]string{"Authorization": "Bearer " + s.tokens["app"]}, 404, "invalid_request_error"},
		{"anthropic 404 no route", "anthropic", "/nowhere/v1/messages", map[string]string{"Anthropic-Version": "2023-06-01"}, 404, "not_found_error"},
		{"gemini 404 no route", "gemini", "/nowhere/v1beta/models/m:generateContent", nil, 404, "NOT_FOUND"},
		{"openai 400 path", "openai", "/openai/v1%2Fchat/completions", nil, 400, "invalid_request_error"},
		{"anthropic 400 path", "anthropic", "/anthropic/v1%2Fmessages", map[string]string{"Anthropic-Version": "2023-06-01"}, 400, "invalid_request_error"},
		{"gemini 400 path", "gemini", "/gemini/v1beta%2Fmodels/m:generateContent", nil, 400, "INVALID_ARGUMENT"},
		{"openai 400 header name", "openai", "/openai/v1/chat/completions", map[string]string{"X_Api_Key": "smuggled"}, 400, "invalid_request_error"},
		{"431 headers too large", "openai", "/openai/v1/chat/completions", map[string]string{"X-Big": big}, 431, "invalid_request_error"},
	}
	bodies := map[string]string{"openai": chatBody, "anthropic": anthropicBody, "gemini": geminiBody}
	// The quota cases need their one allowed request spent first.
	for _, c := range cases[:3] {
		if resp, body := send(t, http.MethodPost, s.edgeURL("hk", c.path), bodies[c.api], single(c.headers)); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: first request: status %d: %s", c.name, resp.StatusCode, body)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := single(c.headers)
			h["Content-Type"] = []string{"application/json"}
			resp, body := send(t, http.MethodPost, s.edgeURL("hk", c.path), bodies[c.api], h)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("content-type %q", ct)
			}
			var e errorReply
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("not JSON: %s", body)
			}
			id := e.Error.RequestID
			switch c.api {
			case "openai":
				if e.Error.Type != c.kind || e.Error.Code == nil || e.Error.Code == "" {
					t.Errorf("want an OpenAI error of type %q with a code: %s", c.kind, body)
				}
			case "anthropic":
				if e.Type != "error" || e.Error.Type != c.kind {
					t.Errorf("want an Anthropic error of type %q: %s", c.kind, body)
				}
				id = e.RequestID
			case "gemini":
				if code, ok := e.Error.Code.(float64); !ok || int(code) != c.status || e.Error.Status != c.kind {
					t.Errorf("want a Gemini error with code %d and status %q: %s", c.status, c.kind, body)
				}
			}
			if strings.TrimSpace(strings.TrimPrefix(e.Error.Message, "llmedge:")) == "" {
				t.Errorf("no message: %s", body)
			}
			if id == "" {
				t.Errorf("no request id: %s", body)
			}
		})
	}
}

// TestOfficialSDKsReadTheEdgesErrors: the official OpenAI, Anthropic and google-genai SDKs
// parse the edge's own replies as their provider's errors — the right exception, type or
// status, the message and the request id.
func TestOfficialSDKsReadTheEdgesErrors(t *testing.T) {
	t.Parallel()
	py, script := sdkScript(t, "errors.py")
	s := newStack(t, startUpstream(t, fakellm.Options{}), viewRegion, "hk")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
		"EDGE=" + s.edgeURL("hk", ""),
		"TOKEN_APP=" + s.tokens["app"],
		"TOKEN_LIM_OPENAI=" + s.tokens["lim-openai"],
		"TOKEN_LIM_ANTHROPIC=" + s.tokens["lim-anthropic"],
		"TOKEN_LIM_GEMINI=" + s.tokens["lim-gemini"],
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("errors.py: %v\n%s", err, out)
	}
	type result struct {
		Case, Exception, Kind, Message, RequestID string
		Raised                                    bool
		Status                                    int
		Code                                      any
		ExtractError                              string `json:"extract_error"`
	}
	got := map[string]result{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("errors.py printed %q: %v", line, err)
		}
		var raw map[string]any
		_ = json.Unmarshal([]byte(line), &raw)
		if id, ok := raw["request_id"].(string); ok {
			r.RequestID = id
		}
		got[r.Case] = r
	}
	want := []struct {
		name, exception string
		status          int
		kind            string
	}{
		{"openai 404", "NotFoundError", 404, "invalid_request_error"},
		{"openai 429", "RateLimitError", 429, "requests"},
		{"anthropic 404", "NotFoundError", 404, "not_found_error"},
		{"anthropic 503", "ServiceUnavailableError", 503, "api_error"},
		{"anthropic 429", "RateLimitError", 429, "rate_limit_error"},
		{"gemini 404", "ClientError", 404, "NOT_FOUND"},
		{"gemini 504", "ServerError", 504, "DEADLINE_EXCEEDED"},
		{"gemini 429", "ClientError", 429, "RESOURCE_EXHAUSTED"},
	}
	for _, w := range want {
		r, ok := got[w.name]
		switch {
		case !ok:
			t.Errorf("%s: errors.py printed nothing", w.name)
		case !r.Raised:
			t.Errorf("%s: the SDK call succeeded", w.name)
		case r.ExtractError != "":
			t.Errorf("%s: the SDK's %s does not hold the provider's error shape: %s", w.name, r.Exception, r.ExtractError)
		case r.Exception != w.exception || r.Status != w.status || r.Kind != w.kind:
			t.Errorf("%s: SDK raised %s status %d kind %q, want %s %d %q", w.name, r.Exception, r.Status, r.Kind, w.exception, w.status, w.kind)
		case !strings.HasPrefix(r.Message, "llmedge: ") || r.RequestID == "":
			t.Errorf("%s: message %q, request id %q: want the edge's message and a request id", w.name, r.Message, r.RequestID)
		}
	}
}
