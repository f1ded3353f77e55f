package usage

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/model"
)

// FromConfig builds the ledger the routes YAML's usage section describes. Relative paths
// are resolved against stateDir. The store itself is opened by Run (and reopened while it
// is down).
func FromConfig(u model.Usage, stateDir string, log *slog.Logger, reg prometheus.Registerer) (*Ledger, error) {
	abs := func(p string) string { return resolve(stateDir, p) }
	spool, err := OpenSpool(abs(u.SpoolDir), u.SpoolMaxBytes)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	open := func(ctx context.Context) (Store, error) { return OpenSQLiteLogged(ctx, abs(u.SQLitePath), log) }
	if u.Store == "postgres" {
		dsnFile := abs(u.PostgresDSNFile)
		open = func(ctx context.Context) (Store, error) { return OpenPostgres(ctx, dsnFile) }
	}
	log.Info("usage ledger", "store", u.Store, "spool", abs(u.SpoolDir), "spool_max_bytes", u.SpoolMaxBytes, "retention_days", u.RetentionDays, "prices", len(u.Prices))
	return New(Options{
		Open: open, Spool: spool, Prices: NewPrices(u.Prices),
		Retention: time.Duration(u.RetentionDays) * 24 * time.Hour,
		Logger:    log, Metrics: reg,
	}), nil
}

// OpenStore opens the store u names, as FromConfig's ledger does (a relative SQLite path
// under stateDir), for a tool working on the ledger beside the control plane.
func OpenStore(ctx context.Context, u model.Usage, stateDir string) (Store, error) {
	if u.Store == "postgres" {
		return OpenPostgres(ctx, resolve(stateDir, u.PostgresDSNFile))
	}
	return OpenSQLite(ctx, resolve(stateDir, u.SQLitePath))
}

func resolve(stateDir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(stateDir, p)
}

// AccessLogFromConfig builds the access log files the usage section describes; nil when
// they are turned off. A relative dir is resolved against stateDir.
func AccessLogFromConfig(u model.Usage, stateDir string, log *slog.Logger, reg prometheus.Registerer) (*AccessLog, error) {
	a, dir := u.AccessLog, AccessLogDir(u, stateDir)
	if dir == "" {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log.Info("access log", "dir", dir, "retention_days", a.RetentionDays, "max_file_bytes", a.MaxFileBytes)
	return NewAccessLog(AccessLogOptions{
		Dir: dir, Retention: time.Duration(a.RetentionDays) * 24 * time.Hour, MaxFileBytes: a.MaxFileBytes,
		Logger: log, Metrics: reg,
	})
}

// AccessLogDir is where the access log files of u go (empty when they are off).
func AccessLogDir(u model.Usage, stateDir string) string {
	if !u.AccessLog.Enabled {
		return ""
	}
	if filepath.IsAbs(u.AccessLog.Dir) {
		return u.AccessLog.Dir
	}
	return filepath.Join(stateDir, u.AccessLog.Dir)
}

// SameStore reports whether two usage settings use the same store, spool and access log
// files; anything else (prices) applies to a running ledger at once.
func SameStore(a, b model.Usage) bool {
	return a.Store == b.Store && a.SQLitePath == b.SQLitePath && a.PostgresDSNFile == b.PostgresDSNFile &&
		a.SpoolDir == b.SpoolDir && a.SpoolMaxBytes == b.SpoolMaxBytes && a.RetentionDays == b.RetentionDays &&
		a.AccessLog == b.AccessLog
}
