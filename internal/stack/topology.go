package stack

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Scope says how often a component runs in a stack.
type Scope int

const (
	// Shared components run once for every region of the stack.
	Shared Scope = iota
	// PerRegion components run once per region.
	PerRegion
)

// Component is one part of an llmedge edge, a process of its own unless In says
// otherwise. Its Name is also its compose service; Ports are the roles of the loopback TCP
// ports it listens on (health, metrics, the edge itself: nothing that carries or guards a
// secret); Socket, if set, names the unix socket of its internal hop (SocketFile).
type Component struct {
	Name   string
	Scope  Scope
	Ports  []string
	Socket string
	// Demo components stand in for the providers (compose profile "demo").
	Demo bool
	// In names the component whose process runs this one: "envoy" for extauthz inside
	// Envoy (the dynamic module). Such a component has no process, log or compose service
	// of its own; its ports and socket stay the same, served by the host's process.
	In string
}

// Port roles.
const (
	RoleHTTP    = "http"    // health, status, metrics (or the fake upstream's API)
	RoleDebug   = "debug"   // ratelimit /rlconfig
	RoleMetrics = "metrics" // ratelimit Prometheus
	RoleEdge    = "edge"    // Envoy's listener for callers (regions.<r>.listen)
	RoleAdmin   = "admin"   // Envoy's admin API
)

// Topology lists the components of an edge in the order they start: Redis before
// ratelimit (which exits when Redis does not answer at its start), the control plane
// before everything it configures, ratelimit before extauthz (which asks it about every
// allowed request's quotas), Envoy last (it fails closed without extauthz).
// authzInEnvoy puts each region's extauthz inside its Envoy (In "envoy"), as the routes
// YAML's extauthz_in_envoy does; `make run` and compose.yaml run that way by default
// (DefaultAuthzInEnvoy). Ports and sockets are the same either way.
// Adding a component means adding it here and to Edge's starters (a test checks both),
// and to compose.yaml (deploy/compose_test.go checks that).
func Topology(authzInEnvoy bool) []Component {
	authzIn := ""
	if authzInEnvoy {
		authzIn = "envoy"
	}
	return []Component{
		{Name: "redis", Scope: Shared, Socket: "redis"},
		{Name: "fakellm", Scope: Shared, Ports: []string{RoleHTTP}, Demo: true},
		{Name: "controlplane", Scope: Shared, Ports: []string{RoleHTTP}, Socket: "xds"},
		{Name: "ratelimit", Scope: PerRegion, Ports: []string{RoleHTTP, RoleDebug, RoleMetrics}, Socket: "ratelimit"},
		{Name: "extauthz", Scope: PerRegion, Ports: []string{RoleHTTP}, Socket: "extauthz", In: authzIn},
		{Name: "envoy", Scope: PerRegion, Ports: []string{RoleEdge, RoleAdmin}},
	}
}

// DefaultAuthzInEnvoy is how `make run` and compose.yaml run extauthz: inside each
// region's Envoy, because examples/routes.yaml and examples/compose/routes.yaml set
// regions.<r>.extauthz_in_envoy (the schema's default stays false). cmd/llmedge-run and
// deploy/compose_test.go check those files against it.
const DefaultAuthzInEnvoy = true

// components is the topology for what does not depend on where extauthz runs: ports and
// sockets.
func components() []Component { return Topology(DefaultAuthzInEnvoy) }

// PortKey names one listening port of a stack; Region is "" for a Shared component.
type PortKey struct{ Component, Region, Role string }

func (k PortKey) String() string {
	if k.Region == "" {
		return k.Component + " " + k.Role
	}
	return k.Component + "-" + k.Region + " " + k.Role
}

// PortKeys lists every port of the topology for these regions, in start order.
func PortKeys(regions []string) []PortKey {
	var keys []PortKey
	for _, c := range components() {
		scopes := []string{""}
		if c.Scope == PerRegion {
			scopes = regions
		}
		for _, r := range scopes {
			for _, role := range c.Ports {
				keys = append(keys, PortKey{c.Name, r, role})
			}
		}
	}
	return keys
}

// ProcessName is how a component's process (and its log file) is called: the
// component's name, with -<region> for a PerRegion one.
func ProcessName(component, region string) string {
	if region == "" {
		return component
	}
	return component + "-" + region
}

// LocalRegions are the regions `make run` starts.
func LocalRegions() []string { return []string{"hk", "sg"} }

// LocalPort is one port of `make run`: its default and the variable that moves it.
type LocalPort struct {
	Key     PortKey
	Env     string // LLMEDGE_HK_PORT...
	Default int
}

// LocalPorts is `make run`'s port plan for LocalRegions: region i gets the defaults
// below plus i (hk 10000, sg 10001...). compose.yaml publishes the same defaults for a
// region, which deploy/compose_test.go checks. The internal hops (xDS, extauthz,
// ratelimit, Redis) have no port: they are unix sockets (Sockets).
func LocalPorts() []LocalPort {
	ports := []LocalPort{
		{PortKey{"fakellm", "", RoleHTTP}, "LLMEDGE_FAKE_PORT", 8090},
		{PortKey{"controlplane", "", RoleHTTP}, "LLMEDGE_HTTP_PORT", 18080},
	}
	perRegion := []struct {
		component, role, suffix string
		base                    int
	}{
		{"envoy", RoleEdge, "PORT", 10000},
		{"envoy", RoleAdmin, "ADMIN_PORT", 9901},
		{"extauthz", RoleHTTP, "AUTHZ_HTTP_PORT", 10200},
		{"ratelimit", RoleHTTP, "RATELIMIT_HTTP_PORT", 10400},
		{"ratelimit", RoleDebug, "RATELIMIT_DEBUG_PORT", 10500},
		{"ratelimit", RoleMetrics, "RATELIMIT_METRICS_PORT", 10600},
	}
	for i, r := range LocalRegions() {
		for _, p := range perRegion {
			ports = append(ports, LocalPort{PortKey{p.component, r, p.role},
				"LLMEDGE_" + strings.ToUpper(r) + "_" + p.suffix, p.base + i})
		}
	}
	return ports
}

// obsoletePortVars moved internal hops that are unix sockets now.
var obsoletePortVars = []string{"LLMEDGE_REDIS_PORT", "LLMEDGE_XDS_PORT",
	"LLMEDGE_HK_AUTHZ_PORT", "LLMEDGE_SG_AUTHZ_PORT", "LLMEDGE_HK_RATELIMIT_PORT", "LLMEDGE_SG_RATELIMIT_PORT"}

// ResolveLocalPorts applies the LLMEDGE_*_PORT variables (looked up with getenv) to
// LocalPorts' defaults. Every bad value is reported, naming its variable; so is a
// variable of a port that is a unix socket now, rather than silently ignored.
func ResolveLocalPorts(getenv func(string) string) (map[PortKey]int, error) {
	out := map[PortKey]int{}
	var bad []string
	for _, v := range obsoletePortVars {
		if getenv(v) != "" {
			bad = append(bad, v+": no longer used: xDS, extauthz, ratelimit and Redis listen on unix sockets in the run directory's sock/")
		}
	}
	for _, p := range LocalPorts() {
		out[p.Key] = p.Default
		if v := getenv(p.Env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				bad = append(bad, fmt.Sprintf("%s=%q: not a port", p.Env, v))
				continue
			}
			out[p.Key] = n
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return out, nil
}

// BusyPorts returns the ports of ports that cannot be bound now, with what they are for.
func BusyPorts(ports map[PortKey]int) []string {
	var busy []string
	for _, k := range PortKeys(regionsOf(ports)) {
		if p, ok := ports[k]; ok && !PortFree(p) {
			busy = append(busy, fmt.Sprintf("%d (%s)", p, k))
		}
	}
	return busy
}

func regionsOf(ports map[PortKey]int) []string {
	var out []string
	for k := range ports {
		if k.Region != "" && !slices.Contains(out, k.Region) {
			out = append(out, k.Region)
		}
	}
	slices.Sort(out)
	return out
}
