package fakellm_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
)

// Mirrors of what the OpenAI SDK decodes from the Responses API, written independently of
// the server's types.
type rsUsage struct {
	InputTokens        int `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

type rsResponse struct {
	ID     string `json:"id"`
	Object string `json:"object"`
	Status string `json:"status"`
	Model  string `json:"model"`
	Output []struct {
		Type    string `json:"type"`
		Role    string `json:"role"`
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	} `json:"output"`
	Usage *rsUsage `json:"usage"`
}

func (r rsResponse) text() string {
	var b strings.Builder
	for _, o := range r.Output {
		for _, c := range o.Content {
			if o.Type == "message" && c.Type == "output_text" {
				b.WriteString(c.Text)
			}
		}
	}
	return b.String()
}

const responsesBody = `{"model":"gpt-4.1-mini","instructions":"Be brief.","input":[{"role":"user","content":[{"type":"input_text","text":"one two three"}]}]}`

func TestResponsesJSON(t *testing.T) {
	_, ts := newTestServer(t, fakellm.Options{})
	resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+"/v1/responses", responsesBody, map[string]string{"x-fake-chunks": "3"})
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("status %d, Content-Type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	r := decode[rsResponse](t, b)
	if r.Object != "response" || r.Status != "completed" || r.Model != "gpt-4.1-mini" || !strings.HasPrefix(r.ID, "resp_") {
		t.Errorf("header fields = %+v", r)
	}
	if r.text() != "chunk-0 chunk-1 chunk-2 " || r.Output[0].Role != "assistant" {
		t.Errorf("output = %+v", r.Output)
	}
	// "Be brief." and "one two three": five input words.
	if r.Usage == nil || r.Usage.InputTokens != 5 || r.Usage.OutputTokens != 3 || r.Usage.TotalTokens != 8 {
		t.Errorf("usage = %+v, want 5 in, 3 out, 8 total", r.Usage)
	}
	// A string input is accepted too; GET is not an endpoint.
	if resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+"/v1/responses", `{"model":"m","input":"hi there"}`, nil); resp.StatusCode != http.StatusOK ||
		decode[rsResponse](t, b).Usage.InputTokens != 2 {
		t.Errorf("string input: status %d, %s", resp.StatusCode, b)
	}
	if resp, _ := do(t, ts.Client(), http.MethodGet, ts.URL+"/v1/responses", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v1/responses: status %d, want 404", resp.StatusCode)
	}
}

func TestResponsesStream(t *testing.T) {
	_, ts := newTestServer(t, fakellm.Options{ChunkInterval: time.Millisecond})
	body := strings.Replace(responsesBody, `{"model"`, `{"stream":true,"model"`, 1)
	_, events := postStream(t, ts.Client(), ts.URL+"/v1/responses", body, map[string]string{"x-fake-chunks": "2"})
	want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done",
		"response.output_item.done", "response.completed"}
	var got []string
	var text strings.Builder
	for i, e := range events {
		got = append(got, e.Event)
		var ev struct {
			Type     string     `json:"type"`
			Sequence int        `json:"sequence_number"`
			Delta    string     `json:"delta"`
			Response rsResponse `json:"response"`
		}
		if err := json.Unmarshal([]byte(e.Data), &ev); err != nil || ev.Type != e.Event || ev.Sequence != i {
			t.Errorf("event %d %q: type %q, sequence %d (%v)", i, e.Event, ev.Type, ev.Sequence, err)
		}
		text.WriteString(ev.Delta)
		switch e.Event {
		case "response.created":
			if ev.Response.Status != "in_progress" || ev.Response.Usage != nil {
				t.Errorf("response.created: %s", e.Data)
			}
		case "response.completed":
			r := ev.Response
			if r.Status != "completed" || r.text() != "chunk-0 chunk-1 " || r.Usage == nil || r.Usage.InputTokens != 5 || r.Usage.OutputTokens != 2 || r.Usage.TotalTokens != 7 {
				t.Errorf("response.completed: %s", e.Data)
			}
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("event sequence\n got %v\nwant %v", got, want)
	}
	if text.String() != "chunk-0 chunk-1 " {
		t.Errorf("streamed text = %q", text.String())
	}
}
