// Tests for the three streaming protocols, pacing and client cancellation.

package fakellm_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
)

// postStream sends a streaming request and parses the whole event stream.
func postStream(t *testing.T, c *http.Client, url, body string, hdr map[string]string) (*http.Response, []sseEvent) {
	t.Helper()
	resp := send(t, c, http.MethodPost, url, body, hdr)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control = %q", cc)
	}
	events, err := readSSE(resp.Body)
	if err != nil {
		t.Fatalf("reading stream: %v", err)
	}
	return resp, events
}

type oaChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *oaUsage `json:"usage"`
}

func TestOpenAIStream(t *testing.T) {
	tests := []struct {
		name         string
		body         string
		includeUsage bool
	}{
		{"without usage", openAIStreamBody, false},
		{"with include_usage", strings.Replace(openAIStreamBody, `"stream":true`,
			`"stream":true,"stream_options":{"include_usage":true}`, 1), true},
	}
	_, ts := newTestServer(t, fakellm.Options{ChunkInterval: time.Millisecond})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, events := postStream(t, ts.Client(), ts.URL+"/v1/chat/completions", tt.body, map[string]string{"x-fake-chunks": "3"})
			if n := len(events); n == 0 || events[n-1].Data != "[DONE]" {
				t.Fatalf("stream does not end with [DONE]: %+v", events)
			}
			var chunks []oaChunk
			for _, e := range events[:len(events)-1] {
				if e.Event != "" {
					t.Errorf("unexpected event name %q", e.Event)
				}
				var c oaChunk
				if err := json.Unmarshal([]byte(e.Data), &c); err != nil {
					t.Fatalf("chunk %q: %v", e.Data, err)
				}
				if c.Object != "chat.completion.chunk" || c.ID == "" || c.Model != "gpt-4o-mini" {
					t.Errorf("chunk header = %+v", c)
				}
				chunks = append(chunks, c)
			}
			// role, 3 content deltas, finish, and the usage chunk if asked.
			want := 5
			if tt.includeUsage {
				want = 6
			}
			if len(chunks) != want {
				t.Fatalf("got %d chunks, want %d: %+v", len(chunks), want, events)
			}
			if chunks[0].Choices[0].Delta.Role != "assistant" {
				t.Errorf("first delta has no role: %+v", chunks[0])
			}
			var text strings.Builder
			for i, c := range chunks[1:4] {
				d := c.Choices[0].Delta
				if d.Content == nil || d.Role != "" || c.Choices[0].FinishReason != nil {
					t.Errorf("content chunk %d = %+v", i, c)
					continue
				}
				text.WriteString(*d.Content)
			}
			if text.String() != "chunk-0 chunk-1 chunk-2 " {
				t.Errorf("streamed text = %q", text.String())
			}
			fin := chunks[4].Choices
			if len(fin) != 1 || fin[0].FinishReason == nil || *fin[0].FinishReason != "stop" {
				t.Errorf("finish chunk = %+v", chunks[4])
			}
			if tt.includeUsage {
				u := chunks[5]
				if len(u.Choices) != 0 || u.Usage == nil ||
					*u.Usage != (oaUsage{PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6}) {
					t.Errorf("usage chunk = %+v", u)
				}
				if chunks[0].Usage != nil {
					t.Errorf("usage on a non-final chunk: %+v", chunks[0].Usage)
				}
			}
		})
	}
}

func TestAnthropicStream(t *testing.T) {
	_, ts := newTestServer(t, fakellm.Options{ChunkInterval: time.Millisecond})
	_, events := postStream(t, ts.Client(), ts.URL+"/v1/messages", anthropicStreamBody, map[string]string{"x-fake-chunks": "2"})

	wantSeq := []string{"message_start", "content_block_start", "ping",
		"content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"}
	var got []string
	for _, e := range events {
		got = append(got, e.Event)
		var typed struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal([]byte(e.Data), &typed); err != nil || typed.Type != e.Event {
			t.Errorf("event %q data type = %q (%v)", e.Event, typed.Type, err)
		}
	}
	if strings.Join(got, ",") != strings.Join(wantSeq, ",") {
		t.Fatalf("event sequence\n got %v\nwant %v", got, wantSeq)
	}

	var start struct {
		Message anMessage `json:"message"`
	}
	if err := json.Unmarshal([]byte(events[0].Data), &start); err != nil {
		t.Fatal(err)
	}
	m := start.Message
	if m.ID == "" || m.Type != "message" || m.Role != "assistant" || m.Model != "claude-3-5-haiku-latest" ||
		m.StopReason != nil || m.Usage.InputTokens != 3 || len(m.Content) != 0 {
		t.Errorf("message_start message = %+v", m)
	}

	var blockStart struct {
		Index        int `json:"index"`
		ContentBlock struct {
			Type string  `json:"type"`
			Text *string `json:"text"`
		} `json:"content_block"`
	}
	if err := json.Unmarshal([]byte(events[1].Data), &blockStart); err != nil ||
		blockStart.ContentBlock.Type != "text" || blockStart.ContentBlock.Text == nil {
		t.Errorf("content_block_start = %s (%v)", events[1].Data, err)
	}

	var text strings.Builder
	for _, e := range events[3:5] {
		var d struct {
			Index int `json:"index"`
			Delta struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"delta"`
		}
		if err := json.Unmarshal([]byte(e.Data), &d); err != nil || d.Delta.Type != "text_delta" {
			t.Errorf("content_block_delta = %s (%v)", e.Data, err)
		}
		text.WriteString(d.Delta.Text)
	}
	if text.String() != "chunk-0 chunk-1 " {
		t.Errorf("streamed text = %q", text.String())
	}

	var md struct {
		Delta struct {
			StopReason string `json:"stop_reason"`
		} `json:"delta"`
		Usage struct {
			OutputTokens int `json:"output_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(events[6].Data), &md); err != nil ||
		md.Delta.StopReason != "end_turn" || md.Usage.OutputTokens != 2 {
		t.Errorf("message_delta = %s (%v)", events[6].Data, err)
	}
}

func TestGeminiStreamSSE(t *testing.T) {
	tests := []struct {
		name   string
		path   string
		chunks string
		texts  []string
	}{
		{"v1beta", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", "3",
			[]string{"chunk-0 ", "chunk-1 ", "chunk-2 "}},
		{"v1", "/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse", "1", []string{"chunk-0 "}},
		{"no chunks still finishes", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", "0", []string{""}},
	}
	_, ts := newTestServer(t, fakellm.Options{ChunkInterval: time.Millisecond})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, events := postStream(t, ts.Client(), ts.URL+tt.path, geminiBody, map[string]string{"x-fake-chunks": tt.chunks})
			if len(events) != len(tt.texts) {
				t.Fatalf("got %d events, want %d: %+v", len(events), len(tt.texts), events)
			}
			for i, e := range events {
				r := decode[gmResponse](t, []byte(e.Data))
				last := i == len(events)-1
				if len(r.Candidates) != 1 || r.Candidates[0].Content.Role != "model" ||
					len(r.Candidates[0].Content.Parts) != 1 || r.Candidates[0].Content.Parts[0].Text != tt.texts[i] {
					t.Errorf("event %d candidates = %+v", i, r.Candidates)
					continue
				}
				if r.ModelVersion != "gemini-2.0-flash" {
					t.Errorf("event %d modelVersion = %q", i, r.ModelVersion)
				}
				if fr := r.Candidates[0].FinishReason; (fr == "STOP") != last {
					t.Errorf("event %d finishReason = %q", i, fr)
				}
				if (r.UsageMetadata != nil) != last {
					t.Errorf("event %d usageMetadata = %+v (last=%v)", i, r.UsageMetadata, last)
				}
				if last {
					n := len(tt.texts)
					if tt.chunks == "0" {
						n = 0
					}
					if u := r.UsageMetadata; u.PromptTokenCount != 5 || u.CandidatesTokenCount != n || u.TotalTokenCount != 5+n {
						t.Errorf("usage = %+v", u)
					}
				}
			}
		})
	}
}

func TestGeminiStreamJSONArray(t *testing.T) {
	_, ts := newTestServer(t, fakellm.Options{ChunkInterval: time.Millisecond})
	resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+"/v1beta/models/gemini-2.0-flash:streamGenerateContent",
		geminiBody, map[string]string{"x-fake-chunks": "2"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d", resp.StatusCode)
	}
	arr := decode[[]gmResponse](t, b)
	if len(arr) != 2 || arr[0].Candidates[0].Content.Parts[0].Text != "chunk-0 " ||
		arr[1].UsageMetadata == nil || arr[1].Candidates[0].FinishReason != "STOP" {
		t.Errorf("array stream = %s", b)
	}
}

// TestStreamPacing checks that events are flushed as produced rather than
// buffered: with 4 chunks 100ms apart the first and last content events must
// arrive at least 200ms apart.
func TestStreamPacing(t *testing.T) {
	tests := []struct {
		name      string
		path      string
		body      string
		isContent func(sseEvent) bool
	}{
		{"openai", "/v1/chat/completions", openAIStreamBody,
			func(e sseEvent) bool { return strings.Contains(e.Data, `"content":"chunk-`) }},
		{"anthropic", "/v1/messages", anthropicStreamBody,
			func(e sseEvent) bool { return e.Event == "content_block_delta" }},
		{"gemini", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", geminiBody,
			func(sseEvent) bool { return true }},
	}
	_, ts := newTestServer(t, fakellm.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, events := postStream(t, ts.Client(), ts.URL+tt.path, tt.body,
				map[string]string{"x-fake-chunks": "4", "x-fake-chunk-interval": "100ms"})
			var at []time.Time
			for _, e := range events {
				if tt.isContent(e) {
					at = append(at, e.At)
				}
			}
			if len(at) != 4 {
				t.Fatalf("got %d content events, want 4", len(at))
			}
			if spread := at[3].Sub(at[0]); spread < 200*time.Millisecond {
				t.Errorf("content events spread over %v, want >= 200ms (not flushed per event?)", spread)
			}
		})
	}
}

// TestStreamStopsWhenClientLeaves checks the handler returns promptly when
// the client cancels, instead of running out a long scripted stream.
func TestStreamStopsWhenClientLeaves(t *testing.T) {
	s := fakellm.New(fakellm.Options{})
	done := make(chan struct{})
	ts := newHandlerServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		s.ServeHTTP(w, r)
	}))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/chat/completions", strings.NewReader(openAIStreamBody))
	req.Header.Set("x-fake-chunks", "1000")
	// Far longer than the deadline below, so only honouring the request
	// context (not a failed write at the next chunk) can pass.
	req.Header.Set("x-fake-chunk-interval", "1m")
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatalf("reading first byte: %v", err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("handler still streaming 5s after the client cancelled")
	}
}
