package usage

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmedge/llmedge/internal/testenv"
)

func TestPostgresStore(t *testing.T) {
	_, dsnFile := testenv.StartPostgres(t, "usage_test")
	s, err := OpenPostgres(t.Context(), dsnFile)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storeSuite(t, s)
}

// A table created before the (ts, request_id) key, with the request id alone as its
// primary key, is used as it is (PostgreSQL's tables are not rebuilt) and still stores a
// record delivered twice once.
func TestPostgresStoreWithTheRequestIDKey(t *testing.T) {
	_, dsnFile := testenv.StartPostgres(t, "usage_test")
	dsn, err := os.ReadFile(dsnFile)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", strings.TrimSpace(string(dsn)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ddl := strings.Replace(strings.Replace(createTable("usage_records", "BIGINT"),
		"request_id TEXT NOT NULL,", "request_id TEXT PRIMARY KEY,", 1), ",\n\tUNIQUE (ts, request_id)", "", 1)
	if _, err := db.ExecContext(t.Context(), ddl); err != nil {
		t.Fatal(err)
	}
	s, err := OpenPostgres(t.Context(), dsnFile)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var key string
	if err := db.QueryRowContext(t.Context(), `SELECT string_agg(a.attname, ',' ORDER BY k.i) FROM pg_index x
		CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
		WHERE x.indrelid = 'usage_records'::regclass AND x.indisunique`).Scan(&key); err != nil {
		t.Fatal(err)
	}
	if key != "request_id" {
		t.Fatalf("unique key %q, want request_id: this test no longer runs on the old key", key)
	}
	storeSuite(t, s)
}

func TestPostgresDSNNeverInErrors(t *testing.T) {
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	os.WriteFile(dsnFile, []byte("postgres://u:s3cret-pw@127.0.0.1:1/db?connect_timeout=1"), 0o600)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := OpenPostgres(ctx, dsnFile)
	if err == nil {
		t.Fatal("no server on port 1: want an error")
	}
	if s := err.Error(); strings.Contains(s, "s3cret-pw") {
		t.Errorf("error quotes the password: %s", s)
	}
}

// PostgreSQL stopped for a while under steady inserts, then restarted: no record lost,
// none duplicated.
func TestPostgresOutageUnderSteadyInserts(t *testing.T) {
	pg, dsnFile := testenv.StartPostgres(t, "usage_test")
	spool, err := OpenSpool(filepath.Join(t.TempDir(), "spool"), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	l := New(Options{
		Open:  func(ctx context.Context) (Store, error) { return OpenPostgres(ctx, dsnFile) },
		Spool: spool, FlushInterval: 10 * time.Millisecond, RetryInterval: 50 * time.Millisecond,
		StoreTimeout: 2 * time.Second,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var sent atomic.Int64
	stopProducer := make(chan struct{})
	producerDone := make(chan struct{})
	go func() { // steady load: one record a millisecond, every tenth delivered twice
		defer close(producerDone)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopProducer:
				return
			case <-tick.C:
			}
			r := rec(fmt.Sprint("steady-", i), "alice", "team-a", "gpt-4o", time.Now(), 10, 1, nil)
			l.Add(r)
			if i%10 == 0 {
				l.Add(r)
			}
			sent.Store(int64(i + 1))
		}
	}()
	stored := func() int64 {
		ts, err := l.Totals(context.Background(), Query{Since: time.Now().Add(-time.Hour), Until: time.Now().Add(time.Hour)})
		if err != nil {
			return -1
		}
		var n int64
		for _, x := range ts {
			n += x.Requests
		}
		return n
	}
	eventually(t, "records flowing into postgres", func() bool { return stored() > 200 })

	pg.Stop()
	spooledBefore := testutil.ToFloat64(l.m.spooled)
	eventually(t, "records spooling while postgres is down", func() bool { return testutil.ToFloat64(l.m.spooled) > spooledBefore+500 })
	if err := pg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "spool replayed after the restart", func() bool { return spool.Empty() && stored() > 0 })
	close(stopProducer)
	<-producerDone
	want := sent.Load()
	eventually(t, fmt.Sprintf("all %d records stored", want), func() bool { return spool.Empty() && stored() == want })
	if got := testutil.ToFloat64(l.m.dropped); got != 0 {
		t.Errorf("dropped %v records", got)
	}
	// The ledger's key forbids duplicates; count == sent also means none was lost.
	if got := stored(); got != want {
		t.Errorf("stored %d, sent %d", got, want)
	}
}
