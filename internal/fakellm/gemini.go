// Gemini generateContent and streamGenerateContent endpoints.

package fakellm

import (
	"encoding/json"
	"fmt"
	"net/http"
)

type geminiRequest struct {
	Contents          json.RawMessage `json:"contents"`
	SystemInstruction json.RawMessage `json:"systemInstruction"`
	// The REST API also accepts proto field names.
	SystemInstructionSnake json.RawMessage `json:"system_instruction"`
}

type geminiPart struct {
	Text string `json:"text"`
}

type geminiContent struct {
	Parts []geminiPart `json:"parts"`
	Role  string       `json:"role"`
}

type geminiCandidate struct {
	Content      geminiContent `json:"content"`
	FinishReason string        `json:"finishReason,omitempty"`
	Index        int           `json:"index"`
}

type geminiUsage struct {
	PromptTokenCount     int `json:"promptTokenCount"`
	CandidatesTokenCount int `json:"candidatesTokenCount"`
	TotalTokenCount      int `json:"totalTokenCount"`
}

type geminiResponse struct {
	Candidates    []geminiCandidate `json:"candidates"`
	UsageMetadata *geminiUsage      `json:"usageMetadata,omitempty"`
	ModelVersion  string            `json:"modelVersion"`
	ResponseID    string            `json:"responseId"`
}

func (s *Server) geminiGenerate(c *call) {
	var req geminiRequest
	if err := json.Unmarshal(c.body, &req); err != nil {
		writeError(c.w, providerGemini, http.StatusBadRequest, "invalid JSON payload: "+err.Error(), "")
		return
	}
	usage := geminiUsage{
		PromptTokenCount:     promptTokens(req.SystemInstruction, req.SystemInstructionSnake, req.Contents),
		CandidatesTokenCount: c.p.chunks,
	}
	usage.TotalTokenCount = usage.PromptTokenCount + usage.CandidatesTokenCount
	respID := fmt.Sprintf("fake%06d", s.nextID())
	resp := func(text string, final bool) geminiResponse {
		r := geminiResponse{
			Candidates: []geminiCandidate{{
				Content: geminiContent{Parts: []geminiPart{{Text: text}}, Role: "model"},
			}},
			ModelVersion: c.model,
			ResponseID:   respID,
		}
		if final {
			r.Candidates[0].FinishReason = "STOP"
			u := usage
			r.UsageMetadata = &u
		}
		return r
	}

	if !c.stream {
		writeResult(c, resp(answerText(c.p.chunks), true))
		return
	}
	if c.r.URL.Query().Get("alt") == "sse" {
		s.geminiSSE(c, resp)
		return
	}
	s.geminiJSONArray(c, resp)
}

// geminiSSE mirrors ?alt=sse, which is what the google-genai SDKs request.
// Google terminates events with CRLF pairs, so the fake does too to keep
// line-ending bugs in SSE parsers visible.
func (s *Server) geminiSSE(c *call, resp func(string, bool) geminiResponse) {
	sse, err := startSSE(c.w, "\r\n\r\n")
	if err != nil {
		return
	}
	last := c.p.chunks - 1
	if !paced(c, func(i int) error {
		return sse.send("", resp(chunkText(i), i == last))
	}) {
		return
	}
	if c.p.chunks == 0 {
		// There is always a final response carrying finishReason and usage.
		_ = sse.send("", resp("", true))
	}
}

// geminiJSONArray serves streamGenerateContent without alt=sse: one JSON
// array whose elements arrive over time.
func (s *Server) geminiJSONArray(c *call, resp func(string, bool) geminiResponse) {
	c.w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	c.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(c.w)
	write := func(prefix string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if _, err := c.w.Write(append([]byte(prefix), b...)); err != nil {
			return err
		}
		return rc.Flush()
	}
	sep := func(i int) string {
		if i == 0 {
			return "["
		}
		return ",\r\n"
	}
	last := c.p.chunks - 1
	if !paced(c, func(i int) error {
		return write(sep(i), resp(chunkText(i), i == last))
	}) {
		return
	}
	if c.p.chunks == 0 && write("[", resp("", true)) != nil {
		return
	}
	_, _ = c.w.Write([]byte("]"))
}
