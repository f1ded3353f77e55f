// Package fakellm is a deterministic stand-in for the OpenAI, Anthropic and
// Gemini HTTP APIs, so tests, benchmarks and the local demo can exercise the
// edge (and real provider SDKs through it) on machines without internet.
package fakellm

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	defaultChunks        = 5
	defaultChunkInterval = 20 * time.Millisecond
	defaultMaxRequests   = 10000

	// recordedBodyLimit bounds what Requests keeps per request; the full body
	// is still parsed.
	recordedBodyLimit = 64 << 10
	// maxBodyBytes stops a misbehaving client from exhausting memory.
	maxBodyBytes = 32 << 20
	// maxChunks keeps a typo in x-fake-chunks from producing an endless stream.
	maxChunks = 100000
)

// Options configures a Server. The zero value is usable.
type Options struct {
	// Chunks is how many chunks (one word each) every answer has. 0 means 5;
	// negative means none.
	Chunks int
	// ChunkInterval is the pause between streamed chunks. 0 means 20ms;
	// negative means no pause.
	ChunkInterval time.Duration
	// Name, when set, is sent as the x-fake-upstream response header so tests
	// can tell several fake upstreams apart behind one edge.
	Name string
	// MaxRequests bounds how many requests are kept for Requests (oldest are
	// dropped), so long benchmarks do not grow memory without limit.
	// 0 means 10000; negative disables recording.
	MaxRequests int
	// Logger receives one line per API request and per injected fault.
	// nil discards.
	Logger *slog.Logger
}

// Request is one recorded API request.
type Request struct {
	Time       time.Time   `json:"time"`
	Method     string      `json:"method"`
	Path       string      `json:"path"`
	RawQuery   string      `json:"raw_query"`
	Host       string      `json:"host"`
	Proto      string      `json:"proto"`
	SNI        string      `json:"sni"`
	RemoteAddr string      `json:"remote_addr"`
	Header     http.Header `json:"header"`
	// Body holds at most the first 64 KiB of the request body.
	Body string `json:"body"`
}

// Server is an http.Handler that impersonates the provider APIs. It is safe
// for concurrent use.
type Server struct {
	chunks      int
	interval    time.Duration
	name        string
	maxRequests int
	log         *slog.Logger

	seq atomic.Uint64

	mu       sync.Mutex
	requests []Request
	faults   []fault
}

// New returns a Server with opts' zero fields replaced by their defaults.
func New(opts Options) *Server {
	s := &Server{
		chunks:      opts.Chunks,
		interval:    opts.ChunkInterval,
		name:        opts.Name,
		maxRequests: opts.MaxRequests,
		log:         opts.Logger,
	}
	switch {
	case s.chunks == 0:
		s.chunks = defaultChunks
	case s.chunks < 0:
		s.chunks = 0
	}
	switch {
	case s.interval == 0:
		s.interval = defaultChunkInterval
	case s.interval < 0:
		s.interval = 0
	}
	if s.maxRequests == 0 {
		s.maxRequests = defaultMaxRequests
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// Requests returns a copy of the recorded API requests, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.maxRequests < 0 {
		return []Request{}
	}
	start := 0
	if len(s.requests) > s.maxRequests {
		start = len(s.requests) - s.maxRequests
	}
	out := make([]Request, 0, len(s.requests)-start)
	for _, r := range s.requests[start:] {
		r.Header = r.Header.Clone()
		out = append(out, r)
	}
	return out
}

// Reset forgets recorded requests and drops queued faults, giving the next
// test a clean slate.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
	s.faults = nil
}

func (s *Server) record(r *http.Request, body []byte) {
	if s.maxRequests < 0 {
		return
	}
	if len(body) > recordedBodyLimit {
		body = body[:recordedBodyLimit]
	}
	rec := Request{
		Time:       time.Now(),
		Method:     r.Method,
		Path:       r.URL.Path,
		RawQuery:   r.URL.RawQuery,
		Host:       r.Host,
		Proto:      r.Proto,
		RemoteAddr: r.RemoteAddr,
		Header:     r.Header.Clone(),
		Body:       string(body),
	}
	rec.SNI = sniOf(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, rec)
	// Trimming only once the slice doubles keeps recording amortised O(1)
	// under benchmark load; Requests hides the surplus.
	if len(s.requests) >= 2*s.maxRequests {
		s.requests = append([]Request(nil), s.requests[len(s.requests)-s.maxRequests:]...)
	}
}

func (s *Server) nextID() uint64 { return s.seq.Add(1) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.name != "" {
		w.Header().Set("x-fake-upstream", s.name)
	}
	if strings.HasPrefix(r.URL.Path, "/_fake/") {
		s.serveControl(w, r)
		return
	}

	rt := route(r.Method, r.URL.Path)
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	s.record(r, body)
	s.log.Info("request", "method", r.Method, "path", r.URL.Path, "proto", r.Proto,
		"host", r.Host, "sni", sniOf(r), "remote", r.RemoteAddr)
	if err != nil {
		writeError(w, rt.provider, http.StatusBadRequest, "reading request body: "+err.Error(), "")
		return
	}
	if len(body) > maxBodyBytes {
		writeError(w, rt.provider, http.StatusRequestEntityTooLarge, "request body too large", "")
		return
	}

	p, err := s.plan(r)
	if err != nil {
		writeError(w, rt.provider, http.StatusBadRequest, err.Error(), "")
		return
	}
	if p.delay > 0 && !sleep(r.Context(), p.delay) {
		return
	}
	if p.reset {
		s.log.Info("fault: reset", "path", r.URL.Path)
		abort(w, r)
		return
	}
	if p.status != 0 {
		s.log.Info("fault: status", "path", r.URL.Path, "status", p.status)
		if p.retryAfter != "" {
			w.Header().Set("Retry-After", p.retryAfter)
		}
		writeError(w, rt.provider, p.status,
			strings.TrimSpace(fmt.Sprintf("fakellm: injected %d %s", p.status, http.StatusText(p.status))), "")
		return
	}
	if rt.handle == nil {
		writeError(w, providerOpenAI, http.StatusNotFound,
			fmt.Sprintf("Unknown request URL: %s %s. Please check the URL for typos.", r.Method, r.URL.Path),
			"unknown_url")
		return
	}
	rt.handle(s, &call{w: w, r: r, body: body, p: p, model: rt.model, stream: rt.stream})
}

func sniOf(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return r.TLS.ServerName
}

// call bundles what a provider handler needs for one request.
type call struct {
	w      http.ResponseWriter
	r      *http.Request
	body   []byte
	p      plan
	model  string // from the path (Gemini, OpenAI model retrieve)
	stream bool   // from the path (Gemini)
}

type provider int

const (
	providerOpenAI provider = iota
	providerAnthropic
	providerGemini
)

type routed struct {
	provider provider
	handle   func(*Server, *call)
	model    string
	stream   bool
}

// route is hand-written rather than an http.ServeMux because Gemini puts the
// method after a colon inside the last path segment.
func route(method, path string) routed {
	switch {
	case path == "/v1/chat/completions":
		if method == http.MethodPost {
			return routed{provider: providerOpenAI, handle: (*Server).openAIChat}
		}
		return routed{provider: providerOpenAI}
	case path == "/v1/responses":
		if method == http.MethodPost {
			return routed{provider: providerOpenAI, handle: (*Server).openAIResponses}
		}
		return routed{provider: providerOpenAI}
	case path == "/v1/messages":
		if method == http.MethodPost {
			return routed{provider: providerAnthropic, handle: (*Server).anthropicMessages}
		}
		return routed{provider: providerAnthropic}
	case path == "/v1/models":
		if method == http.MethodGet {
			return routed{provider: providerOpenAI, handle: (*Server).openAIModels}
		}
		return routed{provider: providerOpenAI}
	}
	for _, prefix := range []string{"/v1beta/models/", "/v1/models/"} {
		rest, ok := strings.CutPrefix(path, prefix)
		if !ok {
			continue
		}
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			// No action: an OpenAI model retrieve (GET /v1/models/{id}).
			if prefix == "/v1/models/" && method == http.MethodGet && rest != "" && !strings.Contains(rest, "/") {
				return routed{provider: providerOpenAI, handle: (*Server).openAIModel, model: rest}
			}
			return routed{provider: providerOpenAI}
		}
		model, action := rest[:i], rest[i+1:]
		if model == "" || strings.Contains(model, "/") || method != http.MethodPost {
			return routed{provider: providerGemini}
		}
		switch action {
		case "generateContent":
			return routed{provider: providerGemini, handle: (*Server).geminiGenerate, model: model}
		case "streamGenerateContent":
			return routed{provider: providerGemini, handle: (*Server).geminiGenerate, model: model, stream: true}
		}
		return routed{provider: providerGemini}
	}
	return routed{provider: providerOpenAI}
}

// plan is the resolved behaviour for one request: defaults, then a queued
// fault, then x-fake-* headers, each overriding the last.
type plan struct {
	chunks           int
	interval         time.Duration
	delay            time.Duration
	status           int
	retryAfter       string
	reset            bool
	resetAfterChunks int // -1: never
}

func (s *Server) plan(r *http.Request) (plan, error) {
	p := plan{chunks: s.chunks, interval: s.interval, resetAfterChunks: -1}
	h := r.Header
	// Headers are validated before a queued fault is consumed so that a
	// malformed request does not silently eat a fault meant for a real one;
	// they are applied after it so a header always wins.
	var sets []func(*plan)
	if v := h.Get("x-fake-chunks"); v != "" {
		n, err := parseCount("x-fake-chunks", v, maxChunks)
		if err != nil {
			return p, err
		}
		sets = append(sets, func(p *plan) { p.chunks = n })
	}
	if v := h.Get("x-fake-chunk-interval"); v != "" {
		d, err := parseDuration("x-fake-chunk-interval", v)
		if err != nil {
			return p, err
		}
		sets = append(sets, func(p *plan) { p.interval = d })
	}
	if v := h.Get("x-fake-delay"); v != "" {
		d, err := parseDuration("x-fake-delay", v)
		if err != nil {
			return p, err
		}
		sets = append(sets, func(p *plan) { p.delay = d })
	}
	if v := h.Get("x-fake-status"); v != "" {
		n, err := parseStatus("x-fake-status", v)
		if err != nil {
			return p, err
		}
		sets = append(sets, func(p *plan) { p.status = n })
	}
	if v := h.Get("x-fake-retry-after"); v != "" {
		sets = append(sets, func(p *plan) { p.retryAfter = v })
	}
	if v := h.Get("x-fake-reset"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return p, fmt.Errorf("x-fake-reset: want a boolean, got %q", v)
		}
		sets = append(sets, func(p *plan) { p.reset = b })
	}
	if v := h.Get("x-fake-reset-after-chunks"); v != "" {
		n, err := parseCount("x-fake-reset-after-chunks", v, maxChunks)
		if err != nil {
			return p, err
		}
		sets = append(sets, func(p *plan) { p.resetAfterChunks = n })
	}

	if f, ok := s.popFault(r.Header); ok {
		p.delay, p.status, p.retryAfter, p.reset = f.delay, f.status, f.retryAfter, f.reset
		if f.resetAfterChunks >= 0 {
			p.resetAfterChunks = f.resetAfterChunks
		}
	}
	for _, set := range sets {
		set(&p)
	}
	return p, nil
}

func parseCount(name, v string, limit int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 || n > limit {
		return 0, fmt.Errorf("%s: want an integer in [0, %d], got %q", name, limit, v)
	}
	return n, nil
}

func parseDuration(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s: want a non-negative Go duration such as 250ms, got %q", name, v)
	}
	return d, nil
}

func parseStatus(name, v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 400 || n > 599 {
		return 0, fmt.Errorf("%s: want an HTTP error status in [400, 599], got %q", name, v)
	}
	return n, nil
}

// writeJSON sends v with an explicit Content-Length, which is what lets a
// reset-after-chunks fault on a non-streaming request show up as a truncated
// body rather than a short but valid one.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeResult sends a successful non-streaming answer, honouring
// reset-after-chunks by cutting the body in half and aborting.
func writeResult(c *call, v any) {
	if c.p.resetAfterChunks < 0 {
		writeJSON(c.w, http.StatusOK, v)
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(c.w, err.Error(), http.StatusInternalServerError)
		return
	}
	c.w.Header().Set("Content-Type", "application/json")
	c.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(b[:len(b)/2])
	_ = http.NewResponseController(c.w).Flush()
	abort(c.w, c.r)
}

// writeError answers in the error shape of the provider whose SDK will parse
// it, so SDK retry and exception mapping behave as against the real API.
func writeError(w http.ResponseWriter, p provider, status int, msg, code string) {
	switch p {
	case providerAnthropic:
		writeJSON(w, status, map[string]any{
			"type":  "error",
			"error": map[string]any{"type": anthropicErrorType(status), "message": msg},
		})
	case providerGemini:
		writeJSON(w, status, map[string]any{
			"error": map[string]any{"code": status, "message": msg, "status": geminiErrorStatus(status)},
		})
	default:
		typ, defCode := openAIErrorKind(status)
		if code == "" {
			code = defCode
		}
		var codeVal any
		if code != "" {
			codeVal = code
		}
		writeJSON(w, status, map[string]any{
			"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": codeVal},
		})
	}
}

func openAIErrorKind(status int) (typ, code string) {
	switch {
	case status == http.StatusUnauthorized:
		return "invalid_request_error", "invalid_api_key"
	case status == http.StatusForbidden:
		return "permission_error", ""
	case status == http.StatusNotFound:
		return "invalid_request_error", "not_found"
	case status == http.StatusTooManyRequests:
		return "requests", "rate_limit_exceeded"
	case status >= 500:
		return "server_error", ""
	default:
		return "invalid_request_error", ""
	}
}

func anthropicErrorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status == 529:
		return "overloaded_error"
	case status >= 500:
		return "api_error"
	default:
		return "invalid_request_error"
	}
}

func geminiErrorStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusConflict:
		return "ABORTED"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case 499:
		return "CANCELLED"
	case http.StatusNotImplemented:
		return "UNIMPLEMENTED"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "DEADLINE_EXCEEDED"
	}
	if status >= 500 {
		return "INTERNAL"
	}
	return "FAILED_PRECONDITION"
}
