package main

import "github.com/llmedge/llmedge/internal/benchconfig"

// routesYAML is the shared benchmark config (internal/benchconfig: 5 regions, 20 https
// upstreams, 1,000 routes, some bound to hosts or headers; no callers, no quotas). rename,
// when set, renames route 0, which every region serves: the smallest edit that changes
// the routes version of every region.
func routesYAML(rename string) []byte {
	return []byte(benchconfig.YAML(benchconfig.Options{Rename: rename}))
}
