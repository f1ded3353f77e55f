package config

import (
	"fmt"
	"sort"

	"github.com/llmedge/llmedge/controlplane/model"
)

// SortRoutes orders routes the way Envoy must try them, most specific first, so that the
// outcome never depends on map or file order: exact paths before prefixes, longer prefixes
// first, then routes with more header conditions, then routes limited to named hosts
// before routes for any host, then by name. It is the only place that orders routes:
// translate emits them in this order.
func SortRoutes(rs []model.Route) {
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if (a.Path != "") != (b.Path != "") {
			return a.Path != ""
		}
		la, lb := len(a.Path)+len(a.Prefix), len(b.Path)+len(b.Prefix)
		if la != lb {
			return la > lb
		}
		if len(a.Headers) != len(b.Headers) {
			return len(a.Headers) > len(b.Headers)
		}
		if (len(a.Hosts) > 0) != (len(b.Hosts) > 0) {
			return len(a.Hosts) > 0
		}
		return a.Name < b.Name
	})
}

// checkRouteConflicts rejects two routes that match exactly the same requests: one of them
// could never be reached, which is always a mistake.
func checkRouteConflicts(rs []model.Route, c *collector) {
	seen := map[string]string{}
	for _, r := range rs {
		key := fmt.Sprintf("%q|%q|%q|%+v", r.Path, r.Prefix, r.Hosts, r.Headers)
		if prev, ok := seen[key]; ok {
			c.add("routes."+r.Name+".match", "matches the same requests as routes.%s; one of them could never be reached", prev)
			continue
		}
		seen[key] = r.Name
	}
}
