package e2e

// The usage ledger over Envoy's gRPC Access Log Service, with the real control plane
// binary: a Go ALS client stands in for the regions' Envoys (the Envoy side of the
// contract in docs/USAGE.md lands separately) and streams entries over the xDS unix
// socket; the ledger keeps one record per request id and /usage and `llmedge usage`
// report what was sent.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aidatav3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/wire"
)

type alsRequest struct {
	id, caller, tenant, upstream, model string
	in, out, cached                     uint64
}

func alsEntry(t *testing.T, r alsRequest) *accesslogdatav3.HTTPAccessLogEntry {
	t.Helper()
	anyOf := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	structOf := func(m map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			StartTime:                   timestamppb.Now(),
			Duration:                    durationpb.New(800 * time.Millisecond),
			TimeToFirstDownstreamTxByte: durationpb.New(120 * time.Millisecond),
			RouteName:                   "openai",
			UpstreamRequestAttemptCount: 1,
			Metadata: &corev3.Metadata{
				FilterMetadata: map[string]*structpb.Struct{
					wire.MetadataNamespace:        structOf(map[string]any{wire.MetadataCaller: r.caller, wire.MetadataTenant: r.tenant, wire.MetadataUpstream: r.upstream}),
					wire.RequestMetadataNamespace: structOf(map[string]any{wire.RequestMetadataModel: r.model, wire.RequestMetadataStream: true}),
				},
				TypedFilterMetadata: map[string]*anypb.Any{
					wire.TokenUsageNamespace: anyOf(&aidatav3.TokenUsage{
						Model: r.model, InputTokens: wrapperspb.UInt64(r.in), OutputTokens: wrapperspb.UInt64(r.out),
						InputTokenDetails: &aidatav3.InputTokenDetails{CachedTokens: wrapperspb.UInt64(r.cached)},
						ExtractionStatus:  aidatav3.TokenUsage_COMPLETE,
					}),
				},
			},
			FilterStateObjects: map[string]*anypb.Any{wire.RequestIDState: anyOf(wrapperspb.String(r.id))},
		},
		Request:  &accesslogdatav3.HTTPRequestProperties{RequestHeadersBytes: 200, RequestBodyBytes: 300},
		Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200), ResponseBodyBytes: 700},
	}
}

// streamEntries sends entries over one ALS stream as an Envoy of region would.
func streamEntries(t *testing.T, conn *grpc.ClientConn, region string, entries []*accesslogdatav3.HTTPAccessLogEntry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	stream, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(entries); i += 3 { // several messages; the identifier on the first only
		msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries[i:min(i+3, len(entries))]},
		}}
		if i == 0 {
			msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{
				Node:    &corev3.Node{Id: "envoy-" + region, Cluster: "llmedge", Locality: &corev3.Locality{Region: region}},
				LogName: wire.AccessLogName,
			}
		}
		if err := stream.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
}

// alsControlPlane is a control plane with no Envoy: the test streams access-log entries to
// its ALS (on the xDS socket) as the regions' Envoys would.
type alsControlPlane struct {
	base  string // its HTTP API, e.g. http://127.0.0.1:18080
	state string // its --state-dir
	conn  *grpc.ClientConn
}

// startALSControlPlane runs a control plane for regions hk and sg serving openai, with one
// usage price row (a flow mapping) and more command-line args, and returns once it is ready.
func startALSControlPlane(t *testing.T, price string, args ...string) alsControlPlane {
	t.Helper()
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(run, "xds.sock")
	routes := filepath.Join(dir, "routes.yaml")
	doc := fmt.Sprintf(`version: 1
regions:
  hk: {listen: 127.0.0.1:%d, extauthz: 127.0.0.1:%d, upstreams: [openai]}
  sg: {listen: 127.0.0.1:%d, extauthz: 127.0.0.1:%d, upstreams: [openai]}
upstreams:
  openai: {url: https://api.openai.com, allowed_regions: [hk, sg]}
routes:
  openai: {match: {prefix: /v1/}, upstream: openai}
usage:
  prices:
    - %s
`, testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), price)
	if err := os.WriteFile(routes, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := alsControlPlane{state: filepath.Join(dir, "state")}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cp.base = "http://" + httpAddr
	testenv.Start(t, "controlplane", exec.Command(llmedgeBin, append([]string{"controlplane",
		"--config", routes, "--xds-listen", "unix:" + sock, "--http-listen", httpAddr,
		"--state-dir", cp.state}, args...)...))
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(cp.base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cp.conn = conn
	return cp
}

func TestUsageLedgerOverALS(t *testing.T) {
	cp := startALSControlPlane(t, "{upstream: openai, model: gpt-4o, input: 2.5, output: 10, cached: 1.25, currency: USD}", "--log-level", "debug")
	base, conn := cp.base, cp.conn

	var hk, sg []*accesslogdatav3.HTTPAccessLogEntry
	type key struct{ caller, model string }
	want := map[key]usage.Total{}
	add := func(r alsRequest, region string) {
		e := alsEntry(t, r)
		if region == "hk" {
			hk = append(hk, e)
		} else {
			sg = append(sg, e)
		}
		k := key{r.caller, r.model}
		w := want[k]
		w.Requests++
		w.InputTokens += int64(r.in)
		w.OutputTokens += int64(r.out)
		w.CachedTokens += int64(r.cached)
		want[k] = w
	}
	for i := range 20 {
		add(alsRequest{id: fmt.Sprint("hk-", i), caller: "alice", tenant: "team-a", upstream: "openai", model: "gpt-4o", in: 1000, out: 100, cached: 200}, "hk")
	}
	for i := range 7 {
		add(alsRequest{id: fmt.Sprint("sg-", i), caller: "bob", tenant: "team-b", upstream: "openai", model: "o9-unpriced", in: 10, out: 5}, "sg")
	}
	// Some entries delivered twice: inside the same stream, and by a second stream (an
	// Envoy reconnecting and resending).
	hkAgain := append(append([]*accesslogdatav3.HTTPAccessLogEntry{}, hk...), hk[:5]...)
	streamEntries(t, conn, "hk", hkAgain)
	streamEntries(t, conn, "sg", sg)
	streamEntries(t, conn, "hk", hk[10:15])

	var rep usage.Report
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		body := get(t, base+"/usage?since=1h&by=caller,model&format=json")
		rep = usage.Report{}
		if err := json.Unmarshal([]byte(body), &rep); err != nil {
			return fmt.Errorf("%v: %s", err, body)
		}
		var n int64
		for _, x := range rep.Totals {
			n += x.Requests
		}
		if n != 27 {
			return fmt.Errorf("%d requests in /usage, want 27", n)
		}
		return nil
	})
	if len(rep.Totals) != len(want) {
		t.Fatalf("groups %+v, want %d", rep.Totals, len(want))
	}
	for _, got := range rep.Totals {
		w, ok := want[key{got.Group["caller"], got.Group["model"]}]
		if !ok {
			t.Errorf("unexpected group %v", got.Group)
			continue
		}
		if got.Requests != w.Requests || got.InputTokens != w.InputTokens || got.OutputTokens != w.OutputTokens || got.CachedTokens != w.CachedTokens {
			t.Errorf("group %v: %+v, want %+v", got.Group, got, w)
		}
		switch got.Group["model"] {
		case "gpt-4o": // per request: 800 input at 2.5, 200 cached at 1.25, 100 output at 10 (per million)
			if wantCost := 20 * (800*2.5 + 200*1.25 + 100*10) / 1e6; got.Currency != "USD" || fmt.Sprintf("%.9f", got.Cost) != fmt.Sprintf("%.9f", wantCost) {
				t.Errorf("gpt-4o cost %v %s, want %v USD", got.Cost, got.Currency, wantCost)
			}
		default:
			if got.PriceMissing != 7 || got.Currency != "" {
				t.Errorf("unpriced model: %+v", got)
			}
		}
	}

	// The CLI reads the same endpoint.
	out, err := exec.Command(llmedgeBin, "usage", "--url", base, "--since", "1h", "--by", "region,tenant", "--csv").CombinedOutput()
	if err != nil {
		t.Fatalf("llmedge usage: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "hk,team-a,20,20000,2000,4000,") || !strings.Contains(string(out), "sg,team-b,7,70,35,0,") {
		t.Errorf("llmedge usage --csv:\n%s", out)
	}
	month := time.Now().UTC().Format("2006-01")
	out, err = exec.Command(llmedgeBin, "usage", "export", "--url", base, "--month", month, "--tenant", "team-b").CombinedOutput()
	if err != nil {
		t.Fatalf("llmedge usage export: %v\n%s", err, out)
	}
	if lines := strings.Count(strings.TrimSpace(string(out)), "\n"); lines != 7 || !strings.Contains(string(out), "sg-3,team-b,bob,sg,openai,openai,o9-unpriced,o9-unpriced,true,200,10,5,0,0,ok,,,true") {
		t.Errorf("export for team-b (%d rows):\n%s", lines, out)
	}
	metrics := get(t, base+"/metrics")
	if !strings.Contains(metrics, `llmedge_usage_requests_total{caller="alice",model="gpt-4o",region="hk",status_class="2xx",upstream="openai"} 20`) {
		t.Errorf("metrics lack alice's 20 requests:\n%s", grepLines(metrics, "llmedge_usage_requests_total"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestUsageDisabled: with `usage: {enabled: false}` the Envoy a region runs has no usage log
// (so no request's record leaves it), and quotas, which read the same request facts, still
// hold.
func TestUsageDisabled(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(2, 1000)+"usage:\n  enabled: false\n", "hk")
	for i := 1; i <= 3; i++ {
		resp := s.models(t, "hk", "alice")
		body := readAll(resp)
		want := http.StatusOK
		if i == 3 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Fatalf("alice request %d: status %d, want %d: %s", i, resp.StatusCode, want, body)
		}
	}
	// The listeners Envoy runs (the dump's other sections list every extension the binary has).
	_, listeners := s.envoys["hk"].AdminGet(t, "/config_dump?resource=dynamic_listeners")
	if l := string(listeners); !strings.Contains(l, "ingress_hk") || !strings.Contains(l, "envoy.access_loggers.stdout") {
		t.Fatalf("no region listener with its access log in the dump: nothing to check\n%.2000s", l)
	} else if strings.Contains(l, "envoy.access_loggers.http_grpc") {
		t.Error("with usage disabled, Envoy's listener still has the gRPC usage log")
	}
	_, stats := s.envoys["hk"].AdminGet(t, "/stats?filter=grpc_access_log")
	if strings.Contains(string(stats), "logs_written") {
		t.Errorf("Envoy wrote usage log entries with usage disabled:\n%s", stats)
	}
}
