package usage

import (
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var ledgerRecords = flag.Int("ledger-records", 1_000_000, "BenchmarkSQLiteInsert: records in the ledger before the timed inserts")

// BenchmarkSQLiteInsert is the ledger's write to SQLite per record, in batches of the size
// its 200 ms flush collects at about 1,400 requests/s, into a ledger that already holds
// -ledger-records records (a week at a few requests a second), side by side with the
// ledger's key (ts, request_id) and with the request id alone as its key (ledgers created
// before 8cd929a, until they are rebuilt): Envoy's request ids are random, so with that key
// each insert lands on a random page of an index as large as the ledger. The table grows
// with b.N, so compare runs of the same count:
// go test -run '^$' -bench SQLiteInsert -benchtime 60000x -count 3 ./controlplane/usage/
func BenchmarkSQLiteInsert(b *testing.B) {
	for _, key := range []string{"ts_request_id", "request_id"} {
		b.Run("key="+key, func(b *testing.B) {
			s := grownLedger(b, key == "request_id", *ledgerRecords)
			defer s.Close()
			const batch = 280
			recs := make([]Record, batch)
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				now := time.Now().UTC()
				for j := range recs {
					recs[j] = rec(fmt.Sprintf("%08x-9f0c-4f7e-a1b2-%012x", rand.Uint32(), rand.Uint64()>>16), "alice", "team-a", "gpt-4o-mini", now, 12, 34, f64(0.0001))
				}
				if err := s.Insert(b.Context(), recs[:min(batch, b.N-i)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// grownLedger is a SQLite store holding n records of the past hours with random request
// ids, keyed by the request id alone when idKey (built as such ledgers were: OpenSQLite
// would rebuild it).
func grownLedger(b *testing.B, idKey bool, n int) *sqlStore {
	b.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(b.TempDir(), "usage.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	table := createTable("usage_records", "INTEGER")
	if idKey {
		table = strings.Replace(strings.Replace(table, "request_id TEXT NOT NULL,", "request_id TEXT PRIMARY KEY,", 1), ",\n\tUNIQUE (ts, request_id)", "", 1)
	}
	start := time.Now().Add(-time.Duration(n) * time.Millisecond).UnixMilli()
	for _, q := range []string{
		`PRAGMA journal_mode=WAL`, table, tenantIndex,
		// One record a millisecond up to now; hex(randomblob(16)) stands for a UUID.
		fmt.Sprintf(`INSERT INTO usage_records (%s) WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < %d)
			SELECT lower(hex(randomblob(16))), %d + i, '2026-11-30', 'hk', 'chat', 'openai', 'alice', 'team-a', 'gpt-4o-mini',
			'gpt-4o-mini', '', 0, 200, 1234, 200, 12, 34, 6, 1, 'ok', 100, 200, 1, 0.0001, 'USD', 0 FROM n`,
			strings.Join(columns, ", "), n-1, start),
	} {
		if _, err := db.ExecContext(b.Context(), q); err != nil {
			b.Fatalf("%.60s: %v", q, err)
		}
	}
	if idKey {
		if _, err := db.ExecContext(b.Context(), `CREATE INDEX usage_records_ts ON usage_records (ts)`); err != nil {
			b.Fatal(err)
		}
	}
	s := &sqlStore{db: db, d: sqliteDialect}
	if err := s.prepare(b.Context()); err != nil {
		b.Fatal(err)
	}
	return s
}
