package e2e

// The Envoy side of the usage ledger and token quotas (docs/USAGE.md), on the real Envoy,
// ratelimit, Redis and control plane: what the official SDKs send becomes one ledger
// record each with the fake's token counts, answers reach callers byte for byte, and token
// limits admit until the window is spent.

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// withLedger restarts the stack's control plane with a state dir, which turns its usage
// ledger on (newStack starts it without one), and waits until every node is back in sync.
func withLedger(t *testing.T, s *stack) {
	t.Helper()
	s.cp.Stop()
	s.cp = testenv.StartControlPlane(t, llmedgeBin, "controlplane-ledger", s.stateControlPlane(filepath.Join(s.dir, "state", "controlplane")))
	s.waitInSync(30 * time.Second)
}

// usageTotals reads the ledger's totals of the last hour grouped by (comma-separated
// dimensions), from the control plane's /usage.
func usageTotals(t *testing.T, s *stack, by string) ([]usage.Total, error) {
	t.Helper()
	var rep usage.Report
	body := get(t, s.statusURL("/usage?since=1h&by="+by+"&format=json"))
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		return nil, fmt.Errorf("%v: %s", err, body)
	}
	return rep.Totals, nil
}

// ledgerRow is one record of the ledger's billing export.
type ledgerRow map[string]string

// ledgerRows polls the tenant's export until it holds n records (Envoy flushes its usage
// log every second), then checks it does not grow past n.
func ledgerRows(t *testing.T, s *stack, tenant string, n int) []ledgerRow {
	t.Helper()
	url := s.statusURL("/usage/export?month=" + time.Now().UTC().Format("2006-01") + "&tenant=" + tenant)
	read := func() ([]ledgerRow, error) {
		recs, err := csv.NewReader(strings.NewReader(get(t, url))).ReadAll()
		if err != nil || len(recs) == 0 {
			return nil, fmt.Errorf("export: %v (%d lines)", err, len(recs))
		}
		var rows []ledgerRow
		for _, rec := range recs[1:] {
			row := ledgerRow{}
			for i, h := range recs[0] {
				row[h] = rec[i]
			}
			rows = append(rows, row)
		}
		return rows, nil
	}
	var rows []ledgerRow
	testenv.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		var err error
		if rows, err = read(); err != nil {
			return err
		}
		if len(rows) < n {
			return fmt.Errorf("%d ledger records, want %d", len(rows), n)
		}
		return nil
	})
	if len(rows) != n {
		t.Fatalf("%d ledger records, want exactly %d: %v", len(rows), n, rows)
	}
	return rows
}

// ledgerSDKRegion is sdkRegion with its caller in tenant team-sdk.
const ledgerSDKRegion = sdkRegion + `    tenant: team-sdk
`

// TestUsageLedgerFromOfficialSDKs: a normal and a streaming call of each official SDK
// through the edge become exactly six ledger records, with the model, stream flag (also
// Gemini's, which only its path names) and token counts the fake reported. The OpenAI SDK's stream does not ask for usage
// (stream_options.include_usage), so the provider reports none: that record says
// "missing" rather than zero.
func TestUsageLedgerFromOfficialSDKs(t *testing.T) {
	t.Parallel()
	py, script := sdkScript(t, "check.py")
	s := newStack(t, startUpstream(t, fakellm.Options{}), ledgerSDKRegion, "hk")
	withLedger(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
		"OPENAI_BASE_URL=" + s.edgeURL("hk", "/openai/v1"),
		"ANTHROPIC_BASE_URL=" + s.edgeURL("hk", "/anthropic"),
		"GEMINI_BASE_URL=" + s.edgeURL("hk", "/gemini"),
		"LLMEDGE_TOKEN=" + s.tokens["sdk"],
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("check.py: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	rows := ledgerRows(t, s, "team-sdk", 6)
	// Gemini names streaming in its path (streamGenerateContent), not in the body: its
	// stream is recorded as one all the same.
	type key struct{ route, stream string }
	want := map[key]struct{ model, extraction, in, out string }{
		// The fake reports one input token per prompt word (5) and one output token per chunk (5).
		{"openai", "false"}:    {"fake-model", "ok", "5", "5"},
		{"openai", "true"}:     {"fake-model", "missing", "0", "0"},
		{"anthropic", "false"}: {"claude-fake", "ok", "5", "5"},
		{"anthropic", "true"}:  {"claude-fake", "ok", "5", "5"},
		{"gemini", "false"}:    {"gemini-fake", "ok", "5", "5"},
		{"gemini", "true"}:     {"gemini-fake", "ok", "5", "5"},
	}
	seen := map[key]bool{}
	for _, r := range rows {
		k := key{r["route"], r["stream"]}
		w, ok := want[k]
		if !ok || seen[k] {
			t.Errorf("unexpected or repeated record %v", r)
			continue
		}
		seen[k] = true
		if r["caller"] != "sdk" || r["region"] != "hk" || r["upstream"] != k.route || r["status"] != "200" || r["request_id"] == "" ||
			r["requested_model"] != w.model || r["extraction"] != w.extraction || r["input_tokens"] != w.in || r["output_tokens"] != w.out {
			t.Errorf("record %v, want model %s, extraction %s, %s in / %s out", r, w.model, w.extraction, w.in, w.out)
		}
	}
}

// responsesRegion serves OpenAI's Responses API on a route that declares it (api:
// openai_responses), and on a route left at the upstream's default (openai_chat).
const responsesRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
upstreams:
{{.Provider "openai" "hk"}}
routes:
{{.Route "openai"}}
  responses: {match: {prefix: /openai/v1/responses}, upstream: openai, prefix_rewrite: /v1/responses, api: openai_responses}
  undeclared: {match: {prefix: /undeclared}, upstream: openai, prefix_rewrite: /}
callers:
  sdk:
    tokens: [{{.Digest "sdk"}}]
    upstreams: [openai]
    tenant: team-responses
`

// sdkResponsesLine is one line responses.py prints per call.
type sdkResponsesLine struct {
	Mode         string `json:"mode"`
	Text         string `json:"text"`
	InputTokens  int    `json:"input_tokens"`
	OutputTokens int    `json:"output_tokens"`
	OK           bool   `json:"ok"`
	Error        string `json:"error"`
}

// runResponsesSDK runs responses.py against the edge path base and returns its lines by mode.
func runResponsesSDK(t *testing.T, s *stack, base string) map[string]sdkResponsesLine {
	t.Helper()
	py, script := sdkScript(t, "responses.py")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
		"OPENAI_BASE_URL=" + s.edgeURL("hk", base), "LLMEDGE_TOKEN=" + s.tokens["sdk"],
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		t.Fatalf("responses.py via %s: %v\n%s\n%s", base, err, stdout.String(), stderr.String())
	}
	lines := map[string]sdkResponsesLine{}
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var x sdkResponsesLine
		if err := json.Unmarshal([]byte(l), &x); err != nil {
			t.Fatalf("responses.py printed %q: %v", l, err)
		}
		lines[x.Mode] = x
	}
	return lines
}

// TestUsageLedgerFromOpenAIResponses: the official OpenAI SDK's client.responses.create,
// normal and stream=True, through a route declared api: openai_responses, becomes one
// ledger record each with the token counts the fake reported (and the SDK parsed: 5 input
// words, 5 output chunks), the stream's read from its final response.completed event.
// Checked on the 1.40.0 binary: Envoy's OpenAI extraction reads the Responses naming
// (input_tokens/output_tokens) on a route left at openai_chat too, so those records are
// alike (docs/USAGE.md); this pins it.
func TestUsageLedgerFromOpenAIResponses(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), responsesRegion, "hk")
	withLedger(t, s)
	const want = "chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 " // the fake's default answer
	for _, base := range []string{"/openai/v1", "/undeclared/v1"} {
		lines := runResponsesSDK(t, s, base)
		for _, mode := range []string{"normal", "stream"} {
			if l := lines[mode]; !l.OK || l.Text != want || l.InputTokens != 5 || l.OutputTokens != 5 {
				t.Errorf("via %s, %s: the SDK got %+v; want ok, %q, 5 in / 5 out", base, mode, l, want)
			}
		}
	}
	rows := ledgerRows(t, s, "team-responses", 4)
	seen := map[string]bool{}
	for _, r := range rows {
		k := r["route"] + " " + r["stream"]
		if seen[k] {
			t.Errorf("two records for %s: %v", k, rows)
		}
		seen[k] = true
		if r["caller"] != "sdk" || r["upstream"] != "openai" || r["status"] != "200" || r["requested_model"] != "fake-model" || r["request_id"] == "" {
			t.Errorf("record %v", r)
		}
		if r["route"] != "responses" && r["route"] != "undeclared" {
			t.Errorf("record of route %q: %v", r["route"], r)
		}
		if r["extraction"] != "ok" || r["input_tokens"] != "5" || r["output_tokens"] != "5" {
			t.Errorf("route %s, stream %s: extraction %s, %s in / %s out; want ok, 5 / 5",
				r["route"], r["stream"], r["extraction"], r["input_tokens"], r["output_tokens"])
		}
	}
	for _, k := range []string{"responses false", "responses true", "undeclared false", "undeclared true"} {
		if !seen[k] {
			t.Errorf("no record for route/stream %s: %v", k, rows)
		}
	}
}

// rawUpstream answers every request with fixed bytes, written in the given pieces with
// a flush after each, so a test knows byte for byte what the provider sent.
type rawUpstream struct {
	mu    sync.Mutex
	reply map[string]rawReply // by path
}

type rawReply struct {
	contentType string
	length      bool // send Content-Length
	pieces      []string
	cut         bool // close the connection after the pieces, mid-body
}

func (u *rawUpstream) set(path string, r rawReply) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reply[path] = r
}

func (u *rawUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	rep, ok := u.reply[r.URL.Path]
	u.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	body := strings.Join(rep.pieces, "")
	w.Header().Set("Content-Type", rep.contentType)
	if rep.length || rep.cut {
		n := len(body)
		if rep.cut {
			n += 100 // promise more than is sent
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
	}
	w.WriteHeader(http.StatusOK)
	for _, p := range rep.pieces {
		_, _ = w.Write([]byte(p))
		_ = http.NewResponseController(w).Flush()
	}
	if rep.cut {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
	}
}

func startRawUpstream(t *testing.T) (*rawUpstream, string) {
	t.Helper()
	u := &rawUpstream{reply: map[string]rawReply{}}
	return u, serveUpstream(t, u)
}

// serveUpstream serves h as a plain-HTTP upstream on a loopback port until the test ends,
// and returns its host:port.
func serveUpstream(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

const rawRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai, anthropic, gemini]
upstreams:
  openai: {url: http://RAW, allowed_regions: [hk]}
  anthropic: {url: http://RAW, api: anthropic, allowed_regions: [hk]}
  gemini: {url: http://RAW, api: gemini, allowed_regions: [hk]}
routes:
{{.Route "openai"}}
{{.Route "anthropic"}}
{{.Route "gemini"}}
callers:
  raw:
    tokens: [{{.Digest "raw"}}]
    tenant: team-raw
    upstreams: [openai, anthropic, gemini]
`

// TestUsagePassThroughIsByteForByte: JSON and SSE answers of the three APIs, including
// odd but valid JSON (spacing, escapes, number forms, key order), SSE comments and events
// split across writes, reach the caller exactly as sent, JSON with its Content-Length; and
// bad answers (malformed JSON, a truncated stream, no usage, an event larger than Envoy's
// extraction cap) reach it unchanged too, while the ledger says what it could read.
func TestUsagePassThroughIsByteForByte(t *testing.T) {
	t.Parallel()
	raw, addr := startRawUpstream(t)
	s := newStack(t, startUpstream(t, fakellm.Options{}), strings.ReplaceAll(rawRegion, "RAW", addr), "hk")
	withLedger(t, s)

	big := `data: {"id":"x","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"` + strings.Repeat("z", 2<<20) + `"}}]}` + "\n\n"
	cases := []struct {
		name, path, body string
		reply            rawReply
		extraction, in   string // what the ledger must record
	}{
		{"openai json", "/v1/chat/completions", `{"model":"gpt-4o","messages":[]}`, rawReply{contentType: "application/json", length: true, pieces: []string{
			"{ \"usage\" : {\"total_tokens\":30, \"completion_tokens\": 20,\"prompt_tokens\":10},\n  \"model\":\"gpt-4o\",\"id\":\"c\\u0041\",\"object\":\"chat.completion\",\"created\":1.7e9,\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"h\\u00e9\"},\"finish_reason\":\"stop\"}] }\n",
		}}, "ok", "10"},
		{"openai sse", "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`, rawReply{contentType: "text/event-stream", pieces: []string{
			": keep-alive\n\n",
			`data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"h"}}]}` + "\n\ndata: {\"id\":\"c\",\"object\":\"chat.com",
			`pletion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}` + "\n\n",
			"data: [DONE]\n\n",
		}}, "ok", "11"},
		{"anthropic json", "/v1/messages", `{"model":"claude-x","max_tokens":9,"messages":[]}`, rawReply{contentType: "application/json", length: true, pieces: []string{
			`{"id":"m","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`,
		}}, "ok", "12"},
		{"anthropic sse", "/v1/messages", `{"model":"claude-x","stream":true,"max_tokens":9,"messages":[]}`, rawReply{contentType: "text/event-stream", pieces: []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":13,\"output_tokens\":1}}}\n\n",
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":4}}\n\n",
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
		}}, "ok", "13"},
		{"gemini json", "/v1beta/models/gemini-x:generateContent", `{"contents":[]}`, rawReply{contentType: "application/json", length: true, pieces: []string{
			"{\n  \"candidates\": [{\"content\": {\"parts\": [{\"text\": \"hi\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\n  \"usageMetadata\": {\"promptTokenCount\": 14,\"candidatesTokenCount\": 5,\"totalTokenCount\": 19},\n  \"modelVersion\": \"gemini-x\"\n}\n",
		}}, "ok", "14"},
		{"gemini sse", "/v1beta/models/gemini-x:streamGenerateContent", `{"contents":[]}`, rawReply{contentType: "text/event-stream", pieces: []string{
			"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"h\"}],\"role\": \"model\"}}],\"modelVersion\": \"gemini-x\"}\r\n\r\n",
			"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"i\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 15,\"candidatesTokenCount\": 2,\"totalTokenCount\": 17},\"modelVersion\": \"gemini-x\"}\r\n\r\n",
		}}, "ok", "15"},
		{"malformed json", "/v1/chat/completions", `{"model":"gpt-4o","messages":[]}`, rawReply{contentType: "application/json", length: true, pieces: []string{
			`{"id":"c","model":"gpt-4o","usage":{"prompt_tokens":10,`,
		}}, "", "0"},
		{"sse without usage", "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`, rawReply{contentType: "text/event-stream", pieces: []string{
			`data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"h"}}]}` + "\n\n", "data: [DONE]\n\n",
		}}, "missing", "0"},
		{"large event", "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`, rawReply{contentType: "text/event-stream", pieces: []string{
			big, `data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":16,"completion_tokens":1,"total_tokens":17}}` + "\n\n", "data: [DONE]\n\n",
		}}, "", ""},
	}
	h := map[string]string{"authorization": "Bearer " + s.tokens["raw"], "x-goog-api-key": s.tokens["raw"]}
	for _, c := range cases {
		prefix := "/openai"
		switch {
		case strings.HasPrefix(c.path, "/v1/messages"):
			prefix = "/anthropic"
			h = map[string]string{"x-api-key": s.tokens["raw"]}
		case strings.HasPrefix(c.path, "/v1beta"):
			prefix = "/gemini"
			h = map[string]string{"x-goog-api-key": s.tokens["raw"]}
		default:
			h = map[string]string{"authorization": "Bearer " + s.tokens["raw"]}
		}
		raw.set(c.path, c.reply)
		resp, body := post(t, s.edgeURL("hk", prefix+c.path), c.body, h)
		sent := strings.Join(c.reply.pieces, "")
		if resp.StatusCode != 200 || string(body) != sent {
			t.Errorf("%s: status %d, %d bytes; the caller must get the %d bytes sent, unchanged (first difference at %d)",
				c.name, resp.StatusCode, len(body), len(sent), firstDiff(string(body), sent))
		}
		if c.reply.length && resp.Header.Get("Content-Length") != strconv.Itoa(len(sent)) {
			t.Errorf("%s: Content-Length %q, want %d as sent", c.name, resp.Header.Get("Content-Length"), len(sent))
		}
	}
	// A stream cut off mid-body: the caller gets what was sent, then an error.
	raw.set("/v1/messages", rawReply{contentType: "text/event-stream", cut: true, pieces: []string{
		"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":17,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"con",
	}})
	req, _ := http.NewRequest(http.MethodPost, s.edgeURL("hk", "/anthropic/v1/messages"), strings.NewReader(`{"model":"claude-x","stream":true,"max_tokens":9,"messages":[]}`))
	req.Header.Set("x-api-key", s.tokens["raw"])
	req.Header.Set("content-type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		readAll(resp)
	}

	// Envoy is still serving, and a body past the 32 KiB that json_to_metadata reads
	// streams through unread rather than being refused.
	raw.set("/v1/chat/completions", cases[0].reply)
	bigBody := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("y", 200<<10) + `"}]}`
	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), bigBody, map[string]string{"authorization": "Bearer " + s.tokens["raw"]})
	if resp.StatusCode != http.StatusOK || string(body) != strings.Join(cases[0].reply.pieces, "") {
		t.Errorf("a 200 KiB request after the bad answers: status %d, body %.200s", resp.StatusCode, body)
	}

	rows := ledgerRows(t, s, "team-raw", len(cases)+2)
	byIn := map[string]int{}
	exts := map[string]int{}
	for _, r := range rows {
		byIn[r["input_tokens"]]++
		exts[r["extraction"]]++
		// Gemini JSON (14 input tokens) and SSE (15): only the path says which one streams.
		if in := r["input_tokens"]; (in == "14" || in == "15") && r["stream"] != strconv.FormatBool(in == "15") {
			t.Errorf("gemini record with %s input tokens: stream %s, want %v", in, r["stream"], in == "15")
		}
	}
	for _, c := range cases {
		if c.extraction == "ok" && byIn[c.in] != 1 && c.in != "10" {
			t.Errorf("%s: no single record with %s input tokens: %v", c.name, c.in, rows)
		}
	}
	// 6 complete and the large request, then malformed JSON, the stream without usage, the large event and the
	// cut stream: none of them recorded as complete, none lost.
	if byIn["10"] != 2 { // the first case and the large request, answered alike
		t.Errorf("%d records with 10 input tokens, want 2: %v", byIn["10"], rows)
	}
	if exts["ok"] != 7 || exts["missing"]+exts["failed"]+exts["partial"] != 4 {
		t.Errorf("extraction statuses %v, want 7 ok and 4 missing/failed/partial", exts)
	}
	t.Logf("extraction statuses: %v", exts)
}

func firstDiff(a, b string) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

const tokenQuotaRegion = quotaRegionHK + `callers:
  alice:
    tokens: [{{.Digest "alice"}}]
    upstreams: [openai]
    limits:
      - {tokens: 1000, per: minute}
  crowd:
    tokens: [{{.Digest "crowd"}}]
    upstreams: [openai]
    limits:
      - {tokens: 1000, per: minute}
  estimated:
    tokens: [{{.Digest "estimated"}}]
    upstreams: [openai]
    limits:
      - {tokens: 1000, per: minute}
  modeled:
    tokens: [{{.Digest "modeled"}}]
    upstreams: [openai]
    limits:
      - {tokens: 1000, per: minute, model: gpt-big}
`

// chat sends a non-streaming chat completion the fake answers with 299 output tokens and
// 1 input token: 300 tokens a request.
func (s *stack) chat(t *testing.T, caller, model string) (*http.Response, string) {
	t.Helper()
	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), `{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`,
		map[string]string{"authorization": "Bearer " + s.tokens[caller], "x-fake-chunks": "299", "x-fake-chunk-interval": "0s"})
	return resp, string(body)
}

// TestTokenQuotaAdmitsUntilSpent: a caller with 1,000 tokens a minute making 300-token
// requests one after another is admitted while the window has tokens left — four times
// (0, 300, 600 and 900 used), a fifth only if the fourth's charge was still on its way —
// then refused with a 429 naming the token limit. A model-scoped limit counts only
// requests for its model.
func TestTokenQuotaAdmitsUntilSpent(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), tokenQuotaRegion, "hk")
	withinWindow(t, time.Minute, 2, func(errorf func(string, ...any)) {
		admitted := 0
		var last *http.Response
		var lastBody string
		for i := 0; i < 10; i++ {
			last, lastBody = s.chat(t, "alice", "gpt-4o")
			if last.StatusCode != http.StatusOK {
				break
			}
			admitted++
		}
		if admitted < 4 || admitted > 5 || last.StatusCode != http.StatusTooManyRequests {
			errorf("admitted %d requests of 300 tokens under 1,000 tokens/minute, then status %d; want 4 (or 5) then 429", admitted, last.StatusCode)
			return
		}
		if !strings.Contains(last.Header.Get("x-ratelimit-limit"), `name="callers.alice.limits[0]"`) || !strings.Contains(lastBody, "callers.alice.limits[0]") {
			errorf("429 does not name the token limit: x-ratelimit-limit %q, body %s", last.Header.Get("x-ratelimit-limit"), lastBody)
		}
		t.Logf("alice: %d requests admitted, then %d", admitted, last.StatusCode)
		// A stream that reports no usage (no stream_options.include_usage) is charged an
		// estimate from its size: 299 chunks of some 150 bytes spend the window at once.
		resp, _ := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			map[string]string{"authorization": "Bearer " + s.tokens["estimated"], "x-fake-chunks": "299", "x-fake-chunk-interval": "0s"})
		if resp.StatusCode != http.StatusOK {
			errorf("estimated: first stream refused with %d", resp.StatusCode)
			return
		}
		// Without the estimate the window would take four more 300-token requests; with it,
		// at most one more is admitted (its admission may beat the stream's charge).
		more := 0
		for r, _ := s.chat(t, "estimated", "gpt-4o"); r.StatusCode == http.StatusOK; r, _ = s.chat(t, "estimated", "gpt-4o") {
			if more++; more > 1 {
				errorf("estimated: %d requests admitted after a stream of ~45 KB that reported no usage; want at most 1", more)
				return
			}
		}
		// A model-scoped limit: other models pass, gpt-big is counted.
		for i := 0; i < 5; i++ {
			if resp, _ := s.chat(t, "modeled", "gpt-4o"); resp.StatusCode != http.StatusOK {
				errorf("modeled, gpt-4o request %d: status %d; the limit is on gpt-big only", i+1, resp.StatusCode)
				return
			}
		}
		refused := false
		for i := 0; i < 10 && !refused; i++ {
			resp, _ := s.chat(t, "modeled", "gpt-big")
			refused = resp.StatusCode == http.StatusTooManyRequests
		}
		if !refused {
			errorf("modeled: ten 300-token gpt-big requests under 1,000 gpt-big tokens/minute were all admitted")
		}
	})
	st := s.status()
	found := false
	for _, l := range s.region(st, "hk").Limits {
		found = found || (l.Name == "callers.alice.limits[0]" && l.Tokens == 1000 && l.Per == "minute")
	}
	if !found {
		t.Errorf("/status lacks alice's token limit: %+v", s.region(st, "hk").Limits)
	}
}

// TestTokenQuotaOvershootBound: concurrent callers sharing one 1,000-token window are
// admitted while it has tokens left; what they use past the limit is at most what the
// requests in flight when it was spent consume, plus one request per caller admitted
// before its previous charge reached Redis (docs/CONFIG.md: 2 × workers × 300 here).
func TestTokenQuotaOvershootBound(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), tokenQuotaRegion, "hk")
	const workers = 8
	withinWindow(t, time.Minute, 2, func(errorf func(string, ...any)) {
		var admitted, limited, other atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					resp, err := http.DefaultClient.Do(mustChatRequest(s, "crowd"))
					if err != nil {
						other.Add(1)
						return
					}
					readAll(resp)
					switch resp.StatusCode {
					case http.StatusOK:
						admitted.Add(1)
					case http.StatusTooManyRequests:
						limited.Add(1)
						return
					default:
						other.Add(1)
						return
					}
				}
			}()
		}
		wg.Wait()
		used := admitted.Load() * 300
		t.Logf("%d workers: %d admitted (%d tokens against 1,000), %d refused, %d other", workers, admitted.Load(), used, limited.Load(), other.Load())
		if other.Load() != 0 || limited.Load() != workers || used < 1000 || used > 1000+2*workers*300 {
			errorf("admitted %d (%d tokens), refused %d, other %d; want every worker refused in the end and 1,000 <= tokens <= %d",
				admitted.Load(), used, limited.Load(), other.Load(), 1000+2*workers*300)
		}
	})
}

func mustChatRequest(s *stack, caller string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, s.edgeURL("hk", "/openai/v1/chat/completions"),
		strings.NewReader(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Bearer "+s.tokens[caller])
	req.Header.Set("x-fake-chunks", "299")
	req.Header.Set("x-fake-chunk-interval", "0s")
	return req
}
