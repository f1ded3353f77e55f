package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/transport"
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
	for _, name := range sortedKeys(f.Routes) {
		if r, ok := validateRoute("routes."+name, name, f.Routes[name], f.Upstreams, &c, cfg); ok {
			cfg.Routes = append(cfg.Routes, r)
		}
	}
	checkRouteConflicts(cfg.Routes, &c)
	cfg.Callers = validateCallers(f.Callers, f.Upstreams, &c)
	validateRateLimitService(f, cfg, &c)
	cfg.Usage = validateUsage(f.Usage, f.Upstreams, &c)
	if err := c.err(); err != nil {
		return nil, err
	}
	SortRoutes(cfg.Routes)
	warnUnserved(cfg)
	warnInternalTransport(cfg)
	sort.Strings(cfg.Warnings)
	return cfg, nil
}

func validateRegion(p, name string, r Region, ups map[string]Upstream, c *collector, cfg *model.Config) (model.Region, bool) {
	n := len(c.errs)
	out := model.Region{Name: name}
	if r.Listen == "" {
		c.add(p+".listen", "required, as ip:port (for example 0.0.0.0:10000)")
	} else if ap, err := netip.ParseAddrPort(r.Listen); err != nil {
		c.add(p+".listen", "must be ip:port with a literal IP address (for example 0.0.0.0:10000): %v", err)
	} else if ap.Port() == 0 {
		c.add(p+".listen", "port must be 1-65535")
	} else {
		out.ListenAddress = ap.Addr().String()
		out.ListenPort = uint32(ap.Port())
	}
	if r.EgressAddress != "" {
		if a, err := netip.ParseAddr(r.EgressAddress); err != nil {
			c.add(p+".egress_address", "must be an IP address of this host: %v", err)
		} else {
			out.EgressAddress = a.String()
		}
	}
	if r.XFFTrustedHops < 0 || r.XFFTrustedHops > 10 {
		c.add(p+".xff_trusted_hops", "must be 0-10 (the number of trusted proxies in front of the edge)")
	} else {
		out.XFFTrustedHops = uint32(r.XFFTrustedHops)
	}
	if r.ExtAuthz == "" {
		c.add(p+".extauthz", "required: this region's extauthz service, which checks every request: unix:/abs/path.sock (for example unix:/run/llmedge/extauthz.sock) or host:port")
	} else if a, err := internalAddress(r.ExtAuthz); err != nil {
		c.add(p+".extauthz", "%v", err)
	} else {
		out.ExtAuthz = a
	}
	if r.InternalTLS != nil {
		out.InternalTLS = validateInternalTLS(p+".internal_tls", *r.InternalTLS, c)
	}
	seen := map[string]bool{}
	for i, u := range r.Upstreams {
		fp := fmt.Sprintf("%s.upstreams[%d]", p, i)
		up, ok := ups[u]
		switch {
		case seen[u]:
			c.add(fp, "upstream %q is listed twice", u)
		case !ok:
			c.add(fp, "unknown upstream %q (defined: %s)", u, strings.Join(sortedKeys(ups), ", "))
		case !slices.Contains(up.AllowedRegions, name):
			c.add(fp, "upstream %q may not be served from region %q: upstreams.%s.allowed_regions is [%s]", u, name, u, strings.Join(up.AllowedRegions, ", "))
		default:
			out.Upstreams = append(out.Upstreams, u)
		}
		seen[u] = true
	}
	sort.Strings(out.Upstreams)
	if len(r.Upstreams) == 0 {
		cfg.Warnings = append(cfg.Warnings, p+".upstreams: empty; this region serves no upstream")
	}
	return out, len(c.errs) == n
}

func validateUpstream(p, name string, u Upstream, regions map[string]Region, c *collector, cfg *model.Config) (model.Upstream, bool) {
	n := len(c.errs)
	out := model.Upstream{Name: name}
	if u.URL == "" {
		c.add(p+".url", "required (for example https://api.openai.com)")
	} else if pu, err := url.Parse(u.URL); err != nil || !pu.IsAbs() || pu.Host == "" {
		c.add(p+".url", "must be an absolute URL such as https://api.openai.com")
	} else if pu.Scheme != "https" && pu.Scheme != "http" {
		c.add(p+".url", "scheme must be https (or http for local test upstreams), not %q", pu.Scheme)
	} else {
		// Credentials or a query are reported, but the scheme and host are still read so that
		// the tls settings are checked in the same run.
		if pu.User != nil {
			c.add(p+".url", "must not carry credentials; upstream keys come from the secret store")
		}
		if pu.RawQuery != "" || pu.Fragment != "" {
			c.add(p+".url", "must not have a query or fragment")
		}
		out.Scheme = pu.Scheme
		out.Host = strings.ToLower(pu.Hostname())
		port := pu.Port()
		def := "443"
		if pu.Scheme == "http" {
			def = "80"
		}
		if port == "" {
			port = def
		}
		pn, err := strconv.ParseUint(port, 10, 16)
		if err != nil || pn == 0 {
			c.add(p+".url", "port must be 1-65535")
		}
		out.Port = uint32(pn)
		out.Authority = out.Host
		if strings.Contains(out.Host, ":") {
			out.Authority = "[" + out.Host + "]"
		}
		if port != def {
			out.Authority += ":" + port
		}
		out.BasePath = strings.TrimSuffix(pu.EscapedPath(), "/")
		if _, err := netip.ParseAddr(out.Host); err != nil && !hostnameRE.MatchString(out.Host) {
			c.add(p+".url", "host %q is not a valid DNS name or IP address", out.Host)
		}
	}
	out.ConnectHost, out.ConnectPort = out.Host, out.Port
	if u.Endpoint != "" {
		if h, port, err := splitHostPort(u.Endpoint); err != nil {
			c.add(p+".endpoint", "%v (where to connect instead of resolving the URL's host)", err)
		} else {
			out.ConnectHost, out.ConnectPort = h, port
		}
	}

	tlsSet := u.TLS.SNI != "" || u.TLS.CAFile != "" || u.TLS.Verify != nil
	if out.Scheme == "http" {
		if tlsSet {
			c.add(p+".tls", "only applies to https URLs")
		}
		if !isLoopback(out.ConnectHost) {
			cfg.Warnings = append(cfg.Warnings, p+".url: plain http to a non-loopback host; use https for real providers")
		}
	}
	if out.Scheme == "https" {
		t := &model.TLS{SNI: out.Host, CAFile: DefaultCAFile, Verify: true}
		if u.TLS.SNI != "" {
			sni := strings.ToLower(u.TLS.SNI)
			if _, err := netip.ParseAddr(sni); err == nil || !hostnameRE.MatchString(sni) || strings.HasPrefix(sni, "*.") {
				c.add(p+".tls.sni", "must be a DNS name")
			}
			t.SNI = sni
		} else if _, err := netip.ParseAddr(out.Host); err == nil {
			t.SNI = "" // SNI cannot carry an IP address
		}
		if u.TLS.CAFile != "" {
			if !path.IsAbs(u.TLS.CAFile) {
				c.add(p+".tls.ca_file", "must be an absolute path as seen by Envoy")
			}
			t.CAFile = u.TLS.CAFile
		}
		if u.TLS.Verify != nil {
			t.Verify = *u.TLS.Verify
		}
		if !t.Verify {
			cfg.Warnings = append(cfg.Warnings, p+".tls.verify: false; the upstream's certificate is not checked")
		} else if t.SNI == "" {
			c.add(p+".tls.sni", "required when the URL host is an IP address and verify is on (the certificate is checked against it)")
		}
		out.TLS = t
	}

	switch u.Protocol {
	case "", string(model.ProtocolAuto):
		out.Protocol = model.ProtocolAuto
	case string(model.ProtocolHTTP1), string(model.ProtocolHTTP2):
		out.Protocol = model.Protocol(u.Protocol)
	default:
		c.add(p+".protocol", "must be auto, http1 or http2, not %q", u.Protocol)
	}

	out.ConnectTimeout = duration(p+".connect_timeout", u.ConnectTimeout, DefaultConnectTimeout, time.Minute, c)
	out.ResponseTimeout = duration(p+".response_timeout", u.ResponseTimeout, DefaultResponseTimeout, time.Hour, c)
	out.StreamIdleTimeout = duration(p+".stream_idle_timeout", u.StreamIdleTimeout, DefaultStreamIdleTimeout, time.Hour, c)

	if len(u.AllowedRegions) == 0 {
		c.add(p+".allowed_regions", "required: list the regions whose provider terms allow serving this upstream (defined: %s)", strings.Join(sortedKeys(regions), ", "))
	}
	seen := map[string]bool{}
	for i, r := range u.AllowedRegions {
		fp := fmt.Sprintf("%s.allowed_regions[%d]", p, i)
		if _, ok := regions[r]; !ok {
			c.add(fp, "unknown region %q (defined: %s)", r, strings.Join(sortedKeys(regions), ", "))
		} else if seen[r] {
			c.add(fp, "region %q is listed twice", r)
		}
		seen[r] = true
	}
	out.AllowedRegions = slices.Sorted(slices.Values(u.AllowedRegions))
	out.ForwardClientIP, out.ForwardRequestID = u.ForwardClientIP, u.ForwardRequestID
	validateKeyInjection(p, u, &out, c)
	out.Limits = validateLimits(p, u.Limits, nil, false, c)
	return out, len(c.errs) == n
}

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

// internalAddress reads the address of one of the region's own services in
// internal/transport's syntax, the one extauthz and ratelimit are started with.
func internalAddress(v string) (model.Address, error) {
	a, err := transport.Parse(v)
	if err != nil {
		return model.Address{}, err
	}
	return model.Address{Pipe: a.Path, Host: a.Host, Port: a.Port}, nil
}

func validateInternalTLS(p string, t InternalTLS, c *collector) *model.InternalTLS {
	n := len(c.errs)
	for _, f := range []struct{ key, val string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
		switch {
		case f.val == "":
			c.add(p+"."+f.key, "required: mutual TLS needs Envoy's client certificate, its key and the CA of the services' certificates")
		case !path.IsAbs(f.val):
			c.add(p+"."+f.key, "must be an absolute path on the Envoy host, not %q", f.val)
		}
	}
	if len(c.errs) != n {
		return nil
	}
	return &model.InternalTLS{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile}
}

// warnInternalTransport flags hops to a region's own services that nothing authenticates:
// extauthz answers with provider keys, and refuses such a listener itself.
func warnInternalTransport(cfg *model.Config) {
	for _, r := range cfg.Regions {
		p := "regions." + r.Name
		for _, hop := range []struct {
			key string
			a   model.Address
		}{{"extauthz", r.ExtAuthz}, {"ratelimit", r.RateLimit}} {
			if hop.a.IsZero() || hop.a.Pipe != "" || r.InternalTLS != nil {
				continue
			}
			if (transport.Address{Host: hop.a.Host, Port: hop.a.Port}).IsLoopback() {
				continue
			}
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s.%s: plain TCP to %s is unauthenticated; use unix:/path or set %s.internal_tls", p, hop.key, hop.a.Host, p))
		}
		if r.InternalTLS != nil && r.ExtAuthz.Pipe != "" && (r.RateLimit.IsZero() || r.RateLimit.Pipe != "") {
			cfg.Warnings = append(cfg.Warnings, p+".internal_tls: unused; extauthz and ratelimit are reached over unix sockets")
		}
	}
}
