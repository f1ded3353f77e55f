package e2e

// The usage ledger on a real PostgreSQL, fed by the real Envoy's access log: the store
// goes away for 30 seconds under steady traffic and comes back, and the ledger ends up
// with exactly one record per request.

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// postgresOutage is how long PostgreSQL stays down: the scenario itself, not a wait.
const postgresOutage = 30 * time.Second

const postgresUsageRegion = `
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
  load:
    tokens: [{{.Digest "load"}}]
    upstreams: [openai]
    tenant: team-load
usage:
  store: postgres
  postgres: {dsn_file: DSN_FILE}
`

// metricValue reads an unlabelled sample from a Prometheus text exposition.
func metricValue(body, name string) (float64, error) {
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// exportRows reads a tenant's records for every UTC month from since to now (the test may
// run across a month's end).
func exportRows(t *testing.T, s *stack, tenant string, since time.Time) ([]ledgerRow, error) {
	t.Helper()
	var rows []ledgerRow
	months := map[string]bool{}
	for _, at := range []time.Time{since, time.Now()} {
		month := at.UTC().Format("2006-01")
		if months[month] {
			continue
		}
		months[month] = true
		resp, err := http.Get(s.statusURL("/usage/export?month=" + month + "&tenant=" + tenant))
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("export %s: status %d, %v: %.200s", month, resp.StatusCode, err, body)
		}
		recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
		if err != nil || len(recs) == 0 {
			return nil, fmt.Errorf("export %s: %v (%d lines)", month, err, len(recs))
		}
		for _, rec := range recs[1:] {
			row := ledgerRow{}
			for i, h := range recs[0] {
				row[h] = rec[i]
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// TestUsagePostgresOutageThroughTheEdge: requests flow through Envoy at a steady five a
// second while the ledger's PostgreSQL is stopped for 30 s and started again. No request
// fails, the ledger spools while the store is down (store_up 0, records spooled), replays
// it afterwards, and ends with exactly one record per request sent: none missing, none
// twice, each with its own request id.
func TestUsagePostgresOutageThroughTheEdge(t *testing.T) {
	t.Parallel()
	pg, dsnFile := testenv.StartPostgres(t, "usage")
	s := newStack(t, startUpstream(t, fakellm.Options{}), strings.ReplaceAll(postgresUsageRegion, "DSN_FILE", dsnFile), "hk")
	withLedger(t, s)
	metrics := func() (string, error) {
		resp, err := http.Get(s.statusURL("/metrics"))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	metric := func(name string) float64 {
		t.Helper()
		body, err := metrics()
		if err != nil {
			t.Fatal(err)
		}
		v, err := metricValue(body, name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	start := time.Now()
	// One chat completion every 200 ms, each naming its own model (load-00000, …) so the
	// ledger's records can be matched to requests one for one.
	url := s.edgeURL("hk", "/openai/v1/chat/completions")
	load := startPacedLoad(t, 1, 200*time.Millisecond, func(i int) (string, *http.Request) {
		model := fmt.Sprintf("load-%05d", i)
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("content-type", "application/json")
		req.Header.Set("authorization", "Bearer "+s.tokens["load"])
		req.Header.Set("x-fake-chunk-interval", "0s")
		return model, req
	})
	// Records reach PostgreSQL before the outage.
	testenv.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
		rows, err := exportRows(t, s, "team-load", start)
		if err != nil {
			return err
		}
		if len(rows) < 10 {
			return fmt.Errorf("%d records stored, want 10 before stopping PostgreSQL", len(rows))
		}
		return nil
	})
	// A loaded machine may time an insert out and spool it even now: count from here.
	spooledBefore := metric("llmedge_usage_records_spooled_total")

	pg.Stop()
	outage := time.NewTimer(postgresOutage)
	stoppedAt := len(load.sentLabels())
	// While it is down the ledger spools what Envoy keeps sending.
	testenv.Eventually(t, postgresOutage-5*time.Second, 100*time.Millisecond, func() error {
		body, err := metrics()
		if err != nil {
			return err
		}
		up, err1 := metricValue(body, "llmedge_usage_store_up")
		spooled, err2 := metricValue(body, "llmedge_usage_records_spooled_total")
		spoolBytes, err3 := metricValue(body, "llmedge_usage_spool_bytes")
		if err1 != nil || err2 != nil || err3 != nil {
			return fmt.Errorf("%v %v %v", err1, err2, err3)
		}
		if up != 0 || spooled < spooledBefore+10 || spoolBytes == 0 {
			return fmt.Errorf("store_up %v, %v records spooled since PostgreSQL stopped (want 10 or more), spool %v bytes", up, spooled-spooledBefore, spoolBytes)
		}
		return nil
	})
	<-outage.C
	duringOutage := len(load.sentLabels()) - stoppedAt
	if err := pg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	load.waitRequests(t, 10) // traffic goes on after the restart
	load.halt()

	sent := load.sentLabels()
	if n := load.failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed while the usage store was away: %v", n, len(sent), load.failures)
	}
	var rows []ledgerRow
	testenv.Eventually(t, 60*time.Second, 200*time.Millisecond, func() error {
		var err error
		if rows, err = exportRows(t, s, "team-load", start); err != nil {
			return err
		}
		if len(rows) < len(sent) {
			return fmt.Errorf("%d records stored, %d requests sent", len(rows), len(sent))
		}
		return nil
	})
	byModel, ids := map[string]int{}, map[string]int{}
	for _, r := range rows {
		byModel[r["requested_model"]]++
		ids[r["request_id"]]++
		if r["caller"] != "load" || r["status"] != "200" || r["extraction"] != "ok" {
			t.Errorf("record %v", r)
		}
	}
	for _, m := range sent {
		if byModel[m] != 1 {
			t.Errorf("request %s has %d records, want 1", m, byModel[m])
		}
	}
	for id, n := range ids {
		if id == "" || n != 1 {
			t.Errorf("request id %q on %d records", id, n)
		}
	}
	if len(rows) != len(sent) {
		t.Errorf("%d records for %d requests", len(rows), len(sent))
	}
	// The spool was used and is empty again: everything spooled was replayed, nothing dropped.
	testenv.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		body, err := metrics()
		if err != nil {
			return err
		}
		vals := map[string]float64{}
		for _, name := range []string{"llmedge_usage_store_up", "llmedge_usage_records_spooled_total", "llmedge_usage_records_replayed_total",
			"llmedge_usage_records_dropped_total", "llmedge_usage_spool_bytes"} {
			if vals[name], err = metricValue(body, name); err != nil {
				return err
			}
		}
		if vals["llmedge_usage_store_up"] != 1 || vals["llmedge_usage_spool_bytes"] != 0 || vals["llmedge_usage_records_dropped_total"] != 0 ||
			vals["llmedge_usage_records_spooled_total"] < 10 || vals["llmedge_usage_records_replayed_total"] != vals["llmedge_usage_records_spooled_total"] {
			return fmt.Errorf("metrics %v: want the store up, the spool empty, nothing dropped, every spooled record replayed", vals)
		}
		t.Logf("%d requests (%d during the %v outage), %d records; %v spooled and replayed", len(sent), duringOutage, postgresOutage,
			len(rows), vals["llmedge_usage_records_spooled_total"])
		return nil
	})
}
