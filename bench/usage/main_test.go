package main

import (
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/usage"
)

// The load is what the ledger gets from the edge's Envoy (docs/USAGE.md): every field the
// record is built from is where the ledger reads it.
func TestEntryIsAFullRecord(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r := usage.RecordFromEntry("hk", entry("req-1", at))
	want := usage.Record{
		Time: at, Region: "hk", Route: "openai", Caller: "alice", Tenant: "team-a", Upstream: "openai",
		RequestedModel: "gpt-4o", ReportedModel: "gpt-4o-2024-08-06", Status: 200,
		InputTokens: 1000, OutputTokens: 100, CachedTokens: 200, Extraction: usage.ExtractionOK, RequestID: "req-1",
		Duration: 812 * time.Millisecond, TTFB: 121 * time.Millisecond, RequestBytes: 500, ResponseBytes: 760, Attempts: 1,
	}
	if r != want {
		t.Errorf("record\n got %+v\nwant %+v", r, want)
	}
}
