package config

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"

	"github.com/llmedge/llmedge/controlplane/model"
)

func validateRoute(p, name string, r Route, ups map[string]Upstream, c *collector, cfg *model.Config) (model.Route, bool) {
	n := len(c.errs)
	out := model.Route{Name: name, Upstream: r.Upstream}
	m := r.Match
	switch {
	case m.Prefix != "" && m.Path != "":
		c.add(p+".match", "set prefix or path, not both")
	case m.Prefix == "" && m.Path == "":
		c.add(p+".match.prefix", "required (or match.path for one exact path)")
	case m.Prefix != "":
		checkPath(p+".match.prefix", m.Prefix, c)
		out.Prefix = m.Prefix
	default:
		checkPath(p+".match.path", m.Path, c)
		out.Path = m.Path
	}
	for i, h := range m.Hosts {
		hp := fmt.Sprintf("%s.match.hosts[%d]", p, i)
		host := strings.ToLower(h)
		if _, _, err := net.SplitHostPort(host); err == nil {
			// The listener strips the port from the host before routing.
			c.add(hp, "%q: write the host without a port; the edge ignores the port", h)
			continue
		}
		if !hostnameRE.MatchString(host) {
			c.add(hp, "%q is not a host name (wildcards only as a leading \"*.\")", h)
		}
		if slices.Contains(out.Hosts, strings.ToLower(h)) {
			c.add(hp, "%q is listed twice", h)
		}
		out.Hosts = append(out.Hosts, strings.ToLower(h))
	}
	sort.Strings(out.Hosts)
	for i, h := range m.Headers {
		hp := fmt.Sprintf("%s.match.headers[%d]", p, i)
		name := strings.ToLower(h.Name)
		if !headerNameRE.MatchString(name) {
			c.add(hp+".name", "must be a header name")
		}
		set := 0
		for _, b := range []bool{h.Exact != "", h.Prefix != "", h.Present} {
			if b {
				set++
			}
		}
		if set != 1 {
			c.add(hp, "set exactly one of exact, prefix or present: true")
		}
		out.Headers = append(out.Headers, model.HeaderMatch{Name: name, Exact: h.Exact, Prefix: h.Prefix, Present: h.Present})
	}
	sort.SliceStable(out.Headers, func(i, j int) bool { return out.Headers[i].Name < out.Headers[j].Name })
	var up model.Upstream
	if r.Upstream == "" {
		c.add(p+".upstream", "required")
	} else if _, ok := ups[r.Upstream]; !ok {
		c.add(p+".upstream", "unknown upstream %q (defined: %s)", r.Upstream, strings.Join(sortedKeys(ups), ", "))
	} else {
		up, _ = cfg.Upstream(r.Upstream)
	}
	if r.PrefixRewrite != "" {
		checkPath(p+".prefix_rewrite", r.PrefixRewrite, c)
	}
	out.Rewrite = rewrite(out, r.PrefixRewrite, up.BasePath)
	out.API = model.DefaultWireAPI(up.API)
	if r.API != "" {
		if !slices.Contains(model.WireAPIs, model.WireAPI(r.API)) {
			names := make([]string, len(model.WireAPIs))
			for i, a := range model.WireAPIs {
				names[i] = string(a)
			}
			c.add(p+".api", "must be one of %s, not %q", strings.Join(names, ", "), r.API)
		}
		out.API = model.WireAPI(r.API)
	}
	return out, len(c.errs) == n
}

// rewrite joins the upstream's base path with the route's rewrite, so that
// url: https://api.groq.com/openai + prefix /groq/ + prefix_rewrite / sends /groq/v1/x to
// /openai/v1/x.
func rewrite(r model.Route, prefixRewrite, base string) string {
	if base == "" {
		return prefixRewrite
	}
	keep := r.Prefix
	if keep == "" {
		keep = r.Path
	}
	if prefixRewrite != "" {
		keep = prefixRewrite
	}
	return base + keep
}

func warnUnserved(cfg *model.Config) {
	served := map[string]bool{}
	for _, r := range cfg.Regions {
		for _, u := range r.Upstreams {
			served[u] = true
		}
	}
	for _, r := range cfg.Routes {
		if !served[r.Upstream] {
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("routes.%s: upstream %q is served by no region, so this route is not emitted anywhere", r.Name, r.Upstream))
		}
	}
}
