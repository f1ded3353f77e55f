package config

import (
	"fmt"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/transport"
)

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
	switch {
	case r.ExtAuthz == "" && r.ExtAuthzInEnvoy:
		// Inside Envoy extauthz serves no gRPC: there is nothing to reach.
	case r.ExtAuthz == "":
		c.add(p+".extauthz", "required (unless extauthz_in_envoy is true): this region's extauthz service, which checks every request: unix:/abs/path.sock (for example unix:/run/llmedge/extauthz.sock) or host:port")
	default:
		if a, err := internalAddress(r.ExtAuthz); err != nil {
			c.add(p+".extauthz", "%v", err)
		} else {
			out.ExtAuthz = a
		}
	}
	out.ExtAuthzInEnvoy = r.ExtAuthzInEnvoy
	if r.InternalTLS != nil {
		out.InternalTLS = validateInternalTLS(p+".internal_tls", *r.InternalTLS, c)
	}
	if r.Overload != nil {
		out.Overload = validateOverload(p+".overload", *r.Overload, c)
	}
	switch r.AccessLog {
	case "", "stdout":
	case "off":
		out.AccessLogOff = true
	case "0", "1": // a YAML false or true, read into this string field
		c.add(p+".access_log", "must be the word stdout (one JSON line per request on Envoy's standard output, the default) or off, not a boolean (read as %q)", r.AccessLog)
	default:
		c.add(p+".access_log", "must be stdout (one JSON line per request on Envoy's standard output, the default) or off, not %q", r.AccessLog)
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

// reachedExtAuthz is the address Envoy reaches r's extauthz at: none inside Envoy, where
// it serves no gRPC.
func reachedExtAuthz(r model.Region) model.Address {
	if r.ExtAuthzInEnvoy {
		return model.Address{}
	}
	return r.ExtAuthz
}

// warnInternalTransport flags hops to a region's own services that nothing authenticates:
// extauthz answers with provider keys, and refuses such a listener itself.
func warnInternalTransport(cfg *model.Config) {
	for _, r := range cfg.Regions {
		p := "regions." + r.Name
		for _, hop := range []struct {
			key string
			a   model.Address
		}{{"extauthz", reachedExtAuthz(r)}, {"ratelimit", r.RateLimit}} {
			if hop.a.IsZero() || hop.a.Pipe != "" || r.InternalTLS != nil {
				continue
			}
			if (transport.Address{Host: hop.a.Host, Port: hop.a.Port}).IsLoopback() {
				continue
			}
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s.%s: plain TCP to %s is unauthenticated; use unix:/path or set %s.internal_tls", p, hop.key, hop.a.Host, p))
		}
		if ea := reachedExtAuthz(r); r.InternalTLS != nil && (ea.IsZero() || ea.Pipe != "") && (r.RateLimit.IsZero() || r.RateLimit.Pipe != "") {
			cfg.Warnings = append(cfg.Warnings, p+".internal_tls: unused; extauthz and ratelimit are reached over unix sockets")
		}
	}
}

// maxAdmissionRate bounds overload.max_requests_per_second and burst far above what one
// Envoy can serve, and inside Envoy's uint32 token bucket.
const maxAdmissionRate = 10_000_000

// validateOverload reads a region's admission ceiling; the default burst is a quarter
// second's worth of requests (at least one), enough for the arrivals of a busy moment
// without letting a queue form behind the ceiling.
func validateOverload(p string, o Overload, c *collector) model.Overload {
	var out model.Overload
	switch {
	case o.MaxRequestsPerSecond < 0 || o.MaxRequestsPerSecond > maxAdmissionRate:
		c.add(p+".max_requests_per_second", "must be 0-%d (0: no ceiling)", maxAdmissionRate)
	default:
		out.MaxRequestsPerSecond = uint32(o.MaxRequestsPerSecond)
	}
	switch {
	case o.Burst < 0 || o.Burst > maxAdmissionRate:
		c.add(p+".burst", "must be 0-%d (0: a quarter of max_requests_per_second)", maxAdmissionRate)
	case o.Burst > 0 && o.MaxRequestsPerSecond == 0:
		c.add(p+".burst", "needs max_requests_per_second")
	case o.Burst > 0:
		out.Burst = uint32(o.Burst)
	case out.MaxRequestsPerSecond > 0:
		out.Burst = max(1, out.MaxRequestsPerSecond/4)
	}
	return out
}
