package config

import (
	"fmt"
	"slices"

	"github.com/llmedge/llmedge/controlplane/model"
)

// maxRequests bounds a limit well inside the rate-limit service's uint32 counters.
const maxRequests = 1_000_000_000

// validateLimits checks one caller's or upstream's limits. allowedUpstreams is the
// caller's upstream list (a caller's limit may be scoped to one of them); nil for an
// upstream's own limits, which cannot be scoped further.
func validateLimits(p string, in []Limit, allowedUpstreams []string, isCaller bool, c *collector) []model.Limit {
	var out []model.Limit
	seen := map[string]string{}
	for i, l := range in {
		fp := fmt.Sprintf("%s.limits[%d]", p, i)
		n := len(c.errs)
		if l.Requests <= 0 || l.Requests > maxRequests {
			c.add(fp+".requests", "must be 1-%d", maxRequests)
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
		key := l.Upstream + "/" + l.Per
		if prev, dup := seen[key]; dup && len(c.errs) == n {
			scope := "the caller as a whole"
			if !isCaller {
				scope = "the upstream"
			} else if l.Upstream != "" {
				scope = "upstream " + l.Upstream
			}
			c.add(fp, "a second per-%s limit for %s (first: %s); keep one per window", l.Per, scope, prev)
			continue
		}
		seen[key] = fp
		if len(c.errs) == n {
			out = append(out, model.Limit{Name: fp, Requests: uint32(l.Requests), Unit: unit, Upstream: l.Upstream, Shadow: l.Shadow})
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
