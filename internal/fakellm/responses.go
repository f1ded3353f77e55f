// OpenAI Responses API (POST /v1/responses): one text message, JSON or SSE.

package fakellm

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

type responsesRequest struct {
	Model        string          `json:"model"`
	Input        json.RawMessage `json:"input"`
	Instructions json.RawMessage `json:"instructions"`
	Stream       bool            `json:"stream"`
}

// responsesUsage names its counts input_tokens/output_tokens, unlike Chat Completions.
type responsesUsage struct {
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

type responsesText struct {
	Type        string `json:"type"` // output_text
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
}

type responsesMessage struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"` // message
	Status  string          `json:"status"`
	Role    string          `json:"role"`
	Content []responsesText `json:"content"`
}

type responsesResponse struct {
	ID                string             `json:"id"`
	Object            string             `json:"object"` // response
	CreatedAt         int64              `json:"created_at"`
	Status            string             `json:"status"`
	Model             string             `json:"model"`
	Output            []responsesMessage `json:"output"`
	ParallelToolCalls bool               `json:"parallel_tool_calls"`
	ToolChoice        string             `json:"tool_choice"`
	Tools             []any              `json:"tools"`
	// Usage is null until the response is complete, as in the real stream's
	// response.created and response.in_progress events.
	Usage *responsesUsage `json:"usage"`
}

func (s *Server) openAIResponses(c *call) {
	var req responsesRequest
	if err := json.Unmarshal(c.body, &req); err != nil {
		writeError(c.w, providerOpenAI, http.StatusBadRequest, "invalid JSON body: "+err.Error(), "")
		return
	}
	model := req.Model
	if model == "" {
		model = "fake-model"
	}
	usage := responsesUsage{InputTokens: promptTokens(req.Instructions, req.Input), OutputTokens: c.p.chunks}
	usage.TotalTokens = usage.InputTokens + usage.OutputTokens
	n := s.nextID()
	id, msgID := fmt.Sprintf("resp_fake%06d", n), fmt.Sprintf("msg_fake%06d", n)
	c.w.Header().Set("x-request-id", fmt.Sprintf("req_fake%06d", n))
	response := func(status string, text *string, u *responsesUsage) responsesResponse {
		r := responsesResponse{
			ID: id, Object: "response", CreatedAt: time.Now().Unix(), Status: status, Model: model,
			Output: []responsesMessage{}, ParallelToolCalls: true, ToolChoice: "auto", Tools: []any{}, Usage: u,
		}
		if text != nil {
			r.Output = append(r.Output, message(msgID, "completed", *text))
		}
		return r
	}
	text := answerText(c.p.chunks)
	if !req.Stream {
		writeResult(c, response("completed", &text, &usage))
		return
	}

	sse, err := startSSE(c.w, "\n\n")
	if err != nil {
		return
	}
	seq := 0
	send := func(typ string, fields map[string]any) bool {
		fields["type"], fields["sequence_number"] = typ, seq
		seq++
		return sse.send(typ, fields) == nil
	}
	item := map[string]any{"item_id": msgID, "output_index": 0, "content_index": 0}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range item {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	part := responsesText{Type: "output_text", Annotations: []any{}}
	if !send("response.created", map[string]any{"response": response("in_progress", nil, nil)}) ||
		!send("response.in_progress", map[string]any{"response": response("in_progress", nil, nil)}) ||
		!send("response.output_item.added", map[string]any{"output_index": 0, "item": message(msgID, "in_progress", "")}) ||
		!send("response.content_part.added", with(map[string]any{"part": part})) {
		return
	}
	if !paced(c, func(i int) error {
		if !send("response.output_text.delta", with(map[string]any{"delta": chunkText(i), "logprobs": []any{}})) {
			return fmt.Errorf("client gone")
		}
		return nil
	}) {
		return
	}
	part.Text = text
	_ = send("response.output_text.done", with(map[string]any{"text": text, "logprobs": []any{}})) &&
		send("response.content_part.done", with(map[string]any{"part": part})) &&
		send("response.output_item.done", map[string]any{"output_index": 0, "item": message(msgID, "completed", text)}) &&
		send("response.completed", map[string]any{"response": response("completed", &text, &usage)})
}

// message is the assistant's output item; an in-progress one has no content yet.
func message(id, status, text string) responsesMessage {
	m := responsesMessage{ID: id, Type: "message", Status: status, Role: "assistant", Content: []responsesText{}}
	if status == "completed" {
		m.Content = append(m.Content, responsesText{Type: "output_text", Text: text, Annotations: []any{}})
	}
	return m
}
