package stack

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// PostgresStartTimeout is how long a PostgreSQL server may take to accept connections.
const PostgresStartTimeout = 30 * time.Second

// PostgresUnprivilegedUID runs the server when the caller is root: PostgreSQL refuses to
// run as root (tests and containers often are).
const PostgresUnprivilegedUID = 65534

// Postgres is how a throwaway PostgreSQL server runs for the usage ledger: its cluster in
// Dir/data, listening only on a unix socket in Dir (no TCP), trust authentication for the
// one local user, no fsync (a test or dev cluster: speed over durability).
type Postgres struct {
	Dir  string
	Port int    // names the socket file (.s.PGSQL.<port>); default 5432
	User string // the superuser initdb creates; default llmedge
}

func (p Postgres) port() int {
	if p.Port == 0 {
		return 5432
	}
	return p.Port
}

func (p Postgres) user() string { return or(p.User, "llmedge") }

// DSN is the connection string for database db over the unix socket.
func (p Postgres) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", p.Dir, p.port(), p.user(), db)
}

// PostgresTools finds initdb and postgres: $LLMEDGE_POSTGRES_BIN, else <tools>/bin (where
// scripts/tools.sh links them), else Debian's /usr/lib/postgresql/<version>/bin.
func PostgresTools() (initdb, postgres string, err error) {
	var dirs []string
	if d := os.Getenv("LLMEDGE_POSTGRES_BIN"); d != "" {
		dirs = append(dirs, d)
	} else {
		tools := os.Getenv("LLMEDGE_TOOLS")
		if tools == "" {
			if root, err := RepoRoot(); err == nil {
				tools = filepath.Join(root, ".tools")
			}
		}
		if tools != "" {
			dirs = append(dirs, filepath.Join(tools, "bin"))
		}
		debian, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		for i := len(debian) - 1; i >= 0; i-- { // newest version first
			dirs = append(dirs, debian[i])
		}
	}
	for _, d := range dirs {
		i, p := filepath.Join(d, "initdb"), filepath.Join(d, "postgres")
		if executable(i) && executable(p) {
			// Run the real files: the unprivileged server user may not be able to reach a
			// link inside the repository, and PostgreSQL finds its share dir from its path.
			ri, err1 := filepath.EvalSymlinks(i)
			rp, err2 := filepath.EvalSymlinks(p)
			if err := errors.Join(err1, err2); err != nil {
				return "", "", fmt.Errorf("stack: %w", err)
			}
			return ri, rp, nil
		}
	}
	return "", "", fmt.Errorf("stack: PostgreSQL's initdb and postgres not found in %v; run `make tools` (Debian package postgresql) or set LLMEDGE_POSTGRES_BIN", dirs)
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode().Perm()&0o111 != 0
}

// PostgresProcess is a running server. Stop and Start keep its cluster and socket, so
// clients reconnect to the restarted server with the same DSN.
type PostgresProcess struct {
	Postgres
	r        *Runner
	postgres string

	restarts
}

// StartPostgres creates the cluster (first time) and the databases, starts the server and
// returns once it accepts connections. Dir must be reachable by PostgresUnprivilegedUID
// when the caller is root (a directory of its own under /tmp is); an empty Dir becomes
// <runner dir>/postgres.
func (r *Runner) StartPostgres(ctx context.Context, s Postgres, databases ...string) (*PostgresProcess, error) {
	initdb, postgres, err := PostgresTools()
	if err != nil {
		return nil, err
	}
	if s.Dir == "" {
		s.Dir = filepath.Join(r.Dir, "postgres")
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := chownForPostgres(s.Dir); err != nil {
		return nil, err
	}
	data := filepath.Join(s.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		cmd := exec.CommandContext(ctx, initdb, "-D", data, "-U", s.user(), "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
		cmd.Env = BaseEnv()
		cmd.SysProcAttr = postgresCredential()
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("stack: initdb %s: %w\n%s", data, err, out)
		}
	}
	pp := &PostgresProcess{Postgres: s, r: r, postgres: postgres}
	if err := pp.Start(ctx); err != nil {
		return nil, err
	}
	for _, db := range databases {
		if err := pp.CreateDatabase(ctx, db); err != nil {
			pp.Stop()
			return nil, err
		}
	}
	return pp, nil
}

// Start runs the server (again, after Stop) and returns once it accepts connections.
func (pp *PostgresProcess) Start(ctx context.Context) error {
	name := pp.nextName("postgres")
	cmd := exec.Command(pp.postgres,
		"-D", filepath.Join(pp.Dir, "data"),
		"-k", pp.Dir,
		"-p", strconv.Itoa(pp.port()),
		"-c", "listen_addresses=",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
	)
	cmd.Env = BaseEnv()
	cmd.SysProcAttr = postgresCredential()
	p, err := StartCmd(name, pp.r.logPath(name), cmd)
	if err != nil {
		return err
	}
	if err := p.Await(ctx, PostgresStartTimeout, PostgresReady(pp.DSN("postgres"))); err != nil {
		p.Stop()
		return err
	}
	pp.set(p)
	return nil
}

// Stop shuts the server down with SIGINT, PostgreSQL's fast shutdown (SIGTERM's smart
// shutdown would wait for every client to leave), and SIGKILL after StopGrace.
func (pp *PostgresProcess) Stop() {
	p := pp.Process()
	if p == nil || p.Exited() {
		return
	}
	p.signal(syscall.SIGINT)
	if _, ok := p.WaitTimeout(StopGrace); !ok {
		p.Stop()
	}
}

// CreateDatabase creates db (an identifier: letters, digits, underscores).
func (pp *PostgresProcess) CreateDatabase(ctx context.Context, db string) error {
	if !nameOK(db) {
		return fmt.Errorf("stack: database name %q: letters, digits and _ only", db)
	}
	conn, err := sql.Open("pgx", pp.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "CREATE DATABASE "+db); err != nil {
		return fmt.Errorf("stack: create database %s: %w", db, err)
	}
	return nil
}

func nameOK(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// PostgresReady succeeds once a connection to dsn answers a ping.
func PostgresReady(dsn string) Check {
	return func(ctx context.Context) error {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return err
		}
		defer db.Close()
		return db.PingContext(ctx)
	}
}

// postgresCredential drops root for PostgreSQL, which refuses to run as root.
func postgresCredential() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{}
	if os.Geteuid() == 0 {
		attr.Credential = &syscall.Credential{Uid: PostgresUnprivilegedUID, Gid: PostgresUnprivilegedUID}
	}
	return attr
}

func chownForPostgres(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, PostgresUnprivilegedUID, PostgresUnprivilegedUID); err != nil {
			return errors.New("stack: postgres dir: " + err.Error())
		}
		return nil
	})
}
