// Tests for the non-streaming response shapes, routing and recording basics.

package fakellm_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/llmedge/llmedge/internal/fakellm"
)

// The structs below mirror what the official SDKs decode, written
// independently of the server's own types so a wrong JSON tag fails here.

type oaCompletion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *oaUsage `json:"usage"`
}

type oaUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type anMessage struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Role    string `json:"role"`
	Model   string `json:"model"`
	Content []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	StopReason   *string         `json:"stop_reason"`
	StopSequence json.RawMessage `json:"stop_sequence"`
	Usage        struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
	} `json:"usage"`
}

type gmResponse struct {
	Candidates []struct {
		Content struct {
			Parts []struct {
				Text string `json:"text"`
			} `json:"parts"`
			Role string `json:"role"`
		} `json:"content"`
		FinishReason string `json:"finishReason"`
		Index        int    `json:"index"`
	} `json:"candidates"`
	UsageMetadata *struct {
		PromptTokenCount     int `json:"promptTokenCount"`
		CandidatesTokenCount int `json:"candidatesTokenCount"`
		TotalTokenCount      int `json:"totalTokenCount"`
	} `json:"usageMetadata"`
	ModelVersion string `json:"modelVersion"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decoding %T from %s: %v", v, b, err)
	}
	return v
}

func TestNonStreamingShapes(t *testing.T) {
	const want = "chunk-0 chunk-1 chunk-2 "
	tests := []struct {
		name  string
		path  string
		body  string
		check func(t *testing.T, b []byte)
	}{
		{
			name: "openai chat completion",
			path: "/v1/chat/completions",
			body: openAIBody,
			check: func(t *testing.T, b []byte) {
				c := decode[oaCompletion](t, b)
				if c.Object != "chat.completion" || c.Model != "gpt-4o-mini" || c.ID == "" || c.Created == 0 {
					t.Errorf("header fields = %+v", c)
				}
				if len(c.Choices) != 1 || c.Choices[0].Message.Role != "assistant" ||
					c.Choices[0].Message.Content != want || c.Choices[0].FinishReason != "stop" {
					t.Errorf("choices = %+v", c.Choices)
				}
				if c.Usage == nil || *c.Usage != (oaUsage{PromptTokens: 5, CompletionTokens: 3, TotalTokens: 8}) {
					t.Errorf("usage = %+v, want 5/3/8", c.Usage)
				}
			},
		},
		{
			name: "openai prompt tokens floor at one",
			path: "/v1/chat/completions",
			body: `{"model":"m","messages":[]}`,
			check: func(t *testing.T, b []byte) {
				c := decode[oaCompletion](t, b)
				if c.Usage == nil || c.Usage.PromptTokens != 1 || c.Usage.TotalTokens != 4 {
					t.Errorf("usage = %+v, want prompt 1 total 4", c.Usage)
				}
			},
		},
		{
			name: "anthropic message",
			path: "/v1/messages",
			body: anthropicBody,
			check: func(t *testing.T, b []byte) {
				m := decode[anMessage](t, b)
				if m.Type != "message" || m.Role != "assistant" || m.Model != "claude-3-5-haiku-latest" || m.ID == "" {
					t.Errorf("header fields = %+v", m)
				}
				if len(m.Content) != 1 || m.Content[0].Type != "text" || m.Content[0].Text != want {
					t.Errorf("content = %+v", m.Content)
				}
				if m.StopReason == nil || *m.StopReason != "end_turn" || string(m.StopSequence) != "null" {
					t.Errorf("stop_reason = %v, stop_sequence = %s", m.StopReason, m.StopSequence)
				}
				if m.Usage.InputTokens != 5 || m.Usage.OutputTokens != 3 {
					t.Errorf("usage = %+v, want 5/3", m.Usage)
				}
			},
		},
		{
			name:  "gemini v1beta generateContent",
			path:  "/v1beta/models/gemini-2.0-flash:generateContent",
			body:  geminiBody,
			check: checkGemini("gemini-2.0-flash", want),
		},
		{
			name:  "gemini v1 generateContent",
			path:  "/v1/models/gemini-1.5-pro-002:generateContent",
			body:  geminiBody,
			check: checkGemini("gemini-1.5-pro-002", want),
		},
		{
			name:  "gemini percent-encoded colon",
			path:  "/v1beta/models/gemini-2.0-flash%3AgenerateContent",
			body:  geminiBody,
			check: checkGemini("gemini-2.0-flash", want),
		},
	}
	_, ts := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+tt.path, tt.body, map[string]string{"x-fake-chunks": "3"})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, body %s", resp.StatusCode, b)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
			tt.check(t, b)
		})
	}
}

func checkGemini(model, want string) func(t *testing.T, b []byte) {
	return func(t *testing.T, b []byte) {
		r := decode[gmResponse](t, b)
		if len(r.Candidates) != 1 {
			t.Fatalf("candidates = %+v", r.Candidates)
		}
		c := r.Candidates[0]
		if c.Content.Role != "model" || len(c.Content.Parts) != 1 || c.Content.Parts[0].Text != want ||
			c.FinishReason != "STOP" || c.Index != 0 {
			t.Errorf("candidate = %+v", c)
		}
		if r.ModelVersion != model {
			t.Errorf("modelVersion = %q, want %q", r.ModelVersion, model)
		}
		u := r.UsageMetadata
		if u == nil || u.PromptTokenCount != 5 || u.CandidatesTokenCount != 3 || u.TotalTokenCount != 8 {
			t.Errorf("usageMetadata = %+v, want 5/3/8", u)
		}
	}
}

func TestDefaultChunksFromOptions(t *testing.T) {
	tests := []struct {
		opts fakellm.Options
		want string
	}{
		{fakellm.Options{}, "chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 "},
		{fakellm.Options{Chunks: 2}, "chunk-0 chunk-1 "},
		{fakellm.Options{Chunks: -1}, ""},
	}
	for _, tt := range tests {
		_, ts := newTestServer(t, tt.opts)
		_, b := do(t, ts.Client(), http.MethodPost, ts.URL+"/v1/chat/completions", openAIBody, nil)
		c := decode[oaCompletion](t, b)
		if got := c.Choices[0].Message.Content; got != tt.want {
			t.Errorf("Chunks %d: content = %q, want %q", tt.opts.Chunks, got, tt.want)
		}
	}
}

func TestModels(t *testing.T) {
	_, ts := newTestServer(t, fakellm.Options{})
	resp, b := do(t, ts.Client(), http.MethodGet, ts.URL+"/v1/models", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := decode[struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}](t, b)
	if list.Object != "list" || len(list.Data) == 0 {
		t.Fatalf("list = %+v", list)
	}
	for _, m := range list.Data {
		if m.ID == "" || m.Object != "model" || m.Created == 0 || m.OwnedBy == "" {
			t.Errorf("model = %+v", m)
		}
	}

	resp, b = do(t, ts.Client(), http.MethodGet, ts.URL+"/v1/models/gpt-anything", "", nil)
	if m := decode[model](t, b); resp.StatusCode != http.StatusOK || m.ID != "gpt-anything" || m.Object != "model" {
		t.Errorf("retrieve: status %d, model %+v", resp.StatusCode, m)
	}
}

type oaError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func TestUnknownRoutes(t *testing.T) {
	tests := []struct{ method, path string }{
		{http.MethodGet, "/"},
		{http.MethodPost, "/v2/chat/completions"},
		{http.MethodGet, "/v1/chat/completions"},
		{http.MethodGet, "/v1/messages"},
		{http.MethodPost, "/v1beta/models/gemini-2.0-flash:embedContent"},
		{http.MethodPost, "/v1beta/models/:generateContent"},
		{http.MethodPost, "/v1/models"},
	}
	s, ts := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp, b := do(t, ts.Client(), tt.method, ts.URL+tt.path, "{}", nil)
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("status = %d, want 404", resp.StatusCode)
			}
			e := decode[oaError](t, b)
			if e.Error.Message == "" || e.Error.Type != "invalid_request_error" {
				t.Errorf("error body = %s", b)
			}
		})
	}
	if got := len(s.Requests()); got != len(tests) {
		t.Errorf("recorded %d requests, want %d (unknown routes are recorded too)", got, len(tests))
	}
}

func TestBadInputIsProviderShaped400(t *testing.T) {
	tests := []struct {
		name, path, body string
		hdr              map[string]string
		check            func(t *testing.T, b []byte)
	}{
		{"openai bad json", "/v1/chat/completions", "{", nil, checkOpenAIErr("invalid_request_error")},
		{"openai bad chunks header", "/v1/chat/completions", openAIBody,
			map[string]string{"x-fake-chunks": "lots"}, checkOpenAIErr("invalid_request_error")},
		{"anthropic bad json", "/v1/messages", "[", nil, checkAnthropicErr("invalid_request_error")},
		{"anthropic bad status header", "/v1/messages", anthropicBody,
			map[string]string{"x-fake-status": "200"}, checkAnthropicErr("invalid_request_error")},
		{"gemini bad json", "/v1beta/models/g:generateContent", "nope", nil, checkGeminiErr(400, "INVALID_ARGUMENT")},
		{"gemini bad delay header", "/v1beta/models/g:generateContent", geminiBody,
			map[string]string{"x-fake-delay": "-1s"}, checkGeminiErr(400, "INVALID_ARGUMENT")},
	}
	_, ts := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+tt.path, tt.body, tt.hdr)
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status = %d, want 400; body %s", resp.StatusCode, b)
			}
			tt.check(t, b)
		})
	}
}

func TestUpstreamNameHeader(t *testing.T) {
	tests := []struct {
		name, method, path, body string
	}{
		{"api", http.MethodPost, "/v1/chat/completions", openAIBody},
		{"control", http.MethodGet, "/_fake/healthz", ""},
		{"not found", http.MethodGet, "/nope", ""},
	}
	_, named := newTestServer(t, fakellm.Options{Name: "openai-a"})
	_, anon := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := do(t, named.Client(), tt.method, named.URL+tt.path, tt.body, nil)
			if got := resp.Header.Get("x-fake-upstream"); got != "openai-a" {
				t.Errorf("named: x-fake-upstream = %q", got)
			}
			resp, _ = do(t, anon.Client(), tt.method, anon.URL+tt.path, tt.body, nil)
			if _, ok := resp.Header["X-Fake-Upstream"]; ok {
				t.Errorf("unnamed server sent x-fake-upstream")
			}
		})
	}
}

func TestHealthz(t *testing.T) {
	s, ts := newTestServer(t, fakellm.Options{})
	resp, b := do(t, ts.Client(), http.MethodGet, ts.URL+"/_fake/healthz", "", nil)
	if resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Errorf("healthz = %d %q", resp.StatusCode, b)
	}
	if n := len(s.Requests()); n != 0 {
		t.Errorf("control request was recorded (%d)", n)
	}
}

func TestConcurrentRequests(t *testing.T) {
	s, ts := newTestServer(t, fakellm.Options{ChunkInterval: -1})
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			path, body := "/v1/chat/completions", openAIStreamBody
			if i%2 == 0 {
				path, body = "/v1/messages", anthropicStreamBody
			}
			req, _ := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
			resp, err := ts.Client().Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			if _, err := readSSE(resp.Body); err != nil {
				errs <- err.Error()
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- resp.Status
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := len(s.Requests()); got != n {
		t.Errorf("recorded %d requests, want %d", got, n)
	}
	s.Reset()
	if got := len(s.Requests()); got != 0 {
		t.Errorf("after Reset: %d requests", got)
	}
}
