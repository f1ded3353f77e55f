// Package usage is the control plane's usage ledger: it receives one gRPC access log entry
// per request from every region's Envoys (Envoy's Access Log Service, on the xDS server),
// turns each into a Record, prices it, and writes it to a Store (SQLite or PostgreSQL) off
// the receive path, spooling to disk while the store is slow or down. It also answers the
// /usage queries and keeps the per-record Prometheus metrics. Each new record is also one
// JSON line in the access log files (masked, rotated, deleted past retention).
//
// Flow: Envoy ALS -> Service (als.go; entries read off the wire, entrywire.go) -> Record
// -> Ledger.Add (bounded channel) -> batches -> Store, or Spool when the store fails ->
// replayed in order; and
// Ledger.Add's record -> Line -> AccessLog.Add (bounded channel) -> files.
// docs/USAGE.md is the contract with the Envoy side.
package usage

import (
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aidatav3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Extraction says how far the token counts of a record can be trusted.
type Extraction string

const (
	ExtractionOK      Extraction = "ok"      // Envoy extracted the provider's usage completely
	ExtractionMissing Extraction = "missing" // an AI request, but no usage arrived (e.g. an OpenAI stream without include_usage)
	ExtractionPartial Extraction = "partial" // the stream ended early or lacked some counts
	ExtractionFailed  Extraction = "failed"  // the response could not be parsed
	ExtractionNotAI   Extraction = "not_ai"  // no model was requested: not an LLM call (or refused before)
)

// Record is one request in the ledger.
type Record struct {
	Time           time.Time     `json:"time"`
	Region         string        `json:"region"`
	Route          string        `json:"route"`
	Upstream       string        `json:"upstream"`
	Caller         string        `json:"caller"`
	Tenant         string        `json:"tenant"`
	RequestedModel string        `json:"requested_model"`
	ReportedModel  string        `json:"reported_model"`
	Stream         bool          `json:"stream"`
	Status         int           `json:"status"`
	Duration       time.Duration `json:"duration_ns"`
	TTFB           time.Duration `json:"ttfb_ns"`
	InputTokens    int64         `json:"input_tokens"`
	OutputTokens   int64         `json:"output_tokens"`
	CachedTokens   int64         `json:"cached_tokens"`
	ReasoningTok   int64         `json:"reasoning_tokens"`
	Extraction     Extraction    `json:"extraction"`
	RequestBytes   int64         `json:"request_bytes"`
	ResponseBytes  int64         `json:"response_bytes"`
	Attempts       int           `json:"attempts"` // upstream attempts; retries = attempts-1
	RequestID      string        `json:"request_id"`
	// Cost is nil when the price table has no entry for the upstream and model
	// (PriceMissing), never a guess.
	Cost         *float64 `json:"cost"`
	Currency     string   `json:"currency,omitempty"`
	PriceMissing bool     `json:"price_missing"`
}

// Model is the model a record is grouped and priced under: the one the caller asked for,
// or the provider's when the request named none (Gemini names it in the path).
func (r Record) Model() string {
	if r.RequestedModel != "" {
		return r.RequestedModel
	}
	return r.ReportedModel
}

// RecordFromEntry reads one HTTP access log entry as docs/USAGE.md describes. region comes
// from the stream's identifier node, not from the entry: a caller cannot choose it. The
// service reads entries from the wire (entrywire.go); this is for callers holding one.
func RecordFromEntry(region string, e *accesslogdatav3.HTTPAccessLogEntry) Record {
	x := entryOf(e)
	return x.record(region)
}

// entryOf is e as the service would have read it off the wire.
func entryOf(e *accesslogdatav3.HTTPAccessLogEntry) *logEntry {
	var x logEntry
	if b, err := proto.Marshal(e); err == nil {
		_ = x.decode(b) // protobuf-go's own encoding
	}
	return &x
}

// record is the entry's Record.
func (e *logEntry) record(region string) Record {
	r := Record{
		Region:        region,
		Route:         e.route,
		Duration:      e.duration.value(),
		TTFB:          e.ttfb.value(),
		Status:        int(e.status),
		RequestBytes:  int64(e.requestHeaders + e.requestBody),
		ResponseBytes: int64(e.responseHeaders + e.responseBody),
		Attempts:      int(e.attempts),
		Caller:        clip(strings.TrimSpace(e.caller)),
		Tenant:        clip(strings.TrimSpace(e.tenant)),
		Upstream:      clip(strings.TrimSpace(e.upstream)),
	}
	if e.start != nil {
		r.Time = e.start.AsTime().UTC()
	}
	r.RequestedModel = clip(strings.TrimSpace(e.model.str()))
	stream, streamSet := e.stream.boolean()
	r.Stream = stream
	if e.info != nil {
		var info aidatav3.RequestInfo
		if e.info.UnmarshalTo(&info) == nil {
			if r.RequestedModel == "" {
				r.RequestedModel = clip(info.GetModel())
			}
			if !streamSet && info.GetStream() != nil {
				r.Stream = info.GetStream().GetValue()
			}
		}
	}
	// Gemini names a stream in its path, never in the body the Envoy side reads the flag
	// from (and a regex rewrite there can only copy text out of the path, never write a
	// flag): the path the entry carries decides for it.
	r.Stream = r.Stream || geminiStreamPath(e.path)

	r.Extraction = ExtractionNotAI
	if r.RequestedModel != "" {
		r.Extraction = ExtractionMissing
	}
	if e.usage != nil {
		var u aidatav3.TokenUsage
		if err := e.usage.UnmarshalTo(&u); err != nil {
			r.Extraction = ExtractionFailed
		} else {
			r.ReportedModel = clip(u.GetModel())
			r.InputTokens = u64(u.GetInputTokens())
			r.OutputTokens = u64(u.GetOutputTokens())
			r.CachedTokens = u64(u.GetInputTokenDetails().GetCachedTokens())
			r.ReasoningTok = u64(u.GetOutputTokenDetails().GetReasoningTokens())
			switch u.GetExtractionStatus() {
			case aidatav3.TokenUsage_COMPLETE:
				r.Extraction = ExtractionOK
			case aidatav3.TokenUsage_FAILED:
				r.Extraction = ExtractionFailed
			default:
				r.Extraction = ExtractionPartial
			}
		}
	}

	r.RequestID = filterStateString(e.stateRequestID)
	if r.RequestID == "" {
		r.RequestID = e.requestID
	}
	if r.RequestID == "" {
		r.RequestID = e.headerRequestID
	}
	r.RequestID = clip(r.RequestID)
	return r
}

// geminiStreamPath reports whether path (query and all) calls Gemini's
// streamGenerateContent: /v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse,
// also with the colon percent-encoded.
func geminiStreamPath(path string) bool {
	path, _, _ = strings.Cut(path, "?")
	if p, err := url.PathUnescape(path); err == nil {
		path = p
	}
	seg := path[strings.LastIndexByte(path, '/')+1:]
	i := strings.LastIndexByte(seg, ':')
	return i > 0 && strings.Contains(path, "/models/") && strings.EqualFold(seg[i+1:], "streamGenerateContent")
}

// maxField bounds the strings a record keeps: the model comes from the caller's body.
const maxField = 256

func clip(s string) string {
	if len(s) <= maxField {
		return s
	}
	s = s[:maxField]
	for !utf8.ValidString(s) { // do not cut a character in half
		s = s[:len(s)-1]
	}
	return s
}

// boolean reads a JSON boolean (json_to_metadata keeps its type) or its string form.
func (v value) boolean() (b, set bool) {
	switch v.kind {
	case valueBool:
		return v.b, true
	case valueString:
		return v.s == "true", true
	}
	return false, false
}

func u64(v *wrapperspb.UInt64Value) int64 {
	if v == nil || v.GetValue() > 1<<62 {
		return 0
	}
	return int64(v.GetValue())
}

// filterStateString reads an envoy.string filter state object, which Envoy serialises as a
// google.protobuf.StringValue.
func filterStateString(a *anypb.Any) string {
	if a == nil {
		return ""
	}
	var s wrapperspb.StringValue
	if a.UnmarshalTo(&s) != nil {
		return ""
	}
	return s.GetValue()
}
