package decide

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/token"
)

// Compiled is a Policy indexed for O(1) lookups (token hash -> caller, upstream name ->
// upstream). It is immutable and safe for concurrent use.
type Compiled struct {
	region    string
	callers   map[[token.Size]byte]*caller
	upstreams map[string]*upstream
	// byName finds the caller a peer edge names in x-llmedge-caller.
	byName map[string]*caller
}

type caller struct {
	name, tenant string
	allowed      map[string]struct{}
	disabled     bool
	expiresAt    time.Time
	allow, deny  []netip.Prefix
	byok         bool
}

type upstream struct {
	name      string
	keyHeader string
	// prefix and suffix surround the key in the header value (KeyFormat split at {key}).
	prefix, suffix string
	api            string
}

// keyPlaceholder stands for the key in Upstream.KeyFormat.
const keyPlaceholder = "{key}"

// Compile validates p and indexes it. It reports every problem it finds (joined), naming
// callers and upstreams but never a token hash.
func Compile(p Policy) (*Compiled, error) {
	c := &Compiled{
		region:    p.Region,
		callers:   make(map[[token.Size]byte]*caller),
		upstreams: make(map[string]*upstream, len(p.Upstreams)),
		byName:    make(map[string]*caller, len(p.Callers)),
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	for i, u := range p.Upstreams {
		if u.Name == "" {
			bad("upstream #%d: empty name", i)
			continue
		}
		if _, dup := c.upstreams[u.Name]; dup {
			bad("upstream %q: defined twice", u.Name)
			continue
		}
		cu := &upstream{name: u.Name, keyHeader: strings.ToLower(u.KeyHeader), api: u.API}
		if err := checkKeyHeader(cu.keyHeader); err != nil {
			bad("upstream %q: key_header %q: %v", u.Name, u.KeyHeader, err)
		}
		if n := strings.Count(u.KeyFormat, keyPlaceholder); n != 1 {
			bad("upstream %q: key_format must contain %s exactly once (it has %d)", u.Name, keyPlaceholder, n)
		} else if hasControl(u.KeyFormat) {
			bad("upstream %q: key_format contains a control character", u.Name)
		} else {
			cu.prefix, cu.suffix, _ = strings.Cut(u.KeyFormat, keyPlaceholder)
		}
		switch u.API {
		case APIOpenAI, APIAnthropic, APIGemini:
		default:
			bad("upstream %q: api %q: want %q, %q or %q", u.Name, u.API, APIOpenAI, APIAnthropic, APIGemini)
		}
		c.upstreams[u.Name] = cu
	}

	owner := map[[token.Size]byte]string{}
	names := map[string]bool{}
	for i, cl := range p.Callers {
		if cl.Name == "" {
			bad("caller #%d: empty name", i)
			continue
		}
		if names[cl.Name] {
			bad("caller %q: defined twice", cl.Name)
			continue
		}
		names[cl.Name] = true
		cc := &caller{
			name:      cl.Name,
			tenant:    cl.Tenant,
			allowed:   make(map[string]struct{}, len(cl.AllowedUpstreams)),
			disabled:  cl.Disabled,
			expiresAt: cl.ExpiresAt,
			byok:      cl.BYOK,
		}
		c.byName[cl.Name] = cc
		for _, u := range cl.AllowedUpstreams {
			if _, ok := c.upstreams[u]; !ok {
				bad("caller %q: allowed upstream %q is not in the policy", cl.Name, u)
				continue
			}
			cc.allowed[u] = struct{}{}
		}
		var err error
		if cc.allow, err = checkPrefixes(cl.AllowCIDRs); err != nil {
			bad("caller %q: allow_cidrs: %v", cl.Name, err)
		}
		if cc.deny, err = checkPrefixes(cl.DenyCIDRs); err != nil {
			bad("caller %q: deny_cidrs: %v", cl.Name, err)
		}
		for j, h := range cl.TokenSHA256 {
			sum, err := token.ParseDigest(h)
			if err != nil {
				bad("caller %q: token_sha256 #%d is %v", cl.Name, j, err)
				continue
			}
			if other, dup := owner[sum]; dup {
				if other != cl.Name {
					bad("callers %q and %q share a token (token_sha256 #%d of %q)", other, cl.Name, j, cl.Name)
				}
				continue // the same hash twice in one caller is harmless
			}
			owner[sum] = cl.Name
			c.callers[sum] = cc
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid policy for region %q: %w", p.Region, err)
	}
	return c, nil
}

// Region is the region the policy is for.
func (c *Compiled) Region() string { return c.region }

// API returns the API family of the named upstream, or "" if the policy has no such
// upstream.
func (c *Compiled) API(upstream string) string {
	if u := c.upstreams[upstream]; u != nil {
		return u.api
	}
	return ""
}

// reservedHeaders may not carry an upstream key: Envoy or HTTP own them, or extauthz
// removes them.
var reservedHeaders = map[string]bool{
	"host": true, "connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "te": true, "upgrade": true, "content-length": true,
	"trailer": true, HeaderLLMedgeToken: true,
}

func checkKeyHeader(h string) error {
	if h == "" {
		return errors.New("empty")
	}
	for i := 0; i < len(h); i++ {
		if !isTokenChar(h[i]) {
			return errors.New("not a valid HTTP header name")
		}
	}
	if reservedHeaders[h] || strings.HasPrefix(h, InternalHeaderPrefix) {
		return errors.New("reserved header")
	}
	return nil
}

// isTokenChar reports whether c may appear in an HTTP header name (RFC 9110 token).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

func checkPrefixes(ps []netip.Prefix) ([]netip.Prefix, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(ps))
	for i, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("#%d is not a valid CIDR", i)
		}
		p = p.Masked()
		// An IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) means the IPv4 one.
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p)
	}
	return out, nil
}

// ipAllowed applies deny_cidrs, then allow_cidrs. Source addresses are compared unmapped
// (an IPv4 client on a dual-stack listener shows up as ::ffff:a.b.c.d) and without zone.
func (cl *caller) ipAllowed(ip netip.Addr) bool {
	if len(cl.allow) == 0 && len(cl.deny) == 0 {
		return true
	}
	ip = ip.Unmap().WithZone("")
	for _, p := range cl.deny {
		if p.Contains(ip) {
			return false
		}
	}
	if len(cl.allow) == 0 {
		return true
	}
	for _, p := range cl.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// format is the key header's value for key.
func (u *upstream) format(key string) string {
	if u.prefix == "" && u.suffix == "" {
		return key
	}
	return u.prefix + key + u.suffix
}

// hasProviderKey reports whether a BYOK request carries the caller's own provider key
// where this upstream expects it.
func (u *upstream) hasProviderKey(r Request) bool {
	if strings.TrimSpace(r.Headers[u.keyHeader]) != "" {
		return true
	}
	if u.api == APIGemini {
		if strings.TrimSpace(r.Headers[HeaderGoogAPIKey]) != "" {
			return true
		}
		if v, _ := queryParam(r.Path, QueryKey); v != "" {
			return true
		}
	}
	return false
}

// keyPlace tells a BYOK developer where the provider key goes.
func (u *upstream) keyPlace() string {
	place := "the " + u.keyHeader + " header"
	if u.keyHeader == HeaderAuthorization && strings.HasPrefix(strings.ToLower(u.prefix), "bearer ") {
		place = "the Authorization header (Bearer)"
	}
	if u.api == APIGemini && u.keyHeader != HeaderGoogAPIKey {
		place += ", the x-goog-api-key header or the key query parameter"
	} else if u.api == APIGemini {
		place += " or the key query parameter"
	}
	return place
}
