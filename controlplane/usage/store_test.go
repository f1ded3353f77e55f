package usage

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func rec(id, caller, tenant, model string, at time.Time, in, out int64, cost *float64) Record {
	r := Record{RequestID: id, Time: at, Region: "hk", Route: "chat", Upstream: "openai", Caller: caller, Tenant: tenant,
		RequestedModel: model, Status: 200, InputTokens: in, OutputTokens: out, CachedTokens: in / 2, ReasoningTok: 1,
		Extraction: ExtractionOK, Attempts: 1, Duration: 1234 * time.Microsecond, TTFB: 200 * time.Microsecond, Cost: cost}
	if cost != nil {
		r.Currency = "USD"
	} else {
		r.PriceMissing = true
	}
	return r
}

func f64(v float64) *float64 { return &v }

// storeSuite runs against every Store: SQLite here, PostgreSQL in postgres_test.go.
func storeSuite(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Millisecond)
	day1 := now.Add(-30 * time.Hour)
	batch := []Record{
		rec("a1", "alice", "team-a", "gpt-4o", now, 100, 10, f64(0.5)),
		rec("a2", "alice", "team-a", "gpt-4o", now, 200, 20, f64(1)),
		rec("b1", "bob", "team-b", "gpt-4o", now, 50, 5, f64(0.25)),
		rec("b2", "bob", "team-b", "mystery", now, 7, 3, nil),
		rec("old", "alice", "team-a", "gpt-4o", day1, 1000, 100, f64(10)),
	}
	if err := s.Insert(ctx, batch); err != nil {
		t.Fatal(err)
	}
	// Delivered twice, alone and inside a new batch: stored once.
	if err := s.Insert(ctx, batch[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.Insert(ctx, []Record{batch[2], rec("c1", "carol", "team-a", "gpt-4o", now, 1, 1, f64(0.01))}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Totals(ctx, Query{Since: now.Add(-48 * time.Hour), Until: now.Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	var requests, input int64
	for _, tot := range all {
		requests += tot.Requests
		input += tot.InputTokens
	}
	if requests != 6 || input != 100+200+50+7+1000+1 {
		t.Fatalf("totals over everything: %d requests, %d input; want 6 and 1358 (%+v)", requests, input, all)
	}

	got, err := s.Totals(ctx, Query{Since: now.Add(-24 * time.Hour), Until: now.Add(time.Second), By: []string{"caller", "model"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Total{
		"alice/gpt-4o/USD": {Requests: 2, InputTokens: 300, OutputTokens: 30, CachedTokens: 150, ReasoningTokens: 2, Cost: 1.5},
		"bob/gpt-4o/USD":   {Requests: 1, InputTokens: 50, OutputTokens: 5, CachedTokens: 25, ReasoningTokens: 1, Cost: 0.25},
		"bob/mystery/":     {Requests: 1, InputTokens: 7, OutputTokens: 3, CachedTokens: 3, ReasoningTokens: 1, PriceMissing: 1},
		"carol/gpt-4o/USD": {Requests: 1, InputTokens: 1, OutputTokens: 1, CachedTokens: 0, ReasoningTokens: 1, Cost: 0.01},
	}
	if len(got) != len(want) {
		t.Fatalf("groups: %+v", got)
	}
	for _, g := range got {
		k := g.Group["caller"] + "/" + g.Group["model"] + "/" + g.Currency
		w, ok := want[k]
		if !ok {
			t.Errorf("unexpected group %s", k)
			continue
		}
		w.Group, w.Currency = g.Group, g.Currency
		if fmt.Sprint(w) != fmt.Sprint(g) {
			t.Errorf("group %s = %+v, want %+v", k, g, w)
		}
	}

	byDay, err := s.Totals(ctx, Query{Since: now.Add(-72 * time.Hour), Until: now.Add(time.Second), By: []string{"tenant", "day"}})
	if err != nil {
		t.Fatal(err)
	}
	days := map[string]int64{}
	for _, g := range byDay {
		days[g.Group["tenant"]+" "+g.Group["day"]] += g.Requests
	}
	if days["team-a "+day1.Format(time.DateOnly)] != 1 || days["team-a "+now.Format(time.DateOnly)] != 3 {
		t.Errorf("by tenant and day: %v", days)
	}
	if _, err := s.Totals(ctx, Query{By: []string{"caller; DROP TABLE usage_records"}}); err == nil {
		t.Error("an unknown dimension must be refused")
	}

	recs, err := s.Records(ctx, "team-a", day1.Add(-time.Hour), now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 || recs[0].RequestID != "old" {
		t.Fatalf("team-a records: %+v", recs)
	}
	if r := recs[1]; r.RequestID != "a1" || !r.Time.Equal(now) || r.Cost == nil || *r.Cost != 0.5 || r.Duration != 1234*time.Microsecond || r.Extraction != ExtractionOK {
		t.Errorf("record round trip: %+v", r)
	}

	n, err := s.DeleteBefore(ctx, now.Add(-24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("retention deleted %d (%v), want 1", n, err)
	}
	recs, _ = s.Records(ctx, "team-a", day1.Add(-time.Hour), now.Add(time.Second))
	if len(recs) != 3 {
		t.Errorf("after retention: %d team-a records, want 3", len(recs))
	}
}

func openSQLite(t *testing.T) Store {
	t.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLiteStore(t *testing.T) { storeSuite(t, openSQLite(t)) }

// rawSQLite opens the SQLite file at path without the store, to read or shape its schema.
func rawSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestSQLiteLargeBatch: a batch many times SQLite's statement of sqliteRows records, with
// a remainder, is stored whole and field for field (a parameter out of place in the
// many-row statement would move values between records), and delivering it again with
// new records mixed in stores only the new ones.
func TestSQLiteLargeBatch(t *testing.T) {
	s := openSQLite(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	var rs []Record
	for i := range 1234 {
		r := rec(fmt.Sprint("id-", i), fmt.Sprint("caller-", i%7), "t", fmt.Sprint("m", i%5), now.Add(time.Duration(i)*time.Millisecond), int64(i), int64(2*i+1), nil)
		if i%3 == 0 {
			r.Cost, r.Currency, r.PriceMissing = f64(float64(i)/1000), "USD", false
		}
		r.Stream, r.Status, r.RequestBytes = i%2 == 0, 200+i%4, int64(1000+i)
		rs = append(rs, r)
	}
	if err := s.Insert(t.Context(), rs[:1000]); err != nil {
		t.Fatal(err)
	}
	// Again, overlapping: 600 stored already, 234 new, in chunks that mix the two.
	if err := s.Insert(t.Context(), rs[400:]); err != nil {
		t.Fatal(err)
	}
	got, err := s.Records(t.Context(), "t", now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(rs) {
		t.Fatalf("%d records stored, want %d", len(got), len(rs))
	}
	for i, g := range got { // ordered by time, as rs is
		w := rs[i]
		w.Time = w.Time.UTC()
		if fmt.Sprintf("%+v %v", g, deref(g.Cost)) != fmt.Sprintf("%+v %v", withCost(w, g.Cost), deref(w.Cost)) {
			t.Fatalf("record %d stored as\n%+v (cost %v)\nwant\n%+v (cost %v)", i, g, deref(g.Cost), w, deref(w.Cost))
		}
	}
}

func deref(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

// withCost is r with its cost pointer replaced by p (compared by value separately).
func withCost(r Record, p *float64) Record {
	r.Cost = p
	return r
}

// ledgerKey is the columns of the SQLite ledger's unique index, in order.
func ledgerKey(t *testing.T, db *sql.DB) []string {
	t.Helper()
	return column(t, db, `SELECT ii.name FROM pragma_index_list('usage_records') il, pragma_index_info(il.name) ii
		WHERE il."unique" = 1 ORDER BY il.name, ii.seqno`)
}

// column is the one text column of a query's rows.
func column(t *testing.T, db *sql.DB, query string) []string {
	t.Helper()
	rows, err := db.Query(query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	return cols
}

// The ledger's key starts with the time, so inserts land at the end of its index however
// large the ledger grows, and a ledger created with the request id alone as its key is
// rebuilt with the new one when opened: every record kept, field for field, and a record
// delivered again still stored once.
func TestSQLiteLedgerKeyStartsWithTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.db")
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	s, err := OpenSQLiteLogged(t.Context(), path, log)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if logged.Len() != 0 {
		t.Errorf("opening a new ledger logged %q, want nothing", logged.String())
	}
	if got := ledgerKey(t, rawSQLite(t, path)); !slices.Equal(got, []string{"ts", "request_id"}) {
		t.Fatalf("a new ledger's unique key is %v, want [ts request_id]", got)
	}

	// A ledger as it was created before: the request id its primary key, and a ts index.
	old := filepath.Join(t.TempDir(), "old.db")
	odb := rawSQLite(t, old)
	ddl := strings.Replace(strings.Replace(createTable("usage_records", "INTEGER"),
		"request_id TEXT NOT NULL,", "request_id TEXT PRIMARY KEY,", 1), ",\n\tUNIQUE (ts, request_id)", "", 1)
	for _, q := range []string{ddl, `CREATE INDEX usage_records_ts ON usage_records (ts)`, tenantIndex} {
		if _, err := odb.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if got := ledgerKey(t, odb); !slices.Equal(got, []string{"request_id"}) {
		t.Fatalf("the old ledger's key is %v, want [request_id]: this test no longer builds one", got)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	recs := []Record{
		rec("r2", "bob", "team-b", "gpt-4o", now, 50, 5, nil),
		rec("r1", "alice", "team-a", "gpt-4o", now.Add(-time.Hour), 100, 10, f64(0.5)),
		rec("r3", "alice", "team-a", "mystery", now.Add(time.Second), 7, 3, f64(0.25)),
	}
	ins := insertStatement(sqliteDialect, 1)
	for _, r := range recs {
		if _, err := odb.Exec(ins, rowValues(r)...); err != nil {
			t.Fatal(err)
		}
	}
	odb.Close()

	// The ledger opens its store under a deadline meant for one insert; a rebuild, which
	// takes seconds for a large ledger, must not be cut off by it (a context already done
	// stands for a deadline that passes during the rebuild).
	done, cancel := context.WithCancel(t.Context())
	cancel()
	s, err = OpenSQLiteLogged(done, old, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := logged.String(); !strings.Contains(got, "rebuilding with the (ts, request_id) key") ||
		!strings.Contains(got, `msg="usage ledger rebuilt" records=3 took=`) {
		t.Errorf("the rebuild logged %q, want its start and its end with the 3 records", got)
	}
	defer s.Close()
	if err := s.Insert(t.Context(), []Record{recs[0], rec("r4", "carol", "team-a", "gpt-4o", now, 1, 1, nil)}); err != nil {
		t.Fatal(err)
	}
	db2 := rawSQLite(t, old)
	if got := ledgerKey(t, db2); !slices.Equal(got, []string{"ts", "request_id"}) {
		t.Errorf("after opening, the old ledger's unique key is %v, want [ts request_id]", got)
	}
	indexes := column(t, db2, `SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name`)
	if !slices.Equal(indexes, []string{"usage_records_tenant_ts"}) {
		t.Errorf("indexes after the rebuild: %v, want [usage_records_tenant_ts]", indexes)
	}
	for _, tenant := range []string{"team-a", "team-b"} {
		got, err := s.Records(t.Context(), tenant, now.Add(-2*time.Hour), now.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		var want []Record
		for _, r := range append(recs, rec("r4", "carol", "team-a", "gpt-4o", now, 1, 1, nil)) {
			if r.Tenant == tenant {
				want = append(want, r)
			}
		}
		slices.SortStableFunc(want, func(a, b Record) int { return a.Time.Compare(b.Time) })
		if diff := cmp.Diff(want, got, cmpopts.EquateApproxTime(0), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s's records after the rebuild (-want +got):\n%s", tenant, diff)
		}
	}
}
