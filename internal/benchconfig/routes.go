// Package benchconfig builds the synthetic inputs the benchmarks share, so that the
// go test benchmarks (controlplane/xds, e2e, extauthz) and the benchmark programs under
// bench/ measure the same thing: the 1,000-route routes document and the ext_authz
// CheckRequest of an allowed chat call.
package benchconfig

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/llmedge/llmedge/controlplane/config"
)

// Defaults of the routes document.
const (
	Routes    = 1000
	Upstreams = 20
	Hosts     = 4 // distinct host names among the routes that set match.hosts
)

// Regions are the regions of the routes document; each serves every upstream.
var Regions = []string{"eu", "hk", "jp", "sg", "us"}

// Options shape the routes document. The zero value is the benchmark config with
// placeholder addresses that nothing listens on (fine wherever no Envoy runs).
type Options struct {
	Routes int    // routes r0000..r<Routes-1>; 0 means Routes
	Hosts  int    // host names the host-bound routes cycle through; -1 means none, 0 means Hosts
	Rename string // when set, the name (and so the prefix) of route 0, which every region serves
	// Listen and ExtAuthz give a region's listener and extauthz addresses (default
	// 127.0.0.1:1000<i> and 127.0.0.1:10100). Endpoint and CAFile are every upstream's
	// endpoint override and CA (default 127.0.0.1:8443 and /etc/llmedge/upstream-ca.pem).
	Listen   func(region string, i int) string
	ExtAuthz func(region string) string
	Endpoint string
	CAFile   string
}

// File is the routes document (no callers, no quotas): every region names an extauthz
// address and serves all upstreams (https, endpoint override, ca_file, allowed in every
// region, every fourth with a base path). Routes have distinct prefixes, alternating
// "/rNNNN" (prefix_rewrite /) and "/rNNNN/" (prefix_rewrite /v1/); every 10th is bound to
// one of the host names and every 7th matches a header. Renaming route 0 is the smallest
// edit that changes the routes version of every region.
func File(o Options) config.File {
	o = o.withDefaults()
	f := config.File{
		Version:   config.SchemaVersion,
		Regions:   map[string]config.Region{},
		Upstreams: map[string]config.Upstream{},
		Routes:    map[string]config.Route{},
	}
	ups := make([]string, Upstreams)
	for i := range ups {
		ups[i] = fmt.Sprintf("up%02d", i)
	}
	for i, r := range Regions {
		f.Regions[r] = config.Region{Listen: o.Listen(r, i), ExtAuthz: o.ExtAuthz(r), Upstreams: ups}
	}
	for i, u := range ups {
		url := "https://" + u + ".llmedge.test"
		if i%4 == 3 {
			url += "/v1beta"
		}
		f.Upstreams[u] = config.Upstream{URL: url, Endpoint: o.Endpoint, TLS: config.TLS{CAFile: o.CAFile}, AllowedRegions: Regions}
	}
	for i := range o.Routes {
		name := fmt.Sprintf("r%04d", i)
		if i == 0 && o.Rename != "" {
			name = o.Rename
		}
		rt := config.Route{Upstream: ups[i%len(ups)]}
		if i%2 == 0 {
			rt.Match.Prefix, rt.PrefixRewrite = "/"+name, "/"
		} else {
			rt.Match.Prefix, rt.PrefixRewrite = "/"+name+"/", "/v1/"
		}
		if o.Hosts > 0 && i%10 == 0 {
			rt.Match.Hosts = []string{fmt.Sprintf("tenant-%d.llmedge.test", (i/10)%o.Hosts)}
		}
		if i%7 == 0 {
			rt.Match.Headers = []config.HeaderMatch{{Name: "x-llmedge-tenant", Exact: fmt.Sprintf("t%d", i)}}
		}
		f.Routes[name] = rt
	}
	return f
}

func (o Options) withDefaults() Options {
	if o.Routes == 0 {
		o.Routes = Routes
	}
	if o.Hosts == 0 {
		o.Hosts = Hosts
	}
	if o.Listen == nil {
		o.Listen = func(_ string, i int) string { return fmt.Sprintf("127.0.0.1:%d", 10000+i) }
	}
	if o.ExtAuthz == nil {
		o.ExtAuthz = func(string) string { return "127.0.0.1:10100" }
	}
	if o.Endpoint == "" {
		o.Endpoint = "127.0.0.1:8443"
	}
	if o.CAFile == "" {
		o.CAFile = "/etc/llmedge/upstream-ca.pem"
	}
	return o
}

// YAML is File(o) written as routes YAML, routes section last (so a caller may append
// routes). Only the fields File sets are written.
func YAML(o Options) string {
	f := File(o)
	var b strings.Builder
	fmt.Fprintf(&b, "version: %d\nregions:\n", f.Version)
	for _, name := range slices.Sorted(maps.Keys(f.Regions)) {
		r := f.Regions[name]
		fmt.Fprintf(&b, "  %s:\n    listen: %s\n    extauthz: %s\n    upstreams: [%s]\n", name, r.Listen, r.ExtAuthz, strings.Join(r.Upstreams, ", "))
	}
	b.WriteString("upstreams:\n")
	for _, name := range slices.Sorted(maps.Keys(f.Upstreams)) {
		u := f.Upstreams[name]
		fmt.Fprintf(&b, "  %s:\n    url: %s\n    endpoint: %s\n    tls: {ca_file: %s}\n    allowed_regions: [%s]\n",
			name, u.URL, u.Endpoint, u.TLS.CAFile, strings.Join(u.AllowedRegions, ", "))
	}
	b.WriteString("routes:\n")
	for _, name := range slices.Sorted(maps.Keys(f.Routes)) {
		r := f.Routes[name]
		fmt.Fprintf(&b, "  %s:\n    match: {prefix: %s", name, r.Match.Prefix)
		if len(r.Match.Hosts) > 0 {
			fmt.Fprintf(&b, ", hosts: [%s]", strings.Join(r.Match.Hosts, ", "))
		}
		if len(r.Match.Headers) > 0 {
			var hs []string
			for _, h := range r.Match.Headers {
				hs = append(hs, fmt.Sprintf("{name: %s, exact: %s}", h.Name, h.Exact))
			}
			fmt.Fprintf(&b, ", headers: [%s]", strings.Join(hs, ", "))
		}
		fmt.Fprintf(&b, "}\n    upstream: %s\n    prefix_rewrite: %s\n", r.Upstream, r.PrefixRewrite)
	}
	return b.String()
}
