package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/usage"
)

func TestUsageCommand(t *testing.T) {
	var gotQuery []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = append(gotQuery, r.URL.Path+"?"+r.URL.RawQuery)
		switch {
		case r.URL.Path == "/usage" && r.URL.Query().Get("format") == "csv":
			w.Write([]byte("caller,requests\nalice,3\n"))
		case r.URL.Path == "/usage":
			json.NewEncoder(w).Encode(usage.Report{Since: time.Unix(0, 0), Until: time.Unix(3600, 0), By: []string{"caller", "model"}, Totals: []usage.Total{
				{Group: map[string]string{"caller": "alice", "model": "gpt-4o"}, Requests: 3, InputTokens: 300, OutputTokens: 30, Cost: 0.0123, Currency: "USD"},
				{Group: map[string]string{"caller": "bob", "model": "o9"}, Requests: 1, InputTokens: 5, PriceMissing: 1},
			}})
		case r.URL.Path == "/usage/export":
			w.Write([]byte("time,request_id\n"))
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":{"message":"the usage ledger is off"}}`))
		}
	}))
	defer srv.Close()

	code, out, errs := runCLI(t, "usage", "--url", srv.URL, "--since", "7d", "--by", "caller,model")
	if code != 0 || !strings.Contains(out, "alice") || !strings.Contains(out, "0.0123 USD") || !strings.Contains(out, "unpriced") {
		t.Errorf("table: exit %d\n%s%s", code, out, errs)
	}
	if code, out, _ := runCLI(t, "usage", "--url", srv.URL, "--csv"); code != 0 || out != "caller,requests\nalice,3\n" {
		t.Errorf("csv: exit %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "usage", "export", "--url", srv.URL, "--month", "2026-11", "--tenant", "team-a"); code != 0 || !strings.HasPrefix(out, "time,request_id") {
		t.Errorf("export: exit %d %q", code, out)
	}
	want := []string{"/usage?by=caller%2Cmodel&since=7d", "/usage?format=csv&since=24h", "/usage/export?month=2026-11&tenant=team-a"}
	if strings.Join(gotQuery, " ") != strings.Join(want, " ") {
		t.Errorf("queries %v, want %v", gotQuery, want)
	}
	for _, args := range [][]string{
		{"usage", "--url", srv.URL, "--by", "caller,secret"},
		{"usage", "--url", srv.URL, "--since", "yesterday"},
		{"usage", "export", "--url", srv.URL, "--month", "november", "--tenant", "a"},
		{"usage", "export", "--url", srv.URL, "--month", "2026-11"},
		{"usage", "--json", "--csv"},
	} {
		if code, _, errs := runCLI(t, args...); code == 0 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, errs)
		}
	}
	if code, _, errs := runCLI(t, "usage", "--url", srv.URL+"/off"); code != 1 || !strings.Contains(errs, "the usage ledger is off") {
		t.Errorf("server error: exit %d %q", code, errs)
	}
}
