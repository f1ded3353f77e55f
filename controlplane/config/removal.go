package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Removal is what an edit takes away from the serving config. The control plane holds a
// destructive edit back until the routes YAML has stayed unchanged for a settle period: a
// file written in two steps (a generator, `>` redirection, a network file system) is
// often valid at its midpoint, and applying that midpoint would refuse every request until
// the second half lands. Names are shown, never tokens or keys.
type Removal struct {
	Regions   Loss `json:"regions"`
	Upstreams Loss `json:"upstreams"`
	Routes    Loss `json:"routes"`
	Callers   Loss `json:"callers"`
	// RegionsWithoutCallers had at least one caller and would have none: every request
	// there would be refused.
	RegionsWithoutCallers []string `json:"regions_without_callers,omitempty"`
	// RegionsWithoutRoutes had at least one route and would have none: every request
	// there would get 404.
	RegionsWithoutRoutes []string `json:"regions_without_routes,omitempty"`
}

// Loss counts the names of one kind an edit removes.
type Loss struct {
	Before  int      `json:"before"`
	Removed int      `json:"removed"`
	Names   []string `json:"names,omitempty"` // sorted, at most maxLossNames
}

// maxLossNames keeps a mass removal's report readable (and /status small).
const maxLossNames = 20

// mass is "more than half of them at once".
func (l Loss) mass() bool { return l.Removed > 0 && 2*l.Removed > l.Before }

// Destructive reports whether the edit must wait for the settle period.
func (r Removal) Destructive() bool {
	return r.Regions.mass() || r.Upstreams.mass() || r.Routes.mass() || r.Callers.mass() ||
		len(r.RegionsWithoutCallers) > 0 || len(r.RegionsWithoutRoutes) > 0
}

// Reasons says in words why the edit is destructive; empty when it is not.
func (r Removal) Reasons() []string {
	var out []string
	for _, k := range []struct {
		kind string
		l    Loss
	}{{"regions", r.Regions}, {"upstreams", r.Upstreams}, {"routes", r.Routes}, {"callers", r.Callers}} {
		if k.l.mass() {
			out = append(out, fmt.Sprintf("removes %d of %d %s (%s)", k.l.Removed, k.l.Before, k.kind, names(k.l)))
		}
	}
	if len(r.RegionsWithoutCallers) > 0 {
		out = append(out, "leaves region(s) "+strings.Join(r.RegionsWithoutCallers, ", ")+" with no caller: every request there would be refused")
	}
	if len(r.RegionsWithoutRoutes) > 0 {
		out = append(out, "leaves region(s) "+strings.Join(r.RegionsWithoutRoutes, ", ")+" with no route: every request there would get 404")
	}
	return out
}

func names(l Loss) string {
	s := strings.Join(l.Names, ", ")
	if more := l.Removed - len(l.Names); more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// Compare says what next removes from prev. A nil prev (nothing serving yet) removes nothing.
func Compare(prev, next *model.Config) Removal {
	var r Removal
	if prev == nil || next == nil {
		return r
	}
	r.Regions = loss(prev.RegionNames(), next.RegionNames())
	r.Upstreams = loss(upstreamNames(prev), upstreamNames(next))
	r.Routes = loss(routeNames(prev), routeNames(next))
	r.Callers = loss(callerNames(prev), callerNames(next))
	for _, pr := range prev.Regions {
		nr, ok := next.Region(pr.Name)
		if !ok {
			continue // counted in Regions
		}
		if regionCallers(prev, pr) > 0 && regionCallers(next, nr) == 0 {
			r.RegionsWithoutCallers = append(r.RegionsWithoutCallers, pr.Name)
		}
		if regionRoutes(prev, pr) > 0 && regionRoutes(next, nr) == 0 {
			r.RegionsWithoutRoutes = append(r.RegionsWithoutRoutes, pr.Name)
		}
	}
	return r
}

// Hazards lists what makes a config refuse everything somewhere, whatever came before it:
// `llmedge validate` warns about them.
func Hazards(cfg *model.Config) []string {
	var out []string
	if len(cfg.Callers) == 0 {
		out = append(out, "callers: none defined; every request will be refused with 401")
	}
	for _, r := range cfg.Regions {
		if len(cfg.Callers) > 0 && regionCallers(cfg, r) == 0 {
			out = append(out, fmt.Sprintf("regions.%s: no caller may use any of its upstreams; every request there will be refused", r.Name))
		}
		if regionRoutes(cfg, r) == 0 {
			out = append(out, fmt.Sprintf("regions.%s: no route leads to its upstreams; every request there will get 404", r.Name))
		}
	}
	return out
}

// regionCallers counts the callers a region's extauthz admits: those allowed at least one
// of the region's upstreams (translate's authz policy applies the same rule; a test in
// package controlplane pins the two together). Disabled callers count: disabling is the
// immediate way to refuse a caller and must not wait for the settle period.
func regionCallers(cfg *model.Config, r model.Region) int {
	n := 0
	for _, c := range cfg.Callers {
		if slices.ContainsFunc(c.Upstreams, func(u string) bool { return slices.Contains(r.Upstreams, u) }) {
			n++
		}
	}
	return n
}

// regionRoutes counts the routes a region emits: those to an upstream it serves.
func regionRoutes(cfg *model.Config, r model.Region) int {
	n := 0
	for _, rt := range cfg.Routes {
		if slices.Contains(r.Upstreams, rt.Upstream) {
			n++
		}
	}
	return n
}

func loss(before, after []string) Loss {
	kept := make(map[string]bool, len(after))
	for _, n := range after {
		kept[n] = true
	}
	l := Loss{Before: len(before)}
	for _, n := range before {
		if !kept[n] {
			l.Removed++
			if len(l.Names) < maxLossNames {
				l.Names = append(l.Names, n)
			}
		}
	}
	slices.Sort(l.Names)
	return l
}

func upstreamNames(c *model.Config) []string {
	out := make([]string, len(c.Upstreams))
	for i, u := range c.Upstreams {
		out[i] = u.Name
	}
	return out
}

func routeNames(c *model.Config) []string {
	out := make([]string, len(c.Routes))
	for i, r := range c.Routes {
		out[i] = r.Name
	}
	return out
}

func callerNames(c *model.Config) []string {
	out := make([]string, len(c.Callers))
	for i, cl := range c.Callers {
		out[i] = cl.Name
	}
	return out
}
