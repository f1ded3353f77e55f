package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

const importRegion = `
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
callers:
  importer:
    tokens: [{{.Digest "importer"}}]
    upstreams: [openai]
    tenant: team-import
usage:
  envoy_access_log: true
  prices:
    - {upstream: openai, model: before-0, input: 2.5, output: 10, currency: USD}
    - {upstream: openai, model: during-0, input: 2.5, output: 10, currency: USD}
`

// TestUsageImportAfterControlPlaneOutage: Envoy's gRPC usage log has no acknowledgements,
// so the entries in flight when the control plane dies are lost, and those requests are in
// Envoy's own access log only. `llmedge usage import` adds exactly those from Envoy's log
// (the ones the ledger holds already are skipped, and a second import adds nothing), and a
// record rebuilt from Envoy's line is the record the ledger built from the gRPC log, field
// for field.
func TestUsageImportAfterControlPlaneOutage(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), importRegion, "hk")
	withLedger(t, s)
	stateDir := filepath.Join(s.dir, "state", "controlplane")
	url := s.edgeURL("hk", "/openai/v1/chat/completions")
	send := func(model string, stream bool) {
		t.Helper()
		body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
		if stream {
			body = `{"model":"` + model + `","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
		}
		resp, b := post(t, url, body, map[string]string{"authorization": "Bearer " + s.tokens["importer"], "x-fake-chunk-interval": "0s"})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", model, resp.StatusCode, b)
		}
	}
	for i := range 4 {
		send(fmt.Sprintf("before-%d", i), i%2 == 1)
	}
	ledgerRows(t, s, "team-import", 4)

	// The control plane frozen, then killed: the region serves on, and Envoy sends the
	// usage entries of those requests into a stream no one reads any more. (A restart or a
	// crash under load loses the entries in flight the same way.)
	flushed := func() int { return s.envoyStat(t, "access_logs.grpc_access_log.grpc_entries_flushed") }
	before := flushed()
	if err := syscall.Kill(s.cp.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		send(fmt.Sprintf("during-%d", i), i%2 == 1)
	}
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := flushed() - before; n < 6 {
			return fmt.Errorf("Envoy has sent %d of the 6 usage entries", n)
		}
		return nil
	})
	s.cp.Kill()
	withLedger(t, s)
	rows := ledgerRows(t, s, "team-import", 4) // the gRPC log kept nothing of them
	for _, r := range rows {
		if !strings.HasPrefix(r["requested_model"], "before-") {
			t.Errorf("a request of the outage reached the ledger: %v", r)
		}
	}

	// Envoy's log holds all ten (it flushes every second).
	logFile := filepath.Join(t.TempDir(), "envoy-hk.log")
	testenv.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		log := s.envoys["hk"].Log()
		if n := strings.Count(log, `"tenant":"team-import"`); n < 10 {
			return fmt.Errorf("%d of the 10 requests in Envoy's log", n)
		}
		return os.WriteFile(logFile, []byte(log), 0o600)
	})
	imp := func(dir string) string {
		t.Helper()
		out, err := exec.Command(llmedgeBin, "usage", "import", "--config", s.routes, "--state-dir", dir, logFile).CombinedOutput()
		if err != nil {
			t.Fatalf("llmedge usage import: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := imp(stateDir); !strings.Contains(out, " 6 added to the ledger") {
		t.Errorf("import: %s; want the 6 requests of the outage added", out)
	}
	rows = ledgerRows(t, s, "team-import", 10)
	seen := map[string]ledgerRow{}
	for _, r := range rows {
		seen[r["requested_model"]] = r
	}
	for i := range 6 {
		r, ok := seen[fmt.Sprintf("during-%d", i)]
		if !ok {
			t.Errorf("during-%d is not in the ledger", i)
			continue
		}
		if r["caller"] != "importer" || r["upstream"] != "openai" || r["region"] != "hk" || r["status"] != "200" ||
			r["extraction"] != "ok" || r["input_tokens"] == "0" || r["output_tokens"] == "0" || r["stream"] != fmt.Sprint(i%2 == 1) {
			t.Errorf("imported record %v", r)
		}
	}
	if r := seen["during-0"]; r["cost"] == "" || r["currency"] != "USD" {
		t.Errorf("imported during-0 is not priced: %v", r)
	}
	if out := imp(stateDir); !strings.Contains(out, " 0 added to the ledger, 10 already in it") {
		t.Errorf("second import: %s; want nothing added", out)
	}
	ledgerRows(t, s, "team-import", 10)

	// Field for field: the same log imported into an empty ledger gives, for the four
	// requests the gRPC log delivered, the records the control plane wrote (Envoy's log
	// has the duration in whole milliseconds, the time to the first byte in microseconds).
	fresh := t.TempDir()
	if out := imp(fresh); !strings.Contains(out, " 10 added to the ledger") {
		t.Errorf("import into an empty ledger: %s", out)
	}
	records := func(dir string) map[string]usage.Record {
		t.Helper()
		st, err := usage.OpenSQLite(context.Background(), filepath.Join(dir, "usage.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		rs, err := st.Records(context.Background(), "team-import", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]usage.Record{}
		for _, r := range rs {
			out[r.RequestID] = r
		}
		return out
	}
	live, rebuilt := records(stateDir), records(fresh)
	compared := 0
	for id, a := range live {
		b, ok := rebuilt[id]
		if !ok {
			t.Errorf("request %s (%s) is not in the rebuilt ledger", id, a.RequestedModel)
			continue
		}
		if !strings.HasPrefix(a.RequestedModel, "before-") {
			continue
		}
		compared++
		if d := a.Duration - b.Duration; d < 0 || d >= time.Millisecond {
			t.Errorf("%s: duration %v from the gRPC log, %v from Envoy's", a.RequestedModel, a.Duration, b.Duration)
		}
		if d := a.TTFB - b.TTFB; d < 0 || d >= time.Microsecond {
			t.Errorf("%s: ttfb %v from the gRPC log, %v from Envoy's", a.RequestedModel, a.TTFB, b.TTFB)
		}
		if (a.Cost == nil) != (b.Cost == nil) || a.Cost != nil && *a.Cost != *b.Cost {
			t.Errorf("%s: cost %v from the gRPC log, %v from Envoy's", a.RequestedModel, a.Cost, b.Cost)
		}
		a.Duration, b.Duration, a.TTFB, b.TTFB, a.Cost, b.Cost = 0, 0, 0, 0, nil, nil
		if fmt.Sprintf("%+v", a) != fmt.Sprintf("%+v", b) {
			t.Errorf("record from the gRPC log:\n%+v\nrebuilt from Envoy's log:\n%+v", a, b)
		}
	}
	if compared != 4 {
		t.Errorf("compared %d records, want the 4 from before the outage", compared)
	}
}
