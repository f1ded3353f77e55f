package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/llmedge/llmedge/controlplane/model"
)

// maxRequests bounds a limit well inside the rate-limit service's uint32 counters.
const maxRequests = 1_000_000_000

// maxModelName is the longest model name a limit may name: longer names are clipped in
// the usage ledger, so a limit on one could never be reconciled with it.
const maxModelName = 256

// validateLimits checks one caller's or upstream's limits. allowedUpstreams is the
// caller's upstream list (a caller's limit may be scoped to one of them); nil for an
// upstream's own limits, which cannot be scoped further.
func validateLimits(p string, in []Limit, allowedUpstreams []string, isCaller bool, c *collector) []model.Limit {
	var out []model.Limit
	seen := map[string]string{}
	for i, l := range in {
		fp := fmt.Sprintf("%s.limits[%d]", p, i)
		n := len(c.errs)
		switch {
		case l.Requests != 0 && l.Tokens != 0:
			c.add(fp, "set requests or tokens, not both; write two limits to cap both")
		case l.Tokens != 0:
			if l.Tokens < 0 || l.Tokens > maxRequests {
				c.add(fp+".tokens", "must be 1-%d", maxRequests)
			}
		case l.Requests <= 0 || l.Requests > maxRequests:
			c.add(fp+".requests", "must be 1-%d (or set tokens for a token limit)", maxRequests)
		}
		if l.Model != "" && (strings.TrimSpace(l.Model) != l.Model || len(l.Model) > maxModelName) {
			c.add(fp+".model", "must be a model name as callers send it (no surrounding spaces, at most %d bytes)", maxModelName)
		}
		unit := model.Unit(l.Per)
		if !slices.Contains(model.Units, unit) {
			c.add(fp+".per", "must be second, minute, hour or day, not %q", l.Per)
		}
		if l.Upstream != "" {
			switch {
			case !isCaller:
				c.add(fp+".upstream", "only a caller's limit can be scoped to an upstream; an upstream's limits already are")
			case !slices.Contains(allowedUpstreams, l.Upstream):
				c.add(fp+".upstream", "the caller may not use upstream %q, so a limit on it would never apply", l.Upstream)
			}
		}
		kind := "request"
		if l.Tokens != 0 {
			kind = "token"
		}
		key := l.Upstream + "/" + l.Model + "/" + kind + "/" + l.Per
		if prev, dup := seen[key]; dup && len(c.errs) == n {
			scope := "the caller as a whole"
			if !isCaller {
				scope = "the upstream"
			} else if l.Upstream != "" {
				scope = "upstream " + l.Upstream
			}
			if l.Model != "" {
				scope += " and model " + l.Model
			}
			c.add(fp, "a second per-%s %s limit for %s (first: %s); keep one per window", l.Per, kind, scope, prev)
			continue
		}
		if len(c.errs) == n {
			seen[key] = fp
			out = append(out, model.Limit{Name: fp, Requests: uint32(l.Requests), Tokens: uint32(l.Tokens), Unit: unit, Upstream: l.Upstream, Model: l.Model, Shadow: l.Shadow})
		}
	}
	return out
}

// validateRateLimitService wires each region to its rate-limit service. It is required
// once any limit exists: a limit nobody enforces would be a silent lie.
func validateRateLimitService(f File, cfg *model.Config, c *collector) {
	need := cfg.HasLimits()
	for i := range cfg.Regions {
		r := &cfg.Regions[i]
		in := f.Regions[r.Name]
		p := "regions." + r.Name
		switch in.RateLimitFailure {
		case "", "allow":
		case "deny":
			r.RateLimitFailClosed = true
		default:
			c.add(p+".ratelimit_failure", "must be allow (serve when the rate-limit service is down) or deny, not %q", in.RateLimitFailure)
		}
		if in.RateLimit == "" {
			if need {
				c.add(p+".ratelimit", "required because limits are configured: this region's envoyproxy/ratelimit, unix:/abs/path.sock or host:port (for example 127.0.0.1:8081)")
			}
			continue
		}
		a, err := internalAddress(in.RateLimit)
		if err != nil {
			c.add(p+".ratelimit", "%v", err)
			continue
		}
		r.RateLimit = a
	}
}
