package usage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite", pure Go
)

// Store is where records live. Insert is idempotent on the record's time and request id:
// a record delivered twice (the same record, as the spool replays it) is stored once.
type Store interface {
	Insert(ctx context.Context, rs []Record) error
	Totals(ctx context.Context, q Query) ([]Total, error)
	// Records lists a tenant's records in [from, to), oldest first, for the billing export.
	Records(ctx context.Context, tenant string, from, to time.Time) ([]Record, error)
	DeleteBefore(ctx context.Context, t time.Time) (int64, error)
	Close() error
}

// Dimensions a query may group by, mapped to their columns. A closed list: the query
// string never reaches the SQL.
var Dimensions = map[string]string{
	"caller": "caller", "tenant": "tenant", "upstream": "upstream", "model": "model",
	"region": "region", "day": "day", "route": "route",
}

// Query selects records in [Since, Until) and groups them By the named dimensions.
type Query struct {
	Since, Until time.Time
	By           []string
}

// Total is one group's sums. Cost is per currency: groups never mix currencies, and
// records without a price are counted in PriceMissing instead.
type Total struct {
	Group           map[string]string `json:"group"`
	Requests        int64             `json:"requests"`
	InputTokens     int64             `json:"input_tokens"`
	OutputTokens    int64             `json:"output_tokens"`
	CachedTokens    int64             `json:"cached_tokens"`
	ReasoningTokens int64             `json:"reasoning_tokens"`
	Cost            float64           `json:"cost"`
	Currency        string            `json:"currency"`
	PriceMissing    int64             `json:"price_missing"`
}

// dialect is what differs between SQLite and PostgreSQL.
type dialect struct {
	name      string
	placehold func(n int) string
	schema    []string
}

var (
	sqliteDialect = dialect{name: "sqlite", placehold: func(int) string { return "?" }, schema: []string{
		`PRAGMA journal_mode=WAL`,
		`PRAGMA busy_timeout=5000`,
		createTable("usage_records", "INTEGER"),
		tenantIndex,
	}}
	postgresDialect = dialect{name: "postgres", placehold: func(n int) string { return "$" + strconv.Itoa(n) }, schema: []string{
		createTable("usage_records", "BIGINT"),
		tenantIndex,
	}}
)

// tenantIndex serves a tenant's records in a time range (the billing export); the table's
// key, which starts with ts, serves time ranges.
const tenantIndex = `CREATE INDEX IF NOT EXISTS usage_records_tenant_ts ON usage_records (tenant, ts)`

// columns in insert order; ts is unix milliseconds, day the UTC date (grouping by day
// needs no dialect-specific date functions).
var columns = []string{
	"request_id", "ts", "day", "region", "route", "upstream", "caller", "tenant", "model",
	"requested_model", "reported_model", "stream", "status", "duration_us", "ttfb_us",
	"input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "extraction",
	"request_bytes", "response_bytes", "attempts", "cost", "currency", "price_missing",
}

// createTable is the ledger's table. Its key is (ts, request_id), not the request id
// alone: request ids are random, so a key of them alone puts every insert on a random page
// of an index as large as the ledger, read (and written back through the WAL) from disk
// once the ledger outgrows SQLite's page cache, and slower the larger the ledger grows; a
// key that starts with the time puts every insert at the index's end. A record delivered
// twice (the spool's replay) has the same time and id, so it is still stored once.
func createTable(name, integer string) string {
	return `CREATE TABLE IF NOT EXISTS ` + name + ` (
	request_id TEXT NOT NULL,
	ts ` + integer + ` NOT NULL,
	day TEXT NOT NULL,
	region TEXT NOT NULL, route TEXT NOT NULL, upstream TEXT NOT NULL,
	caller TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
	requested_model TEXT NOT NULL, reported_model TEXT NOT NULL,
	stream INTEGER NOT NULL, status INTEGER NOT NULL,
	duration_us ` + integer + ` NOT NULL, ttfb_us ` + integer + ` NOT NULL,
	input_tokens ` + integer + ` NOT NULL, output_tokens ` + integer + ` NOT NULL,
	cached_tokens ` + integer + ` NOT NULL, reasoning_tokens ` + integer + ` NOT NULL,
	extraction TEXT NOT NULL,
	request_bytes ` + integer + ` NOT NULL, response_bytes ` + integer + ` NOT NULL,
	attempts INTEGER NOT NULL,
	cost DOUBLE PRECISION, currency TEXT NOT NULL, price_missing INTEGER NOT NULL,
	UNIQUE (ts, request_id)
)`
}

// sqlStore is the Store over database/sql for both dialects.
type sqlStore struct {
	db *sql.DB
	d  dialect
	// rows and row insert sqliteRows records and one: SQLite's statements, prepared once
	// (parsing a statement of many rows per flush cost a fifth of each insert); nil for
	// PostgreSQL, which builds a statement of many rows per flush to save round trips.
	rows, row *sql.Stmt
}

// sqliteRows is how many records one execution of SQLite's prepared insert takes: each
// execution has a fixed cost (database/sql, the driver, the statement's reset) that a
// record alone would pay; 32 × 26 parameters is far below SQLite's limit of 32,766.
const sqliteRows = 32

// OpenSQLite opens (creating) the SQLite ledger at path.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	return OpenSQLiteLogged(ctx, path, nil)
}

// OpenSQLiteLogged is OpenSQLite saying on log (nil: nowhere) when it rebuilds an old
// ledger with the new key, which takes seconds per million records.
func OpenSQLiteLogged(ctx context.Context, path string, log *slog.Logger) (Store, error) {
	// Opening SQLite is local work that ends on its own, and rebuilding an old ledger with
	// the new key (rekeySQLite) takes seconds for millions of records: the caller's
	// deadline (the ledger's per-insert StoreTimeout) would interrupt the rebuild at the
	// same point on every retry, and the ledger would never open.
	ctx = context.WithoutCancel(ctx)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("usage store: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, fmt.Errorf("usage store sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises writes anyway
	return open(ctx, db, sqliteDialect, "sqlite "+path, log)
}

// OpenPostgres connects with the DSN held in dsnFile. Errors never quote the DSN: it holds
// a password.
func OpenPostgres(ctx context.Context, dsnFile string) (Store, error) {
	b, err := os.ReadFile(dsnFile)
	if err != nil {
		return nil, fmt.Errorf("usage store: read usage.postgres.dsn_file: %w", err)
	}
	db, err := sql.Open("pgx", strings.TrimSpace(string(b)))
	if err != nil {
		return nil, errors.New("usage store: the DSN in usage.postgres.dsn_file is invalid")
	}
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	return open(ctx, db, postgresDialect, "postgres", nil)
}

func open(ctx context.Context, db *sql.DB, d dialect, what string, log *slog.Logger) (Store, error) {
	s := &sqlStore{db: db, d: d}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("usage store %s: %w", what, err)
	}
	if d.name == sqliteDialect.name {
		if err := rekeySQLite(ctx, db, log); err != nil {
			db.Close()
			return nil, fmt.Errorf("usage store %s: rebuild with the (ts, request_id) key: %w", what, err)
		}
		if err := s.prepare(ctx); err != nil {
			s.Close()
			return nil, fmt.Errorf("usage store %s: %w", what, err)
		}
	}
	return s, nil
}

// prepare prepares SQLite's two insert statements.
func (s *sqlStore) prepare(ctx context.Context) error {
	for _, p := range []struct {
		stmt **sql.Stmt
		rows int
	}{{&s.rows, sqliteRows}, {&s.row, 1}} {
		st, err := s.db.PrepareContext(ctx, insertStatement(s.d, p.rows))
		if err != nil {
			return err
		}
		*p.stmt = st
	}
	return nil
}

// migrate creates the table if needed. A Postgres store that is down at start-up is
// retried by the ledger: records spool meanwhile.
func (s *sqlStore) migrate(ctx context.Context) error {
	for _, q := range s.d.schema {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// rekeySQLite rebuilds a ledger created with the request id alone as its key (before
// createTable's (ts, request_id)) in one transaction: the records are copied in time order
// into a table with the new key, which then takes the old one's name; a crash or an error
// before the commit leaves the ledger as it was. A PostgreSQL table keeps the key it was
// created with: inserts name no conflict target, so either key deduplicates.
func rekeySQLite(ctx context.Context, db *sql.DB, log *slog.Logger) error {
	var pk int
	if err := db.QueryRowContext(ctx, `SELECT pk FROM pragma_table_info('usage_records') WHERE name = 'request_id'`).Scan(&pk); err != nil {
		return err
	}
	if pk == 0 {
		return nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	began := time.Now()
	log.Info("usage ledger: rebuilding with the (ts, request_id) key, once; records spool meanwhile")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	cols := strings.Join(columns, ", ")
	var records int64
	for _, q := range []string{
		createTable("usage_records_rekeyed", "INTEGER"),
		`INSERT INTO usage_records_rekeyed (` + cols + `) SELECT ` + cols + ` FROM usage_records ORDER BY ts`,
		`DROP TABLE usage_records`, // and its indexes
		`ALTER TABLE usage_records_rekeyed RENAME TO usage_records`,
		tenantIndex,
	} {
		res, err := tx.ExecContext(ctx, q)
		if err != nil {
			return err
		}
		if strings.HasPrefix(q, "INSERT") {
			records, _ = res.RowsAffected()
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	log.Info("usage ledger rebuilt", "records", records, "took", time.Since(began).Round(time.Millisecond).String())
	return nil
}

func (s *sqlStore) Close() error {
	for _, st := range []*sql.Stmt{s.rows, s.row} {
		if st != nil {
			st.Close()
		}
	}
	return s.db.Close()
}

// Insert writes rs in one transaction; rows whose request id is stored already are skipped.
func (s *sqlStore) Insert(ctx context.Context, rs []Record) error {
	_, err := s.insert(ctx, rs)
	return err
}

// insert is Insert, saying how many of rs the store did not hold yet (ImportEnvoyLog).
func (s *sqlStore) insert(ctx context.Context, rs []Record) (int64, error) {
	if len(rs) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	var added int64
	exec := func(st *sql.Stmt, args ...any) error {
		res, err := st.ExecContext(ctx, args...)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		added += n
		return err
	}
	if s.row != nil {
		many, one := tx.StmtContext(ctx, s.rows), tx.StmtContext(ctx, s.row)
		args := make([]any, 0, sqliteRows*len(columns))
		for len(rs) >= sqliteRows {
			args = args[:0]
			for _, r := range rs[:sqliteRows] {
				args = append(args, rowValues(r)...)
			}
			if err := exec(many, args...); err != nil {
				return 0, err
			}
			rs = rs[sqliteRows:]
		}
		for _, r := range rs {
			if err := exec(one, rowValues(r)...); err != nil {
				return 0, err
			}
		}
		return added, tx.Commit()
	}
	const perStmt = 200 // rows per statement: 5,200 parameters, below PostgreSQL's 65,535
	for start := 0; start < len(rs); start += perStmt {
		chunk := rs[start:min(start+perStmt, len(rs))]
		args := make([]any, 0, len(chunk)*len(columns))
		for _, r := range chunk {
			args = append(args, rowValues(r)...)
		}
		res, err := tx.ExecContext(ctx, insertStatement(s.d, len(chunk)), args...)
		if err != nil {
			return 0, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, err
		}
		added += n
	}
	return added, tx.Commit()
}

// insertStatement inserts rows records, skipping those whose request id is stored.
func insertStatement(d dialect, rows int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO usage_records (" + strings.Join(columns, ", ") + ") VALUES ")
	n := 0
	for i := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range columns {
			if j > 0 {
				b.WriteString(", ")
			}
			n++
			b.WriteString(d.placehold(n))
		}
		b.WriteByte(')')
	}
	// No conflict target: a PostgreSQL table keeps the key it was created with, the request
	// id alone or (ts, request_id) (rekeySQLite); with either, a record delivered twice is
	// stored once.
	b.WriteString(" ON CONFLICT DO NOTHING")
	return b.String()
}

func rowValues(r Record) []any {
	var cost any
	if r.Cost != nil {
		cost = *r.Cost
	}
	t := r.Time.UTC()
	return []any{
		r.RequestID, t.UnixMilli(), t.Format(time.DateOnly), r.Region, r.Route, r.Upstream, r.Caller, r.Tenant, r.Model(),
		r.RequestedModel, r.ReportedModel, b2i(r.Stream), r.Status, r.Duration.Microseconds(), r.TTFB.Microseconds(),
		r.InputTokens, r.OutputTokens, r.CachedTokens, r.ReasoningTok, string(r.Extraction),
		r.RequestBytes, r.ResponseBytes, r.Attempts, cost, r.Currency, b2i(r.PriceMissing),
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *sqlStore) Totals(ctx context.Context, q Query) ([]Total, error) {
	cols := make([]string, 0, len(q.By)+1)
	for _, d := range q.By {
		c, ok := Dimensions[d]
		if !ok {
			return nil, fmt.Errorf("by: unknown dimension %q", d)
		}
		cols = append(cols, c)
	}
	group := append(append([]string{}, cols...), "currency")
	query := "SELECT " + strings.Join(group, ", ") + `, COUNT(*), SUM(input_tokens), SUM(output_tokens),
	SUM(cached_tokens), SUM(reasoning_tokens), COALESCE(SUM(cost), 0), SUM(price_missing)
	FROM usage_records WHERE ts >= ` + s.d.placehold(1) + ` AND ts < ` + s.d.placehold(2) +
		" GROUP BY " + strings.Join(group, ", ") + " ORDER BY " + strings.Join(group, ", ")
	rows, err := s.db.QueryContext(ctx, query, q.Since.UnixMilli(), q.Until.UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Total
	for rows.Next() {
		keys := make([]string, len(group))
		var t Total
		dest := make([]any, 0, len(group)+7)
		for i := range keys {
			dest = append(dest, &keys[i])
		}
		dest = append(dest, &t.Requests, &t.InputTokens, &t.OutputTokens, &t.CachedTokens, &t.ReasoningTokens, &t.Cost, &t.PriceMissing)
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		t.Group = make(map[string]string, len(q.By))
		for i, d := range q.By {
			t.Group[d] = keys[i]
		}
		t.Currency = keys[len(keys)-1]
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *sqlStore) Records(ctx context.Context, tenant string, from, to time.Time) ([]Record, error) {
	query := "SELECT " + strings.Join(columns, ", ") + " FROM usage_records WHERE tenant = " + s.d.placehold(1) +
		" AND ts >= " + s.d.placehold(2) + " AND ts < " + s.d.placehold(3) + " ORDER BY ts, request_id"
	rows, err := s.db.QueryContext(ctx, query, tenant, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var (
			r                    Record
			ts, dur, ttfb        int64
			day, mdl, extraction string
			stream, priceMissing int
			cost                 sql.NullFloat64
		)
		if err := rows.Scan(&r.RequestID, &ts, &day, &r.Region, &r.Route, &r.Upstream, &r.Caller, &r.Tenant, &mdl,
			&r.RequestedModel, &r.ReportedModel, &stream, &r.Status, &dur, &ttfb,
			&r.InputTokens, &r.OutputTokens, &r.CachedTokens, &r.ReasoningTok, &extraction,
			&r.RequestBytes, &r.ResponseBytes, &r.Attempts, &cost, &r.Currency, &priceMissing); err != nil {
			return nil, err
		}
		r.Time = time.UnixMilli(ts).UTC()
		r.Duration, r.TTFB = time.Duration(dur)*time.Microsecond, time.Duration(ttfb)*time.Microsecond
		r.Stream, r.PriceMissing, r.Extraction = stream == 1, priceMissing == 1, Extraction(extraction)
		if cost.Valid {
			r.Cost = &cost.Float64
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *sqlStore) DeleteBefore(ctx context.Context, t time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM usage_records WHERE ts < "+s.d.placehold(1), t.UnixMilli())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
