package usage

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aidatav3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/internal/wire"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustStruct(t testing.TB, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// entry builds what the Envoy side sends for one request (docs/USAGE.md).
type entry struct {
	id, caller, tenant, upstream, model string
	stream                              any // bool, string or nil
	usage                               *aidatav3.TokenUsage
	info                                *aidatav3.RequestInfo
	status                              uint32
	idInHeader                          bool
	path                                string
}

func (x entry) build(t testing.TB) *accesslogdatav3.HTTPAccessLogEntry {
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}, TypedFilterMetadata: map[string]*anypb.Any{}}
	if x.caller != "" {
		md.FilterMetadata[wire.MetadataNamespace] = mustStruct(t, map[string]any{
			wire.MetadataCaller: x.caller, wire.MetadataTenant: x.tenant, wire.MetadataUpstream: x.upstream})
	}
	req := map[string]any{}
	if x.model != "" {
		req[wire.RequestMetadataModel] = x.model
	}
	if x.stream != nil {
		req[wire.RequestMetadataStream] = x.stream
	}
	md.FilterMetadata[wire.RequestMetadataNamespace] = mustStruct(t, req)
	if x.usage != nil {
		md.TypedFilterMetadata[wire.TokenUsageNamespace] = mustAny(t, x.usage)
	}
	if x.info != nil {
		md.TypedFilterMetadata[wire.RequestInfoNamespace] = mustAny(t, x.info)
	}
	e := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			StartTime:                   timestamppb.New(t0),
			Duration:                    durationpb.New(1500 * time.Millisecond),
			TimeToFirstDownstreamTxByte: durationpb.New(300 * time.Millisecond),
			RouteName:                   "chat",
			UpstreamRequestAttemptCount: 2,
			Metadata:                    md,
			FilterStateObjects:          map[string]*anypb.Any{},
		},
		Request:  &accesslogdatav3.HTTPRequestProperties{RequestHeadersBytes: 100, RequestBodyBytes: 200, Path: x.path},
		Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(x.status), ResponseHeadersBytes: 50, ResponseBodyBytes: 950},
	}
	if x.idInHeader {
		e.Request.RequestHeaders = map[string]string{"x-request-id": x.id}
	} else if x.id != "" {
		e.CommonProperties.FilterStateObjects[wire.RequestIDState] = mustAny(t, wrapperspb.String(x.id))
	}
	return e
}

func tokenUsage(in, out, cached, reasoning uint64, status aidatav3.TokenUsage_ExtractionStatus) *aidatav3.TokenUsage {
	return &aidatav3.TokenUsage{
		Model: "gpt-4o-2024-08-06", InputTokens: wrapperspb.UInt64(in), OutputTokens: wrapperspb.UInt64(out),
		TotalTokens:        wrapperspb.UInt64(in + out),
		InputTokenDetails:  &aidatav3.InputTokenDetails{CachedTokens: wrapperspb.UInt64(cached)},
		OutputTokenDetails: &aidatav3.OutputTokenDetails{ReasoningTokens: wrapperspb.UInt64(reasoning)},
		ExtractionStatus:   status,
	}
}

func TestRecordFromEntry(t *testing.T) {
	base := Record{
		Time: t0, Region: "hk", Route: "chat", Status: 200, Duration: 1500 * time.Millisecond, TTFB: 300 * time.Millisecond,
		RequestBytes: 300, ResponseBytes: 1000, Attempts: 2,
	}
	with := func(f func(*Record)) Record { r := base; f(&r); return r }
	tests := []struct {
		name string
		in   entry
		want Record
	}{
		{"complete usage", entry{id: "r1", caller: "alice", tenant: "team-a", upstream: "openai", model: "gpt-4o", stream: true, status: 200,
			usage: tokenUsage(120, 30, 100, 7, aidatav3.TokenUsage_COMPLETE)},
			with(func(r *Record) {
				r.RequestID, r.Caller, r.Tenant, r.Upstream, r.RequestedModel, r.ReportedModel = "r1", "alice", "team-a", "openai", "gpt-4o", "gpt-4o-2024-08-06"
				r.Stream, r.InputTokens, r.OutputTokens, r.CachedTokens, r.ReasoningTok, r.Extraction = true, 120, 30, 100, 7, ExtractionOK
			})},
		{"partial usage", entry{id: "r2", caller: "alice", model: "gpt-4o", status: 200, usage: tokenUsage(5, 0, 0, 0, aidatav3.TokenUsage_PARTIAL)},
			with(func(r *Record) {
				r.RequestID, r.Caller, r.RequestedModel, r.ReportedModel = "r2", "alice", "gpt-4o", "gpt-4o-2024-08-06"
				r.InputTokens, r.Extraction = 5, ExtractionPartial
			})},
		{"failed extraction", entry{id: "r3", model: "gpt-4o", status: 200, usage: &aidatav3.TokenUsage{ExtractionStatus: aidatav3.TokenUsage_FAILED}},
			with(func(r *Record) { r.RequestID, r.RequestedModel, r.Extraction = "r3", "gpt-4o", ExtractionFailed })},
		{"usage missing (stream without include_usage)", entry{id: "r4", model: "gpt-4o", stream: "true", status: 200},
			with(func(r *Record) {
				r.RequestID, r.RequestedModel, r.Stream, r.Extraction = "r4", "gpt-4o", true, ExtractionMissing
			})},
		{"not an AI call", entry{id: "r5", status: 401},
			with(func(r *Record) { r.RequestID, r.Status, r.Extraction = "r5", 401, ExtractionNotAI })},
		{"request_info fallback for model and stream", entry{id: "r6", status: 200,
			info: &aidatav3.RequestInfo{Model: "gemini-2.5-flash", Stream: wrapperspb.Bool(true)}},
			with(func(r *Record) {
				r.RequestID, r.RequestedModel, r.Stream, r.Extraction = "r6", "gemini-2.5-flash", true, ExtractionMissing
			})},
		{"json_to_metadata wins over request_info", entry{id: "r7", model: "a", stream: false, status: 200,
			info: &aidatav3.RequestInfo{Model: "b", Stream: wrapperspb.Bool(true)}},
			with(func(r *Record) { r.RequestID, r.RequestedModel, r.Extraction = "r7", "a", ExtractionMissing })},
		{"gemini stream: the path says so, the body cannot", entry{id: "g1", model: "gemini-2.5-flash", stream: false, status: 200,
			path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"},
			with(func(r *Record) {
				r.RequestID, r.RequestedModel, r.Stream, r.Extraction = "g1", "gemini-2.5-flash", true, ExtractionMissing
			})},
		{"gemini stream, colon percent-encoded", entry{id: "g2", model: "gemini-x", stream: false, status: 200,
			path: "/gemini/v1/models/gemini-x%3AstreamGenerateContent"},
			with(func(r *Record) {
				r.RequestID, r.RequestedModel, r.Stream, r.Extraction = "g2", "gemini-x", true, ExtractionMissing
			})},
		{"gemini generateContent is no stream, whatever the query says", entry{id: "g3", model: "gemini-x", stream: false, status: 200,
			path: "/v1beta/models/gemini-x:generateContent?x=/models/a:streamGenerateContent"},
			with(func(r *Record) { r.RequestID, r.RequestedModel, r.Extraction = "g3", "gemini-x", ExtractionMissing })},
		{"request id from the header", entry{id: "h1", idInHeader: true, status: 200},
			with(func(r *Record) { r.RequestID, r.Extraction = "h1", ExtractionNotAI })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RecordFromEntry("hk", tc.in.build(t))
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("record (-want +got):\n%s", d)
			}
		})
	}
}

func TestRecordFromEntryBadTypedMetadata(t *testing.T) {
	e := entry{id: "x", model: "m", status: 200}.build(t)
	// A TokenUsage namespace holding some other message: the record says so, no panic.
	e.CommonProperties.Metadata.TypedFilterMetadata[wire.TokenUsageNamespace] = mustAny(t, wrapperspb.String("junk"))
	if got := RecordFromEntry("hk", e); got.Extraction != ExtractionFailed {
		t.Errorf("extraction = %q, want failed", got.Extraction)
	}
	if got := RecordFromEntry("hk", &accesslogdatav3.HTTPAccessLogEntry{}); got.Extraction != ExtractionNotAI || !got.Time.IsZero() {
		t.Errorf("empty entry: %+v", got)
	}
}
