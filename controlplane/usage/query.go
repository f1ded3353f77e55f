package usage

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ParseSince reads a look-back window: a Go duration (24h, 90m) or days (7d).
func ParseSince(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q: want a duration such as 24h or 7d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a duration such as 24h or 7d", s)
	}
	return d, nil
}

// ParseBy reads a comma-separated list of dimensions.
func ParseBy(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, d := range strings.Split(s, ",") {
		d = strings.TrimSpace(d)
		if _, ok := Dimensions[d]; !ok {
			return nil, fmt.Errorf("%q: unknown dimension; use caller, tenant, upstream, model, region, route or day", d)
		}
		out = append(out, d)
	}
	return out, nil
}

// ParseMonth reads 2026-11 as [first day, first day of the next month) in UTC.
func ParseMonth(s string) (time.Time, time.Time, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("%q: want a month such as 2026-11", s)
	}
	return t, t.AddDate(0, 1, 0), nil
}

// Report is the /usage JSON document.
type Report struct {
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
	By     []string  `json:"by"`
	Totals []Total   `json:"totals"`
}

// Handler serves GET /usage (totals) and GET /usage/export (a tenant's month as CSV).
func Handler(l *Ledger, now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /usage", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		since := q.Get("since")
		if since == "" {
			since = "24h"
		}
		d, err := ParseSince(since)
		if err != nil {
			httpError(w, http.StatusBadRequest, "since: "+err.Error())
			return
		}
		by, err := ParseBy(q.Get("by"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "by: "+err.Error())
			return
		}
		format := q.Get("format")
		if format != "" && format != "json" && format != "csv" {
			httpError(w, http.StatusBadRequest, "format: "+strconv.Quote(format)+": use json or csv")
			return
		}
		until := now().UTC()
		rep := Report{Since: until.Add(-d), Until: until, By: by}
		rep.Totals, err = l.Totals(r.Context(), Query{Since: rep.Since, Until: until.Add(time.Millisecond), By: by})
		if err != nil {
			storeError(w, err)
			return
		}
		if rep.By == nil {
			rep.By = []string{}
		}
		if rep.Totals == nil {
			rep.Totals = []Total{}
		}
		if format == "csv" {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			_ = WriteTotalsCSV(w, by, rep.Totals)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
	mux.HandleFunc("GET /usage/export", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		from, to, err := ParseMonth(q.Get("month"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "month: "+err.Error())
			return
		}
		tenant := q.Get("tenant")
		if tenant == "" {
			httpError(w, http.StatusBadRequest, "tenant: required")
			return
		}
		rs, err := l.Records(r.Context(), tenant, from, to)
		if err != nil {
			storeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", "usage-"+tenant+"-"+q.Get("month")+".csv"))
		_ = WriteRecordsCSV(w, rs)
	})
	return mux
}

func storeError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNoStore) {
		httpError(w, http.StatusServiceUnavailable, "the usage store is unavailable; records are spooling (see /metrics llmedge_usage_store_up)")
		return
	}
	// Driver errors can quote the connection; the log has the detail.
	httpError(w, http.StatusServiceUnavailable, "the usage store query failed")
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"message": msg}})
}

// WriteTotalsCSV writes one row per group: the dimensions, then the sums.
func WriteTotalsCSV(w io.Writer, by []string, ts []Total) error {
	cw := csv.NewWriter(w)
	head := append(append([]string{}, by...), "requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost", "currency", "price_missing")
	_ = cw.Write(head)
	for _, t := range ts {
		row := make([]string, 0, len(head))
		for _, d := range by {
			row = append(row, t.Group[d])
		}
		row = append(row, i64(t.Requests), i64(t.InputTokens), i64(t.OutputTokens), i64(t.CachedTokens), i64(t.ReasoningTokens),
			strconv.FormatFloat(t.Cost, 'f', -1, 64), t.Currency, i64(t.PriceMissing))
		_ = cw.Write(row)
	}
	cw.Flush()
	return cw.Error()
}

// WriteRecordsCSV writes one row per record: the billing export.
func WriteRecordsCSV(w io.Writer, rs []Record) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"time", "request_id", "tenant", "caller", "region", "route", "upstream", "requested_model", "reported_model",
		"stream", "status", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "extraction", "cost", "currency", "price_missing"})
	for _, r := range rs {
		cost := ""
		if r.Cost != nil {
			cost = strconv.FormatFloat(*r.Cost, 'f', -1, 64)
		}
		_ = cw.Write([]string{r.Time.UTC().Format(time.RFC3339Nano), r.RequestID, r.Tenant, r.Caller, r.Region, r.Route, r.Upstream,
			r.RequestedModel, r.ReportedModel, strconv.FormatBool(r.Stream), strconv.Itoa(r.Status),
			i64(r.InputTokens), i64(r.OutputTokens), i64(r.CachedTokens), i64(r.ReasoningTok), string(r.Extraction),
			cost, r.Currency, strconv.FormatBool(r.PriceMissing)})
	}
	cw.Flush()
	return cw.Error()
}

func i64(n int64) string { return strconv.FormatInt(n, 10) }
