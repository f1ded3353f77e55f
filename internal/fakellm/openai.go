// OpenAI Chat Completions and Models endpoints, plus prompt token counting.

package fakellm

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

const openAIFingerprint = "fp_fakellm"

type openAIChatRequest struct {
	Model         string          `json:"model"`
	Messages      json.RawMessage `json:"messages"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

type openAIUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type openAIMessage struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"`
}

type openAIChoice struct {
	Index        int           `json:"index"`
	Message      openAIMessage `json:"message"`
	Logprobs     *struct{}     `json:"logprobs"`
	FinishReason string        `json:"finish_reason"`
}

type openAICompletion struct {
	ID                string         `json:"id"`
	Object            string         `json:"object"`
	Created           int64          `json:"created"`
	Model             string         `json:"model"`
	SystemFingerprint string         `json:"system_fingerprint"`
	Choices           []openAIChoice `json:"choices"`
	Usage             openAIUsage    `json:"usage"`
}

type openAIDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type openAIChunkChoice struct {
	Index        int         `json:"index"`
	Delta        openAIDelta `json:"delta"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason *string     `json:"finish_reason"`
}

type openAIChunk struct {
	ID                string              `json:"id"`
	Object            string              `json:"object"`
	Created           int64               `json:"created"`
	Model             string              `json:"model"`
	SystemFingerprint string              `json:"system_fingerprint"`
	Choices           []openAIChunkChoice `json:"choices"`
	// Usage is raw so it can be an explicit null on every chunk when
	// include_usage is set, as the real API does, and absent otherwise.
	Usage json.RawMessage `json:"usage,omitempty"`
}

func (s *Server) openAIChat(c *call) {
	var req openAIChatRequest
	if err := json.Unmarshal(c.body, &req); err != nil {
		writeError(c.w, providerOpenAI, http.StatusBadRequest, "invalid JSON body: "+err.Error(), "")
		return
	}
	model := req.Model
	if model == "" {
		model = "fake-model"
	}
	usage := openAIUsage{PromptTokens: promptTokens(req.Messages), CompletionTokens: c.p.chunks}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	id := fmt.Sprintf("chatcmpl-fake%06d", s.nextID())
	created := time.Now().Unix()
	c.w.Header().Set("x-request-id", "req_"+strings.TrimPrefix(id, "chatcmpl-"))

	if !req.Stream {
		writeResult(c, openAICompletion{
			ID: id, Object: "chat.completion", Created: created, Model: model,
			SystemFingerprint: openAIFingerprint,
			Choices: []openAIChoice{{
				Message:      openAIMessage{Role: "assistant", Content: answerText(c.p.chunks)},
				FinishReason: "stop",
			}},
			Usage: usage,
		})
		return
	}

	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	chunk := func(choices []openAIChunkChoice) openAIChunk {
		ch := openAIChunk{
			ID: id, Object: "chat.completion.chunk", Created: created, Model: model,
			SystemFingerprint: openAIFingerprint, Choices: choices,
		}
		if includeUsage {
			ch.Usage = json.RawMessage("null")
		}
		return ch
	}
	sse, err := startSSE(c.w, "\n\n")
	if err != nil {
		return
	}
	empty := ""
	if sse.send("", chunk([]openAIChunkChoice{{Delta: openAIDelta{Role: "assistant", Content: &empty}}})) != nil {
		return
	}
	if !paced(c, func(i int) error {
		text := chunkText(i)
		return sse.send("", chunk([]openAIChunkChoice{{Delta: openAIDelta{Content: &text}}}))
	}) {
		return
	}
	stop := "stop"
	if sse.send("", chunk([]openAIChunkChoice{{FinishReason: &stop}})) != nil {
		return
	}
	if includeUsage {
		final := chunk([]openAIChunkChoice{})
		final.Usage, _ = json.Marshal(usage)
		if sse.send("", final) != nil {
			return
		}
	}
	_ = sse.sendRaw("", "[DONE]")
}

type openAIModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// fakeModelsCreated is fixed so model listings are byte-for-byte stable.
const fakeModelsCreated = 1700000000

var openAIModelIDs = []string{"gpt-4o", "gpt-4o-mini", "fake-model"}

func (s *Server) openAIModels(c *call) {
	data := make([]openAIModel, 0, len(openAIModelIDs))
	for _, id := range openAIModelIDs {
		data = append(data, openAIModel{ID: id, Object: "model", Created: fakeModelsCreated, OwnedBy: "fakellm"})
	}
	writeResult(c, map[string]any{"object": "list", "data": data})
}

// openAIModel answers any id: the fake serves every model name it is given.
func (s *Server) openAIModel(c *call) {
	writeResult(c, openAIModel{ID: c.model, Object: "model", Created: fakeModelsCreated, OwnedBy: "fakellm"})
}

// promptTokens counts whitespace-separated words across every text field of
// the given JSON (message contents, content parts, system prompts), at least
// one, so usage numbers are predictable from the request alone.
func promptTokens(raws ...json.RawMessage) int {
	var texts []string
	for _, raw := range raws {
		if len(raw) == 0 {
			continue
		}
		var v any
		if json.Unmarshal(raw, &v) == nil {
			collectText(v, &texts)
		}
	}
	n := len(strings.Fields(strings.Join(texts, " ")))
	return max(n, 1)
}

// collectText walks the union of the three providers' content shapes: a
// string, a list of messages/parts/blocks, or an object whose text lives in
// "text", "content" or "parts". Roles, tool inputs and the like are skipped.
func collectText(v any, out *[]string) {
	switch t := v.(type) {
	case string:
		*out = append(*out, t)
	case []any:
		for _, e := range t {
			collectText(e, out)
		}
	case map[string]any:
		if s, ok := t["text"].(string); ok {
			*out = append(*out, s)
			return
		}
		for _, k := range []string{"content", "parts"} {
			if c, ok := t[k]; ok {
				collectText(c, out)
			}
		}
	}
}
