// Anthropic Messages endpoint, including its SSE event protocol.

package fakellm

import (
	"encoding/json"
	"fmt"
	"net/http"
)

type anthropicRequest struct {
	Model    string          `json:"model"`
	Messages json.RawMessage `json:"messages"`
	System   json.RawMessage `json:"system"`
	Stream   bool            `json:"stream"`
}

type anthropicUsage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

type anthropicTextBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicMessage struct {
	ID           string               `json:"id"`
	Type         string               `json:"type"`
	Role         string               `json:"role"`
	Model        string               `json:"model"`
	Content      []anthropicTextBlock `json:"content"`
	StopReason   *string              `json:"stop_reason"`
	StopSequence *string              `json:"stop_sequence"`
	Usage        anthropicUsage       `json:"usage"`
}

func (s *Server) anthropicMessages(c *call) {
	var req anthropicRequest
	if err := json.Unmarshal(c.body, &req); err != nil {
		writeError(c.w, providerAnthropic, http.StatusBadRequest, "invalid JSON body: "+err.Error(), "")
		return
	}
	model := req.Model
	if model == "" {
		model = "claude-fake"
	}
	n := s.nextID()
	id := fmt.Sprintf("msg_fake%06d", n)
	c.w.Header().Set("request-id", fmt.Sprintf("req_fake%06d", n))
	input := promptTokens(req.System, req.Messages)
	endTurn := "end_turn"

	if !req.Stream {
		writeResult(c, anthropicMessage{
			ID: id, Type: "message", Role: "assistant", Model: model,
			Content:    []anthropicTextBlock{{Type: "text", Text: answerText(c.p.chunks)}},
			StopReason: &endTurn,
			Usage:      anthropicUsage{InputTokens: input, OutputTokens: c.p.chunks},
		})
		return
	}

	// The event order and payloads follow the documented Messages streaming
	// protocol, which the anthropic SDK's stream accumulator relies on.
	sse, err := startSSE(c.w, "\n\n")
	if err != nil {
		return
	}
	start := map[string]any{
		"type": "message_start",
		"message": anthropicMessage{
			ID: id, Type: "message", Role: "assistant", Model: model,
			Content: []anthropicTextBlock{},
			Usage:   anthropicUsage{InputTokens: input, OutputTokens: 1},
		},
	}
	if sse.send("message_start", start) != nil {
		return
	}
	if sse.send("content_block_start", map[string]any{
		"type": "content_block_start", "index": 0,
		"content_block": anthropicTextBlock{Type: "text", Text: ""},
	}) != nil {
		return
	}
	if sse.send("ping", map[string]any{"type": "ping"}) != nil {
		return
	}
	if !paced(c, func(i int) error {
		return sse.send("content_block_delta", map[string]any{
			"type": "content_block_delta", "index": 0,
			"delta": map[string]any{"type": "text_delta", "text": chunkText(i)},
		})
	}) {
		return
	}
	if sse.send("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0}) != nil {
		return
	}
	if sse.send("message_delta", map[string]any{
		"type":  "message_delta",
		"delta": map[string]any{"stop_reason": endTurn, "stop_sequence": nil},
		"usage": map[string]any{"output_tokens": c.p.chunks},
	}) != nil {
		return
	}
	_ = sse.send("message_stop", map[string]any{"type": "message_stop"})
}
