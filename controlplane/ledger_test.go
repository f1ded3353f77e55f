package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/internal/wire"
)

func TestUsageLedgerOffWithoutStateDir(t *testing.T) {
	c := start(t, routesYAML)
	code, body := c.get(t, "/usage")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "--state-dir") {
		t.Errorf("/usage without a ledger: %d %s", code, body)
	}
}

// sendUsage streams one entry per id as an Envoy of region hk would.
func sendUsage(t *testing.T, c *cp, model string, ids ...string) {
	t.Helper()
	conn := dialADS(t, c.m.XDSAddr())
	stream, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var entries []*accesslogdatav3.HTTPAccessLogEntry
	for _, id := range ids {
		authz, _ := structpb.NewStruct(map[string]any{wire.MetadataCaller: "alice", wire.MetadataUpstream: "openai"})
		req, _ := structpb.NewStruct(map[string]any{wire.RequestMetadataModel: model})
		rid, _ := anypb.New(wrapperspb.String(id))
		entries = append(entries, &accesslogdatav3.HTTPAccessLogEntry{
			CommonProperties: &accesslogdatav3.AccessLogCommon{
				Metadata:           &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.MetadataNamespace: authz, wire.RequestMetadataNamespace: req}},
				FilterStateObjects: map[string]*anypb.Any{wire.RequestIDState: rid},
			},
			Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
		})
	}
	if err := stream.Send(&accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "e1", Locality: &corev3.Locality{Region: "hk"}}, LogName: wire.AccessLogName},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
}

func TestUsageLedgerPricesFollowEdits(t *testing.T) {
	c := startWith(t, routesYAML, func(o *Options) { o.StateDir = t.TempDir() })
	// The store opens beside the serving loop: /usage may answer 503 for a moment.
	totals := func() map[string]usage.Total {
		code, body := c.get(t, "/usage?by=model")
		var rep usage.Report
		if code != http.StatusOK || json.Unmarshal(body, &rep) != nil {
			return map[string]usage.Total{"error": {Group: map[string]string{"body": string(body)}}}
		}
		out := map[string]usage.Total{}
		for _, x := range rep.Totals {
			out[x.Group["model"]+"/"+x.Currency] = x
		}
		return out
	}
	sendUsage(t, c, "m1", "a", "b")
	eventually(t, waitFor, func() error {
		if got := totals()["m1/"]; got.Requests != 2 || got.PriceMissing != 2 {
			return fmt.Errorf("unpriced m1: %+v", got)
		}
		return nil
	})
	// A price added by an edit applies to the next records; a changed store waits for a
	// restart and says so.
	c.write(t, routesYAML+`usage:
  retention_days: 30
  prices:
    - {upstream: openai, model: m1, input: 1, output: 1, currency: EUR}
`)
	eventually(t, waitFor, func() error {
		if !strings.Contains(c.logs.String(), "restart the control plane to apply it") {
			return fmt.Errorf("no restart warning yet")
		}
		return nil
	})
	sendUsage(t, c, "m1", "c")
	eventually(t, waitFor, func() error {
		if got := totals()["m1/EUR"]; got.Requests != 1 {
			return fmt.Errorf("priced m1: %+v", totals())
		}
		return nil
	})
}
