package config

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

var tenantRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$`)

// Where each API family expects its key, unless key_header/key_format say otherwise. The
// header names are internal/wire's, the ones Envoy forwards to extauthz and extauthz reads
// tokens from and strips.
var apiKeyDefaults = map[model.API][2]string{
	model.APIOpenAI:    {wire.HeaderAuthorization, "Bearer {key}"},
	model.APIAnthropic: {wire.HeaderAPIKey, "{key}"},
	model.APIGemini:    {wire.HeaderGoogAPIKey, "{key}"},
}

func validateKeyInjection(p string, u Upstream, out *model.Upstream, c *collector) {
	api := model.API(strings.ToLower(u.API))
	if api == "" {
		api = model.APIOpenAI
	}
	def, ok := apiKeyDefaults[api]
	if !ok {
		c.add(p+".api", "must be openai, anthropic or gemini, not %q", u.API)
		return
	}
	out.API = api
	out.KeyHeader, out.KeyFormat = def[0], def[1]
	if u.KeyHeader != "" {
		h := strings.ToLower(u.KeyHeader)
		switch {
		case !headerNameRE.MatchString(h):
			c.add(p+".key_header", "must be a header name")
		case h == "host" || h == wire.TokenHeader || strings.HasPrefix(h, ":") || strings.HasPrefix(h, "x-envoy-") ||
			strings.HasPrefix(h, wire.InternalHeaderPrefix):
			// extauthz refuses the same names (a policy carrying one would be rejected).
			c.add(p+".key_header", "%q cannot carry a key", h)
		}
		out.KeyHeader = h
	}
	if u.KeyFormat != "" {
		if strings.Count(u.KeyFormat, "{key}") != 1 {
			c.add(p+".key_format", "must contain {key} exactly once (for example \"Bearer {key}\")")
		} else if strings.ContainsAny(u.KeyFormat, "\r\n\x00") {
			c.add(p+".key_format", "must not contain line breaks")
		}
		out.KeyFormat = u.KeyFormat
	}
}

func validateCallers(callers map[string]Caller, ups map[string]Upstream, c *collector) []model.Caller {
	var out []model.Caller
	owner := map[string]string{} // token digest -> caller
	for _, name := range sortedKeys(callers) {
		p := "callers." + name
		in := callers[name]
		n := len(c.errs)
		cl := model.Caller{Name: name, Disabled: in.Disabled, BYOK: in.BYOK}
		if in.Tenant != "" {
			if !tenantRE.MatchString(in.Tenant) {
				c.add(p+".tenant", "must be 1-63 lower-case letters, digits, '.', '-' or '_'")
			}
			cl.Tenant = in.Tenant
		}
		if len(in.Tokens) == 0 {
			c.add(p+".tokens", "at least one token digest is required (mint one with `llmedge token new --caller %s`)", name)
		}
		for i, t := range in.Tokens {
			fp := fmt.Sprintf("%s.tokens[%d]", p, i)
			d, err := token.ParseDigestRef(t)
			if err != nil {
				// Never echo the value: someone may have pasted a plain token here.
				c.add(fp, "%v, as printed by `llmedge token new` (never the plain token)", err)
				continue
			}
			if prev, dup := owner[d]; dup {
				c.add(fp, "the same token digest is listed for callers.%s", prev)
				continue
			}
			owner[d] = name
			cl.TokenSHA256 = append(cl.TokenSHA256, d)
		}
		slices.Sort(cl.TokenSHA256)
		for i, u := range in.Upstreams {
			fp := fmt.Sprintf("%s.upstreams[%d]", p, i)
			if _, ok := ups[u]; !ok {
				c.add(fp, "unknown upstream %q (defined: %s)", u, strings.Join(sortedKeys(ups), ", "))
			} else if slices.Contains(cl.Upstreams, u) {
				c.add(fp, "upstream %q is listed twice", u)
			} else {
				cl.Upstreams = append(cl.Upstreams, u)
			}
		}
		slices.Sort(cl.Upstreams)
		if !in.Expires.IsZero() {
			cl.ExpiresAt = in.Expires.UTC()
		}
		cl.Limits = validateLimits(p, in.Limits, cl.Upstreams, true, c)
		cl.AllowCIDRs = prefixes(p+".allow_ips", in.AllowIPs, c)
		cl.DenyCIDRs = prefixes(p+".deny_ips", in.DenyIPs, c)
		if len(c.errs) == n {
			out = append(out, cl)
		}
	}
	return out
}

// prefixes parses CIDRs; a bare address means just that address.
func prefixes(p string, in []string, c *collector) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range in {
		fp := fmt.Sprintf("%s[%d]", p, i)
		if pf, err := netip.ParsePrefix(s); err == nil {
			if pf != pf.Masked() {
				c.add(fp, "%q has host bits set; did you mean %s?", s, pf.Masked())
				continue
			}
			out = append(out, pf)
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		} else {
			c.add(fp, "must be an IP address or CIDR such as 10.0.0.0/8, not %q", s)
		}
	}
	return out
}

// splitHostPort parses host:port with a non-empty host and a port of 1-65535.
func splitHostPort(v string) (string, uint32, error) {
	h, port, err := net.SplitHostPort(v)
	if err != nil || h == "" {
		return "", 0, fmt.Errorf("must be host:port")
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || pn == 0 {
		return "", 0, fmt.Errorf("port must be 1-65535")
	}
	return strings.ToLower(h), uint32(pn), nil
}
