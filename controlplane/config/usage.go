package config

import (
	"fmt"
	"math"
	"regexp"
	"sort"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Usage ledger defaults (docs/CONFIG.md#usage).
const (
	DefaultUsageRetentionDays = 400
	DefaultUsageSQLitePath    = "usage.db"
	DefaultUsageSpoolDir      = "usage-spool"
	DefaultUsageSpoolMaxBytes = 1 << 30
	minUsageSpoolMaxBytes     = 1 << 20

	DefaultAccessLogDir           = "access-log"
	DefaultAccessLogRetentionDays = 14 // the audit minimum
	DefaultAccessLogMaxFileBytes  = 100 << 20
	minAccessLogMaxFileBytes      = 1 << 20
)

var currencyRE = regexp.MustCompile(`^[A-Z]{3}$`)

func validateUsage(u *Usage, ups map[string]Upstream, c *collector) model.Usage {
	out := model.Usage{
		Enabled: true, Store: "sqlite", SQLitePath: DefaultUsageSQLitePath, RetentionDays: DefaultUsageRetentionDays,
		SpoolDir: DefaultUsageSpoolDir, SpoolMaxBytes: DefaultUsageSpoolMaxBytes,
		AccessLog: model.AccessLog{Enabled: true, Dir: DefaultAccessLogDir,
			RetentionDays: DefaultAccessLogRetentionDays, MaxFileBytes: DefaultAccessLogMaxFileBytes},
	}
	if u == nil {
		return out
	}
	if u.Enabled != nil {
		out.Enabled = *u.Enabled
	}
	if !out.Enabled && u.AccessLog.Enabled != nil && *u.AccessLog.Enabled {
		c.add("usage.access_log.enabled", "true, but usage.enabled is false: the files are written from the usage records Envoy sends")
	}
	switch u.Store {
	case "", "sqlite":
		if u.Postgres.DSNFile != "" {
			c.add("usage.postgres.dsn_file", "set, but usage.store is sqlite; set usage.store: postgres to use it")
		}
		if u.SQLite.Path != "" {
			out.SQLitePath = u.SQLite.Path
		}
	case "postgres":
		out.Store = "postgres"
		if u.Postgres.DSNFile == "" {
			c.add("usage.postgres.dsn_file", "required when usage.store is postgres: a file holding the DSN (postgres://user:password@host/db), never the DSN itself")
		}
		if u.SQLite.Path != "" {
			c.add("usage.sqlite.path", "set, but usage.store is postgres")
		}
		out.PostgresDSNFile = u.Postgres.DSNFile
	default:
		c.add("usage.store", "%q: must be sqlite or postgres", u.Store)
	}
	switch {
	case u.RetentionDays < 0:
		c.add("usage.retention_days", "must be positive (default %d)", DefaultUsageRetentionDays)
	case u.RetentionDays > 0:
		out.RetentionDays = u.RetentionDays
	}
	if u.Spool.Dir != "" {
		out.SpoolDir = u.Spool.Dir
	}
	switch {
	case u.Spool.MaxBytes < 0 || (u.Spool.MaxBytes > 0 && u.Spool.MaxBytes < minUsageSpoolMaxBytes):
		c.add("usage.spool.max_bytes", "%d: must be at least %d (1 MiB)", u.Spool.MaxBytes, minUsageSpoolMaxBytes)
	case u.Spool.MaxBytes > 0:
		out.SpoolMaxBytes = u.Spool.MaxBytes
	}
	validateAccessLog(u.AccessLog, &out.AccessLog, c)
	if u.EnvoyAccessLog != nil && *u.EnvoyAccessLog {
		if !out.Enabled {
			c.add("usage.envoy_access_log", "true, but usage.enabled is false: there is no ledger to import Envoy's lines into")
		}
		out.EnvoyAccessLog = out.Enabled
	}
	seen := map[[2]string]int{}
	for i, p := range u.Prices {
		path := fmt.Sprintf("usage.prices[%d]", i)
		if p.Upstream == "" {
			c.add(path+".upstream", "required")
		} else if _, ok := ups[p.Upstream]; !ok {
			c.add(path+".upstream", "%q is not a defined upstream", p.Upstream)
		}
		if p.Model == "" {
			c.add(path+".model", "required: the model name exactly as callers request it")
		}
		if prev, dup := seen[[2]string{p.Upstream, p.Model}]; dup && p.Model != "" {
			c.add(path, "upstream %q model %q is already priced at usage.prices[%d]", p.Upstream, p.Model, prev)
		}
		seen[[2]string{p.Upstream, p.Model}] = i
		if !currencyRE.MatchString(p.Currency) {
			c.add(path+".currency", "%q: must be an ISO 4217 code such as USD", p.Currency)
		}
		price := model.Price{Upstream: p.Upstream, Model: p.Model, Currency: p.Currency}
		price.Input = perMillion(path+".input", p.Input, true, c)
		price.Output = perMillion(path+".output", p.Output, true, c)
		price.Cached = price.Input
		if p.Cached != nil {
			price.Cached = perMillion(path+".cached", p.Cached, false, c)
		}
		out.Prices = append(out.Prices, price)
	}
	sort.Slice(out.Prices, func(i, j int) bool {
		a, b := out.Prices[i], out.Prices[j]
		if a.Upstream != b.Upstream {
			return a.Upstream < b.Upstream
		}
		return a.Model < b.Model
	})
	return out
}

func validateAccessLog(a UsageAccessLog, out *model.AccessLog, c *collector) {
	if a.Enabled != nil {
		out.Enabled = *a.Enabled
	}
	if a.Dir != "" {
		out.Dir = a.Dir
	}
	switch {
	case a.RetentionDays < 0:
		c.add("usage.access_log.retention_days", "%d: must be positive (default %d, the audit minimum)", a.RetentionDays, DefaultAccessLogRetentionDays)
	case a.RetentionDays > 0:
		out.RetentionDays = a.RetentionDays
	}
	switch {
	case a.MaxFileBytes < 0 || (a.MaxFileBytes > 0 && a.MaxFileBytes < minAccessLogMaxFileBytes):
		c.add("usage.access_log.max_file_bytes", "%d: must be at least %d (1 MiB)", a.MaxFileBytes, minAccessLogMaxFileBytes)
	case a.MaxFileBytes > 0:
		out.MaxFileBytes = a.MaxFileBytes
	}
}

// warnAccessLog says when the access log keeps less than the audit minimum, or nothing.
func warnAccessLog(cfg *model.Config) {
	a := cfg.Usage.AccessLog
	if !cfg.Usage.Enabled || !a.Enabled {
		for _, r := range cfg.Regions {
			if r.AccessLogOff {
				cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("regions.%s.access_log: off with no access log files either: this region's requests leave no access log line anywhere", r.Name))
			}
		}
	}
	switch {
	case !cfg.Usage.Enabled:
		cfg.Warnings = append(cfg.Warnings, "usage.enabled: false: Envoy sends no usage records, so neither the usage ledger nor the access log files get new ones")
	case !a.Enabled:
		cfg.Warnings = append(cfg.Warnings, "usage.access_log.enabled: false: no access log files are written (audits usually want 14 days of them)")
	case a.RetentionDays < DefaultAccessLogRetentionDays:
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("usage.access_log.retention_days: %d keeps less than %d days, the usual audit minimum", a.RetentionDays, DefaultAccessLogRetentionDays))
	}
}

func perMillion(path string, v *float64, required bool, c *collector) float64 {
	if v == nil {
		if required {
			c.add(path, "required: price per million tokens (0 when free)")
		}
		return 0
	}
	if *v < 0 || math.IsNaN(*v) || math.IsInf(*v, 0) {
		c.add(path, "%v: must be a price per million tokens, 0 or more", *v)
		return 0
	}
	return *v
}

// DefaultUsage is the ledger's settings when the routes YAML has no usage section (or no
// valid routes YAML has been loaded yet).
func DefaultUsage() model.Usage { return validateUsage(nil, nil, &collector{}) }
