package config

import (
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

var (
	headerNameRE = regexp.MustCompile(`^[a-z0-9!#$%&'*+.^_|~-]+$`)
	hostnameRE   = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

// LoadConfig loads and validates the routes YAML at path. Like Load, it returns the Source
// whenever the files could be read, even when they are invalid.
func LoadConfig(path string) (*Source, *model.Config, error) {
	src, err := Load(path)
	if err != nil {
		return src, nil, err
	}
	cfg, err := Validate(src.File)
	if err != nil {
		return src, nil, err
	}
	return src, cfg, nil
}

// Validate checks a decoded routes YAML whole and builds the model. It reports every
// problem, each with its field path; any problem rejects the whole document.
func Validate(f File) (*model.Config, error) {
	var c collector
	cfg := &model.Config{}

	switch f.Version {
	case SchemaVersion:
	case 0:
		c.add("version", "required; this build reads version %d", SchemaVersion)
	default:
		c.add("version", "unsupported version %d; this build reads version %d", f.Version, SchemaVersion)
	}
	if len(f.Regions) == 0 {
		c.add("regions", "at least one region is required")
	}
	if len(f.Upstreams) == 0 {
		c.add("upstreams", "at least one upstream is required")
	}

	for _, name := range sortedKeys(f.Upstreams) {
		if u, ok := validateUpstream("upstreams."+name, name, f.Upstreams[name], f.Regions, &c, cfg); ok {
			cfg.Upstreams = append(cfg.Upstreams, u)
		}
	}
	for _, name := range sortedKeys(f.Regions) {
		if r, ok := validateRegion("regions."+name, name, f.Regions[name], f.Upstreams, &c, cfg); ok {
			cfg.Regions = append(cfg.Regions, r)
		}
	}
	validatePeers(f, cfg, &c)
	for _, name := range sortedKeys(f.Routes) {
		if r, ok := validateRoute("routes."+name, name, f.Routes[name], f.Upstreams, &c, cfg); ok {
			cfg.Routes = append(cfg.Routes, r)
		}
	}
	checkRouteConflicts(cfg.Routes, &c)
	cfg.Callers = validateCallers(f.Callers, f.Upstreams, &c)
	validateRateLimitService(f, cfg, &c)
	cfg.Usage = validateUsage(f.Usage, f.Upstreams, &c)
	// The probes find their edge paths in the order Envoy tries the routes.
	SortRoutes(cfg.Routes)
	cfg.Probes = validateProbes(f.Probes, f, cfg, &c)
	cfg.Alerts = validateAlerts(f.Alerts, f.Regions, &c)
	if err := c.err(); err != nil {
		return nil, err
	}
	warnUnserved(cfg)
	warnInternalTransport(cfg)
	warnAccessLog(cfg)
	warnAlerts(cfg)
	sort.Strings(cfg.Warnings)
	return cfg, nil
}

func checkPath(p, v string, c *collector) {
	switch {
	case !strings.HasPrefix(v, "/"):
		c.add(p, "must start with /")
	case strings.ContainsAny(v, "?#"):
		c.add(p, "must not contain a query or fragment")
	case strings.ContainsAny(v, " \t\r\n"):
		c.add(p, "must not contain white space")
	}
}

func duration(p string, v, def, max time.Duration, c *collector) time.Duration {
	switch {
	case v == 0:
		return def
	case v < 0:
		c.add(p, "must be positive")
	case v < time.Millisecond:
		c.add(p, "must be at least 1ms")
	case v > max:
		c.add(p, "must be at most %s", max)
	}
	return v
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
