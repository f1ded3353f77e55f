package stack

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"
)

func TestPostgresRestartKeepsData(t *testing.T) {
	dir, err := os.MkdirTemp("", "llmedge-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the server may run as another user
		t.Fatal(err)
	}
	r := &Runner{Dir: dir, LogDir: t.TempDir()}
	pg, err := r.StartPostgres(t.Context(), Postgres{Dir: filepath.Join(dir, "pg")}, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	db, err := sql.Open("pgx", pg.DSN("ledger"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	pg.Stop()
	if err := db.PingContext(t.Context()); err == nil {
		t.Fatal("ping succeeded with the server stopped")
	}
	if err := pg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := db.QueryRowContext(t.Context(), "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("after restart: %v %v", v, err)
	}
	if err := pg.CreateDatabase(t.Context(), "bad-name; DROP"); err == nil {
		t.Error("a database name that is not an identifier was accepted")
	}
}
