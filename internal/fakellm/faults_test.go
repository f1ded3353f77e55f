// Tests for injected statuses, delays, connection resets and the fault queue.

package fakellm_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
)

func newHandlerServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}

func checkOpenAIErr(typ string) func(t *testing.T, b []byte) {
	return func(t *testing.T, b []byte) {
		t.Helper()
		e := decode[oaError](t, b)
		if e.Error.Message == "" || e.Error.Type != typ {
			t.Errorf("openai error = %s, want type %q", b, typ)
		}
	}
}

func checkAnthropicErr(typ string) func(t *testing.T, b []byte) {
	return func(t *testing.T, b []byte) {
		t.Helper()
		var e struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Type != "error" || e.Error.Type != typ || e.Error.Message == "" {
			t.Errorf("anthropic error = %s (%v), want error.type %q", b, err, typ)
		}
	}
}

func checkGeminiErr(code int, status string) func(t *testing.T, b []byte) {
	return func(t *testing.T, b []byte) {
		t.Helper()
		var e struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
				Status  string `json:"status"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Error.Code != code || e.Error.Status != status || e.Error.Message == "" {
			t.Errorf("gemini error = %s (%v), want %d %s", b, err, code, status)
		}
	}
}

func TestFakeStatus(t *testing.T) {
	const gemPath = "/v1beta/models/gemini-2.0-flash:generateContent"
	tests := []struct {
		name       string
		path, body string
		status     int
		retryAfter string
		check      func(t *testing.T, b []byte)
	}{
		{"openai 429", "/v1/chat/completions", openAIBody, 429, "3", func(t *testing.T, b []byte) {
			checkOpenAIErr("requests")(t, b)
			if e := decode[oaError](t, b); e.Error.Code == nil || *e.Error.Code != "rate_limit_exceeded" {
				t.Errorf("code = %v", e.Error.Code)
			}
		}},
		{"openai 503", "/v1/chat/completions", openAIStreamBody, 503, "", checkOpenAIErr("server_error")},
		{"anthropic 429", "/v1/messages", anthropicBody, 429, "3", checkAnthropicErr("rate_limit_error")},
		{"anthropic 529", "/v1/messages", anthropicStreamBody, 529, "", checkAnthropicErr("overloaded_error")},
		{"anthropic 500", "/v1/messages", anthropicBody, 500, "", checkAnthropicErr("api_error")},
		{"gemini 429", gemPath, geminiBody, 429, "10", checkGeminiErr(429, "RESOURCE_EXHAUSTED")},
		{"gemini 503 stream", "/v1beta/models/g:streamGenerateContent?alt=sse", geminiBody, 503, "", checkGeminiErr(503, "UNAVAILABLE")},
		{"gemini 401", gemPath, geminiBody, 401, "", checkGeminiErr(401, "UNAUTHENTICATED")},
	}
	_, ts := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{"x-fake-status": strconv.Itoa(tt.status)}
			if tt.retryAfter != "" {
				hdr["x-fake-retry-after"] = tt.retryAfter
			}
			resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+tt.path, tt.body, hdr)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.status)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			tt.check(t, b)
		})
	}
}

func TestFakeDelay(t *testing.T) {
	tests := []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"success", map[string]string{"x-fake-delay": "300ms"}, 200},
		{"then status", map[string]string{"x-fake-delay": "300ms", "x-fake-status": "503"}, 503},
	}
	_, ts := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			resp, _ := do(t, ts.Client(), http.MethodPost, ts.URL+"/v1/messages", anthropicBody, tt.hdr)
			if el := time.Since(start); el < 300*time.Millisecond {
				t.Errorf("answered after %v, want >= 300ms", el)
			}
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

type transportCase struct {
	name      string
	wantProto string
	setup     func(t *testing.T, h http.Handler) (baseURL string, c *http.Client)
}

// transports covers every way a client can reach the fake, because aborting
// a response works differently on HTTP/1 (hijack) and HTTP/2 (stream reset).
func transports() []transportCase {
	return []transportCase{
		{"http1", "HTTP/1.1", func(t *testing.T, h http.Handler) (string, *http.Client) {
			ts := newHandlerServer(t, h)
			return ts.URL, ts.Client()
		}},
		{"h2c", "HTTP/2.0", func(t *testing.T, h http.Handler) (string, *http.Client) {
			ts := httptest.NewUnstartedServer(h)
			ts.Config.Protocols = new(http.Protocols)
			ts.Config.Protocols.SetHTTP1(true)
			ts.Config.Protocols.SetUnencryptedHTTP2(true)
			ts.Start()
			t.Cleanup(ts.Close)
			return ts.URL, h2cClient(t)
		}},
		{"https http1", "HTTP/1.1", func(t *testing.T, h http.Handler) (string, *http.Client) {
			p := newPKI(t)
			return "https://" + serveTLS(t, h, p), tlsClient(t, p, "localhost", true, false)
		}},
		{"https h2", "HTTP/2.0", func(t *testing.T, h http.Handler) (string, *http.Client) {
			p := newPKI(t)
			return "https://" + serveTLS(t, h, p), tlsClient(t, p, "localhost", false, true)
		}},
	}
}

func TestReset(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			s := fakellm.New(fakellm.Options{ChunkInterval: time.Millisecond})
			base, c := tr.setup(t, s)

			t.Run("sanity", func(t *testing.T) {
				resp, _ := do(t, c, http.MethodPost, base+"/v1/chat/completions", openAIBody, nil)
				if resp.StatusCode != http.StatusOK || resp.Proto != tr.wantProto {
					t.Fatalf("got %d over %s, want 200 over %s", resp.StatusCode, resp.Proto, tr.wantProto)
				}
			})

			t.Run("no response", func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(openAIBody))
				req.Header.Set("x-fake-reset", "1")
				resp, err := c.Do(req)
				if err == nil {
					resp.Body.Close()
					t.Fatalf("got response %d, want a transport error", resp.StatusCode)
				}
			})

			t.Run("mid stream", func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodPost, base+"/v1/messages", strings.NewReader(anthropicStreamBody))
				req.Header.Set("x-fake-reset-after-chunks", "2")
				resp, err := c.Do(req)
				if err != nil {
					t.Fatalf("reset came before the response headers: %v", err)
				}
				defer resp.Body.Close()
				events, err := readSSE(resp.Body)
				if err == nil {
					t.Fatalf("stream ended cleanly after %d events, want a read error", len(events))
				}
				deltas := 0
				for _, e := range events {
					if e.Event == "content_block_delta" {
						deltas++
					}
					if e.Event == "message_stop" {
						t.Errorf("got message_stop on an aborted stream")
					}
				}
				if deltas != 2 {
					t.Errorf("got %d deltas before the reset, want 2", deltas)
				}
			})

			t.Run("truncated body", func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodPost, base+"/v1beta/models/g:generateContent", strings.NewReader(geminiBody))
				req.Header.Set("x-fake-reset-after-chunks", "0")
				resp, err := c.Do(req)
				if err != nil {
					return // also acceptable: the abort raced the headers
				}
				defer resp.Body.Close()
				if _, err := io.ReadAll(resp.Body); err == nil {
					t.Errorf("read a complete body, want an error")
				}
			})

			// The connection pool must recover: a later request succeeds.
			t.Run("after", func(t *testing.T) {
				resp, _ := do(t, c, http.MethodPost, base+"/v1/chat/completions", openAIBody, nil)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status = %d", resp.StatusCode)
				}
			})
		})
	}
}

func postFault(t *testing.T, base, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(base+"/_fake/faults", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFaultQueue(t *testing.T) {
	s, ts := newTestServer(t, fakellm.Options{})
	c := ts.Client()
	chat := func() *http.Response {
		t.Helper()
		resp, _ := do(t, c, http.MethodPost, ts.URL+"/v1/chat/completions", openAIBody, nil)
		return resp
	}
	statuses := func(n int) []int {
		t.Helper()
		var out []int
		for range n {
			out = append(out, chat().StatusCode)
		}
		return out
	}

	t.Run("count and retry-after", func(t *testing.T) {
		if code, b := postFault(t, ts.URL, `{"status":503,"delay":"1ms","reset":false,"retry_after":"2","count":2}`); code != http.StatusCreated {
			t.Fatalf("POST fault = %d %s", code, b)
		}
		resp, b := do(t, c, http.MethodGet, ts.URL+"/_fake/faults", "", nil)
		var pending []struct {
			Status int `json:"status"`
			Count  int `json:"count"`
		}
		if err := json.Unmarshal(b, &pending); err != nil || resp.StatusCode != 200 || len(pending) != 1 || pending[0].Count != 2 {
			t.Fatalf("pending faults = %s (%v)", b, err)
		}
		for i := range 2 {
			r := chat()
			if r.StatusCode != 503 || r.Header.Get("Retry-After") != "2" {
				t.Errorf("request %d: %d Retry-After %q, want 503 and 2", i, r.StatusCode, r.Header.Get("Retry-After"))
			}
		}
		if r := chat(); r.StatusCode != 200 || r.Header.Get("Retry-After") != "" {
			t.Errorf("third request: %d Retry-After %q, want a clean 200", r.StatusCode, r.Header.Get("Retry-After"))
		}
	})

	t.Run("fifo", func(t *testing.T) {
		postFault(t, ts.URL, `{"status":429}`)
		postFault(t, ts.URL, `{"status":500,"count":2}`)
		postFault(t, ts.URL, `{"status":502,"retry_after":7}`)
		if got, want := statuses(5), []int{429, 500, 500, 502, 200}; !slices.Equal(got, want) {
			t.Errorf("statuses = %v, want %v", got, want)
		}
	})

	t.Run("delete clears", func(t *testing.T) {
		postFault(t, ts.URL, `{"status":500,"count":5}`)
		resp, _ := do(t, c, http.MethodDelete, ts.URL+"/_fake/faults", "", nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE = %d", resp.StatusCode)
		}
		if got := chat().StatusCode; got != 200 {
			t.Errorf("status after clear = %d", got)
		}
	})

	t.Run("reset clears", func(t *testing.T) {
		postFault(t, ts.URL, `{"status":500,"count":5}`)
		s.Reset()
		if got := chat().StatusCode; got != 200 {
			t.Errorf("status after Reset = %d", got)
		}
	})

	t.Run("control requests do not consume", func(t *testing.T) {
		postFault(t, ts.URL, `{"status":418}`)
		for _, p := range []string{"/_fake/healthz", "/_fake/requests", "/_fake/faults"} {
			do(t, c, http.MethodGet, ts.URL+p, "", nil)
		}
		if got := chat().StatusCode; got != 418 {
			t.Errorf("status = %d, want the queued 418", got)
		}
	})

	t.Run("header overrides queued fault", func(t *testing.T) {
		postFault(t, ts.URL, `{"status":503}`)
		resp, _ := do(t, c, http.MethodPost, ts.URL+"/v1/chat/completions", openAIBody, map[string]string{"x-fake-status": "429"})
		if resp.StatusCode != 429 {
			t.Errorf("status = %d, want 429", resp.StatusCode)
		}
		if got := chat().StatusCode; got != 200 {
			t.Errorf("fault was not consumed by the overridden request: next status %d", got)
		}
	})

	t.Run("bad header does not consume", func(t *testing.T) {
		postFault(t, ts.URL, `{"status":503}`)
		resp, _ := do(t, c, http.MethodPost, ts.URL+"/v1/chat/completions", openAIBody, map[string]string{"x-fake-chunks": "x"})
		if resp.StatusCode != 400 {
			t.Errorf("status = %d, want 400", resp.StatusCode)
		}
		if got := chat().StatusCode; got != 503 {
			t.Errorf("status = %d, want the queued 503", got)
		}
	})

	t.Run("delay", func(t *testing.T) {
		postFault(t, ts.URL, `{"delay":"250ms"}`)
		start := time.Now()
		if got := chat().StatusCode; got != 200 {
			t.Errorf("status = %d", got)
		}
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Errorf("answered after %v, want >= 250ms", el)
		}
	})

	t.Run("reset", func(t *testing.T) {
		postFault(t, ts.URL, `{"reset":true}`)
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/chat/completions", strings.NewReader(openAIBody))
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		if resp, err := (&http.Client{Transport: tr}).Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("got %d, want a transport error", resp.StatusCode)
		}
		if got := chat().StatusCode; got != 200 {
			t.Errorf("status after reset fault = %d", got)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		for _, body := range []string{
			`{"code":503}`,
			`{"status":200}`,
			`{}`,
			`{"status":500,"delay":"soon"}`,
			`{"status":500,"count":-1}`,
			`{"status":500,"retry_after":true}`,
			`not json`,
		} {
			if code, _ := postFault(t, ts.URL, body); code != http.StatusBadRequest {
				t.Errorf("POST %s = %d, want 400", body, code)
			}
		}
		if got := chat().StatusCode; got != 200 {
			t.Errorf("an invalid fault was queued: status %d", got)
		}
	})
}

// TestFaultWhenHeader: a fault limited to one header value (one rate-limited key) hits only
// requests carrying it, and leaves others to later faults or a clean answer.
func TestFaultWhenHeader(t *testing.T) {
	_, ts := newTestServer(t, fakellm.Options{})
	c := ts.Client()
	if code, b := postFault(t, ts.URL, `{"status":429,"count":2,"when_header":{"name":"authorization","value":"Bearer key-a"}}`); code != http.StatusCreated {
		t.Fatalf("POST fault = %d %s", code, b)
	}
	status := func(key string) int {
		t.Helper()
		resp, _ := do(t, c, http.MethodPost, ts.URL+"/v1/chat/completions", openAIBody, map[string]string{"Authorization": "Bearer " + key})
		return resp.StatusCode
	}
	got := []int{status("key-b"), status("key-a"), status("key-b"), status("key-a"), status("key-a")}
	if want := []int{200, 429, 200, 429, 200}; !slices.Equal(got, want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}
	if code, b := postFault(t, ts.URL, `{"status":429,"when_header":{"value":"x"}}`); code != http.StatusBadRequest || !strings.Contains(b, "when_header.name") {
		t.Errorf("fault without when_header.name = %d %s, want 400 naming it", code, b)
	}
}
