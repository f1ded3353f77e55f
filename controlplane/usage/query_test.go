package usage

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

func TestQueryHTTP(t *testing.T) {
	h := newHarness(t, 1<<20, []model.Price{{Upstream: "openai", Model: "gpt-4o", Input: 1, Output: 1, Cached: 1, Currency: "USD"}})
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	h.l.Add(rec("q1", "alice", "team-a", "gpt-4o", now.Add(-time.Hour), 1e6, 0, nil))
	h.l.Add(rec("q2", "bob", "team-b", "gpt-4o", now.Add(-2*time.Hour), 2e6, 0, nil))
	h.l.Add(rec("q3", "alice", "team-a", "gpt-4o", now.Add(-48*time.Hour), 4e6, 0, nil))
	h.l.Add(rec("q4", "alice", "team-a", "gpt-4o", time.Date(2026, 10, 31, 23, 59, 0, 0, time.UTC), 1, 0, nil))
	eventually(t, "stored", func() bool { return h.count(t) == 4 })
	srv := httptest.NewServer(Handler(h.l, func() time.Time { return now }))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := get("/usage?since=24h&by=caller")
	var rep Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil || code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if len(rep.Totals) != 2 || rep.Totals[0].Group["caller"] != "alice" || rep.Totals[0].InputTokens != 1e6 || rep.Totals[0].Cost != 1 || rep.Totals[1].InputTokens != 2e6 {
		t.Errorf("totals: %+v", rep.Totals)
	}
	_, body = get("/usage?since=3d&by=tenant,day&format=csv")
	wantCSV := "tenant,day,requests,input_tokens,output_tokens,cached_tokens,reasoning_tokens,cost,currency,price_missing\n" +
		"team-a,2026-11-28,1,4000000,0,2000000,1,4,USD,0\n" +
		"team-a,2026-11-30,1,1000000,0,500000,1,1,USD,0\n" +
		"team-b,2026-11-30,1,2000000,0,1000000,1,2,USD,0\n"
	if body != wantCSV {
		t.Errorf("csv:\n%s\nwant:\n%s", body, wantCSV)
	}
	_, body = get("/usage/export?month=2026-10&tenant=team-a")
	if !strings.HasPrefix(body, "time,request_id,") || strings.Count(body, "\n") != 2 || !strings.Contains(body, "2026-10-31T23:59:00Z,q4,team-a,alice") {
		t.Errorf("export:\n%s", body)
	}
	for path, msg := range map[string]string{
		"/usage?since=yesterday":               "since:",
		"/usage?by=caller,password":            "unknown dimension",
		"/usage?format=xml":                    "format:",
		"/usage/export?month=11-2026&tenant=a": "month:",
		"/usage/export?month=2026-11":          "tenant: required",
	} {
		code, body := get(path)
		if code != http.StatusBadRequest || !strings.Contains(body, msg) {
			t.Errorf("%s: %d %s, want 400 naming %q", path, code, body, msg)
		}
	}
}

func TestParseSince(t *testing.T) {
	for in, want := range map[string]time.Duration{"24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := ParseSince(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0d", "-1h", "d", "1w"} {
		if _, err := ParseSince(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
