package usage

import (
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aidatav3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/internal/wire"
)

// fullEntry is an entry like Envoy's, with every field the ledger and the access log read.
func fullEntry(t *testing.T) *accesslogdatav3.HTTPAccessLogEntry {
	e := entry{id: "r1", caller: "alice", tenant: "team-a", upstream: "openai", model: "gpt-4o", stream: true, status: 200,
		usage: tokenUsage(120, 30, 100, 7, aidatav3.TokenUsage_COMPLETE), path: "/openai/v1/chat/completions?key=x"}.build(t)
	c := e.CommonProperties
	c.DownstreamRemoteAddress = sockAddr("203.0.113.7", 0)
	c.DownstreamDirectRemoteAddress = sockAddr("10.0.0.2", 41000)
	c.UpstreamRemoteAddress = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/fake.sock"}}}
	c.UpstreamCluster = "upstream_openai"
	c.ResponseFlags = &accesslogdatav3.ResponseFlags{UpstreamRetryLimitExceeded: true, NoHealthyUpstream: true,
		UnauthorizedDetails: &accesslogdatav3.ResponseFlags_Unauthorized{}}
	c.TimeToLastRxByte = c.Duration // fields the ledger skips
	c.UpstreamLocalAddress = sockAddr("127.0.0.1", 5)
	c.CustomTags = map[string]string{"a": "b"}
	c.Metadata.FilterMetadata["envoy.other"] = mustStruct(t, map[string]any{"caller": "mallory"})
	e.Request.RequestMethod = corev3.RequestMethod_POST
	e.Request.UserAgent = "openai-python/1.0"
	e.Request.Authority = "api.example.com"
	e.Response.ResponseCodeDetails = "via_upstream"
	e.Response.ResponseHeaders = map[string]string{"x-request-id": "not-this"}
	return e
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func TestLineFromTheWire(t *testing.T) {
	e := fullEntry(t)
	r := RecordFromEntry("hk", e)
	got := LineFromEntry(r, e)
	want := Line{Record: r, Method: "POST", Path: "/openai/v1/chat/completions", UserAgent: "openai-python/1.0",
		ClientAddress: "203.0.113.7", PeerAddress: "10.0.0.2:41000", ResponseFlags: []string{"UH", "UAEX", "URX"},
		ResponseDetails: "via_upstream", UpstreamHost: "unix:/run/fake.sock", UpstreamCluster: "upstream_openai"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("line (-want +got):\n%s", d)
	}
	if r.Caller != "alice" || r.RequestID != "r1" || r.InputTokens != 120 || r.Route != "chat" {
		t.Errorf("record %+v", r)
	}
}

// Two encodings of a message one after the other are one message merged (the protobuf
// rule): the last value of a field, the last entry of a map key, the last member of a
// oneof. Reading the concatenation must give what protobuf-go's merge gives.
func TestWireMergesLikeProtobuf(t *testing.T) {
	a := fullEntry(t)
	b := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			RouteName: "chat-2",
			// The same namespace again replaces the first's fields: tenant is gone.
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				wire.MetadataNamespace: mustStruct(t, map[string]any{wire.MetadataCaller: "bob", wire.MetadataUpstream: 7}),
			}},
			DownstreamRemoteAddress: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/x"}}},
			UpstreamRemoteAddress:   sockAddr("192.0.2.1", 443),
			ResponseFlags:           &accesslogdatav3.ResponseFlags{UpstreamOverflow: true},
		},
		Request:  &accesslogdatav3.HTTPRequestProperties{RequestBodyBytes: 999, RequestHeaders: map[string]string{"x-request-id": "h"}},
		Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(503)},
	}
	ab, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	both := slices.Concat(ab, bb)
	merged := &accesslogdatav3.HTTPAccessLogEntry{}
	if err := proto.Unmarshal(both, merged); err != nil {
		t.Fatal(err)
	}
	var direct logEntry
	if err := direct.decode(both); err != nil {
		t.Fatal(err)
	}
	want := RecordFromEntry("hk", merged)
	if got := direct.record("hk"); !cmp.Equal(want, got) {
		t.Errorf("record of the concatenation (-protobuf +wire):\n%s", cmp.Diff(want, got))
	}
	if want.Caller != "bob" || want.Tenant != "" || want.Upstream != "" || want.Status != 503 || want.Route != "chat-2" {
		t.Errorf("protobuf-go merged differently than this test expects: %+v", want)
	}
	wantLine, gotLine := LineFromEntry(want, merged), direct.line(want)
	if d := cmp.Diff(wantLine, gotLine); d != "" {
		t.Errorf("line of the concatenation (-protobuf +wire):\n%s", d)
	}
	if wantLine.ClientAddress != "unix:/x" || wantLine.UpstreamHost != "192.0.2.1:443" || !slices.Contains(wantLine.ResponseFlags, "UO") {
		t.Errorf("protobuf-go merged the line differently than this test expects: %+v", wantLine)
	}
}

func TestDecodeLogs(t *testing.T) {
	e1, e2 := fullEntry(t), entry{id: "r2", status: 404}.build(t)
	msg := &accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "e1", Locality: &corev3.Locality{Region: "sg"}}, LogName: wire.AccessLogName},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{e1, e2}}},
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var m rawLogs
	if err := m.DecodeWire(b); err != nil {
		t.Fatal(err)
	}
	if m.id.GetNode().GetLocality().GetRegion() != "sg" || len(m.entries) != 2 {
		t.Fatalf("identifier %v, %d entries; want region sg and 2", m.id, len(m.entries))
	}
	if got := m.entries[1].record("sg"); got.RequestID != "r2" || got.Status != 404 {
		t.Errorf("second entry: %+v", got)
	}
	// The next message on the stream: no identifier, and the entries are its own.
	next, _ := proto.Marshal(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{e2}}}})
	if err := m.DecodeWire(next); err != nil || m.id != nil || len(m.entries) != 1 {
		t.Errorf("second message: err %v, identifier %v, %d entries; want none and 1", err, m.id, len(m.entries))
	}
	// TCP entries (the oneof's other member) are none of the ledger's.
	tcp, _ := proto.Marshal(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &accesslogv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*accesslogdatav3.TCPAccessLogEntry{{}}}}})
	if err := m.DecodeWire(slices.Concat(next, tcp)); err != nil || len(m.entries) != 0 {
		t.Errorf("HTTP then TCP entries: err %v, %d entries; want 0", err, len(m.entries))
	}
	// Every truncation of a message is refused, never read as a shorter one.
	for n := 1; n < len(b); n++ {
		var m rawLogs
		if err := m.DecodeWire(b[:n]); err == nil && proto.Unmarshal(b[:n], &accesslogv3.StreamAccessLogsMessage{}) != nil {
			t.Fatalf("%d of %d bytes decoded without an error, which protobuf-go refuses", n, len(b))
		}
	}
}
