package testenv

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/llmedge/llmedge/internal/stack"
)

// StartPostgres runs a throwaway PostgreSQL (Debian's, from make tools) with database db on
// a unix socket in a directory of its own, stopped when t ends (its log shown if t
// failed), and writes the DSN to a file, as usage.postgres.dsn_file takes it.
func StartPostgres(t testing.TB, db string) (pg *stack.PostgresProcess, dsnFile string) {
	t.Helper()
	// Not t.TempDir: its parent is private to root, and the server runs unprivileged.
	dir, err := os.MkdirTemp("", "llmedge-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &stack.Runner{Dir: dir, LogDir: t.TempDir()}
	pg, err = r.StartPostgres(t.Context(), stack.Postgres{Dir: filepath.Join(dir, "pg")}, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pg.Stop()
		if t.Failed() {
			if p := pg.Process(); p != nil {
				t.Logf("postgres log:\n%s", p.LogTail(40))
			}
		}
	})
	dsnFile = filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(dsnFile, []byte(pg.DSN(db)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return pg, dsnFile
}
