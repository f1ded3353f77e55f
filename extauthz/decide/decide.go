// Package decide is extauthz's decision as a pure function: given the compiled caller
// policy, one request's credentials and context, and a source of upstream keys, it says
// whether to forward the request and how to rewrite it (inject the upstream key, strip the
// caller's credentials), or how to refuse it with an error body shaped like the upstream
// API's own errors so that the provider SDKs surface it well.
//
// Nothing here logs, and no Decision ever carries a caller's token, a token hash or an
// upstream key, except the injected key header in SetHeaders.
package decide

import (
	"crypto/subtle"
	"iter"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

// API families, which shape error bodies.
const (
	APIOpenAI    = wire.APIOpenAI
	APIAnthropic = wire.APIAnthropic
	APIGemini    = wire.APIGemini
)

// Credential headers a caller may send, in the order they are looked at. The names are
// internal/wire's, which also tells Envoy which headers to forward to extauthz and the
// control plane where to inject keys by default (TestEnvoyForwardsEveryCredentialHeader
// pins that every one is forwarded).
const (
	HeaderLLMedgeToken  = wire.TokenHeader
	HeaderAuthorization = wire.HeaderAuthorization
	HeaderAPIKey        = wire.HeaderAPIKey
	HeaderGoogAPIKey    = wire.HeaderGoogAPIKey
	// QueryKey is the Gemini-style query parameter that may carry the token.
	QueryKey = wire.KeyQueryParam
	// InternalHeaderPrefix marks llmedge's own headers; a caller may not send them upstream.
	InternalHeaderPrefix = wire.InternalHeaderPrefix
)

// Reasons, the machine-readable part of a Decision.
const (
	ReasonOK                 = "ok"
	ReasonBadRoute           = "bad_route"
	ReasonMissingToken       = "missing_token"
	ReasonUnknownToken       = "unknown_token"
	ReasonDisabled           = "disabled"
	ReasonExpired            = "expired"
	ReasonIPDenied           = "ip_denied"
	ReasonUpstreamNotAllowed = "upstream_not_allowed"
	ReasonBYOKKeyMissing     = "byok_key_missing"
	// ReasonBYOKTokenAsKey: a bring-your-own-key request carries an llmedge token where
	// the provider would receive it.
	ReasonBYOKTokenAsKey = "byok_token_as_key"
	// ReasonConflictingCredentials: the request's credentials disagree about who is
	// calling, or a caller who does not bring its own key sent something else next to
	// its token.
	ReasonConflictingCredentials = "conflicting_credentials"
	ReasonNoKey                  = "no_key"
	ReasonNotReady               = "not_ready"
	// Quota outcomes of an allowed request (extauthz asks the region's rate-limit service).
	ReasonOverLimit            = "rate_limit_exceeded"
	ReasonRateLimitUnavailable = "rate_limit_unavailable"
)

// Policy is one region's caller policy (see proto/llmedge/authz/v1/policy.proto).
type Policy struct {
	Region    string
	Callers   []Caller
	Upstreams []Upstream
}

// Caller is one client of the edge.
type Caller struct {
	Name, Tenant string
	// TokenSHA256 holds hex SHA-256 digests of the caller's tokens.
	TokenSHA256      []string
	AllowedUpstreams []string
	Disabled         bool
	// ExpiresAt is when the caller's tokens stop working; zero means never.
	ExpiresAt             time.Time
	AllowCIDRs, DenyCIDRs []netip.Prefix
	// BYOK callers send their llmedge token in llmedge-token and their own provider key
	// in the provider's header, which passes through.
	BYOK bool
}

// Upstream says how to present a key to one provider and how to shape errors.
type Upstream struct {
	Name string
	// KeyHeader is the request header that carries the key, e.g. "authorization".
	KeyHeader string
	// KeyFormat is the header value with "{key}" standing for the key, e.g. "Bearer {key}".
	KeyFormat string
	// API is "openai", "anthropic" or "gemini".
	API string
}

// Request is what Decide needs of one CheckRequest.
type Request struct {
	// Region, Upstream and Route come from Envoy's per-route context extensions.
	Region, Upstream, Route string
	// Hop is the route's wire.ContextHop: "" for an ordinary route, wire.HopForward or
	// wire.HopPeer (forwarding between edges; controlplane/translate/peer.go).
	Hop string
	// Headers has lower-case names, as Envoy's CheckRequest gives them.
	Headers map[string]string
	// Path includes the query, e.g. /gemini/v1beta/models/x:generateContent?key=abc.
	Path     string
	SourceIP netip.Addr
	Now      time.Time
}

// Keys hands out upstream keys, e.g. round robin over a keystore.Store.
type Keys interface {
	Next(upstream string) (key string, name string, ok bool)
}

// Decision is the verdict on one request.
type Decision struct {
	Allow bool
	// Status is the HTTP status of a denial: 400, 401, 403, 503 or 500.
	Status int
	// Body is a JSON error body shaped like the upstream API's own errors.
	Body        []byte
	ContentType string
	// SetHeaders holds, on allow, the key header, to be applied with
	// OVERWRITE_IF_EXISTS_OR_ADD.
	SetHeaders map[string]string
	// RemoveHeaders lists, on allow, the caller's credential headers and any x-llmedge-*
	// headers the caller sent.
	RemoveHeaders []string
	// RemoveQueryParams lists, on allow, every query parameter that can carry a credential
	// (see credentialQueryParams), under each raw spelling it has in the request.
	RemoveQueryParams []string
	// Caller and Tenant identify the caller once its token is known (for dynamic
	// metadata), also on most denials.
	Caller, Tenant string
	// KeyName is the name of the injected key, for logs; never its value.
	KeyName string
	// KeyHeader, KeyPrefix and KeySuffix say how the key was injected:
	// SetHeaders[KeyHeader] is KeyPrefix + key + KeySuffix (a replay of the decision with
	// the upstream's next key sets that header the same way).
	KeyHeader, KeyPrefix, KeySuffix string
	// ExpiresAt is, on allow, when the caller's tokens stop working (zero: never): the same
	// request is refused from then on.
	ExpiresAt time.Time
	// Reason is short and machine-readable, e.g. "ok" or "unknown_token".
	Reason string
}

// tokenSource says where the caller's token was found.
type tokenSource int

const (
	srcNone tokenSource = iota
	srcLLMedgeToken
	srcAuthorization
	srcAPIKey
	srcGoogAPIKey
	srcQuery
)

// Decide applies the policy to one request. keys may be nil when no key store is
// available (every non-BYOK request is then refused with no_key). A nil Compiled means no
// policy has arrived yet: every request is refused with not_ready.
func (c *Compiled) Decide(r Request, keys Keys) Decision {
	if c == nil {
		return NotReady(GuessAPI(r))
	}
	// 1. Route context.
	up := c.upstreams[r.Upstream]
	if up == nil || r.Region != c.region {
		api := GuessAPI(r)
		if up != nil {
			api = up.api
		}
		return deny(api, 500, ReasonBadRoute, msgBadRoute)
	}

	if r.Hop == wire.HopPeer {
		return c.decidePeer(r, up, keys)
	}

	// 2. Credentials.
	creds, n := c.findCredentials(r)
	if n == 0 {
		return deny(up.api, 401, ReasonMissingToken, missingTokenMessage(up.api))
	}

	// 3. Caller. A valid token in the llmedge-token header names it (a BYOK caller's
	// provider key sits next to it); otherwise every valid token the request carries must
	// belong to the same caller, wherever it sits: an SDK may send both Authorization and
	// x-api-key, and neither header simply wins.
	var (
		cl *caller
		at tokenSource // where cl's token was found
	)
	if creds[0].src == srcLLMedgeToken && creds[0].caller != nil {
		cl, at = creds[0].caller, srcLLMedgeToken
	} else {
		for _, cr := range creds[:n] {
			switch {
			case cr.caller == nil:
			case cl == nil:
				cl, at = cr.caller, cr.src
			case cr.caller != cl:
				return deny(up.api, 400, ReasonConflictingCredentials, twoCallersMessage(at, cr.src))
			}
		}
	}
	if cl == nil {
		return deny(up.api, 401, ReasonUnknownToken, msgUnknownToken)
	}
	denyAs := func(status int, reason, msg string) Decision {
		d := deny(up.api, status, reason, msg)
		d.Caller, d.Tenant = cl.name, cl.tenant
		return d
	}
	if !cl.byok {
		// The edge supplies the provider key, so every other credential is removed. A
		// stale llmedge token next to a valid one is harmless; another caller's token, or
		// a value that is no llmedge token at all (most likely a provider key the
		// developer expects to be used), is a mistake worth explaining rather than
		// silently replacing.
		for _, cr := range creds[:n] {
			switch {
			case cr.caller == cl:
			case cr.caller != nil:
				return deny(up.api, 400, ReasonConflictingCredentials, twoCallersMessage(at, cr.src))
			case !token.LooksLike(cr.value):
				return denyAs(400, ReasonConflictingCredentials, "llmedge: the request carries your llmedge token in "+
					at.place()+" and something else in "+cr.src.place()+". Caller "+quote(cl.name)+
					" does not bring its own provider key (the edge adds it), so send only the llmedge token; "+
					"ask your llmedge operator if you meant to use your own key.")
			}
		}
	}

	// 4. State.
	if cl.disabled {
		return denyAs(401, ReasonDisabled, "llmedge: caller "+quote(cl.name)+" is disabled; ask your llmedge operator to re-enable it.")
	}
	if !cl.expiresAt.IsZero() && r.Now.After(cl.expiresAt) {
		return denyAs(401, ReasonExpired, "llmedge: the token of caller "+quote(cl.name)+" expired at "+
			cl.expiresAt.UTC().Format(time.RFC3339)+"; ask your llmedge operator for a new one.")
	}

	// 5. Source address.
	if !cl.ipAllowed(r.SourceIP) {
		from := "this address"
		if r.SourceIP.IsValid() {
			from = r.SourceIP.Unmap().WithZone("").String()
		}
		return denyAs(403, ReasonIPDenied, "llmedge: caller "+quote(cl.name)+" may not connect from "+from+
			"; ask your llmedge operator to allow this address.")
	}

	// 6. Upstream.
	if _, ok := cl.allowed[up.name]; !ok {
		return denyAs(403, ReasonUpstreamNotAllowed, "llmedge: caller "+quote(cl.name)+
			" is not allowed to use upstream "+quote(up.name)+"; ask your llmedge operator for access.")
	}

	// 7. Bring your own key.
	if cl.byok && r.Hop == wire.HopForward {
		return denyAs(403, ReasonUpstreamNotAllowed, "llmedge: caller "+quote(cl.name)+" brings its own provider key, and upstream "+
			quote(up.name)+" is served through another region, which uses its own key; ask your llmedge operator.")
	}
	if cl.byok {
		if at == srcLLMedgeToken {
			if place, ok := c.tokenBoundUpstream(r, up); ok {
				// Everything but llmedge-token passes through: refuse rather than hand
				// the provider an llmedge token.
				return denyAs(401, ReasonBYOKTokenAsKey, "llmedge: "+place+" carries an llmedge token, not a provider key. Caller "+
					quote(cl.name)+" brings its own provider key: send your llmedge token only in the llmedge-token header and your own "+
					up.name+" key in "+up.keyPlace()+".")
			}
		}
		if at != srcLLMedgeToken || !up.hasProviderKey(r) {
			return denyAs(401, ReasonBYOKKeyMissing, "llmedge: caller "+quote(cl.name)+
				" brings its own provider key: send your llmedge token in the llmedge-token header and your "+
				up.name+" key in "+up.keyPlace()+".")
		}
		d := allow(cl)
		d.RemoveHeaders = removeHeaders(r.Headers, func(h string) bool { return h == HeaderLLMedgeToken })
		// Gemini's ?key= is where a BYOK caller may put its own provider key.
		d.RemoveQueryParams = credentialQueryParams(r.Path, up.api == APIGemini)
		return d
	}

	// 8. Inject a key; an entry region holds none and names the caller for its peer.
	if r.Hop == wire.HopForward {
		d := allow(cl)
		d.SetHeaders = identityHeaders(cl, up)
		d.RemoveHeaders = removeHeaders(r.Headers, func(h string) bool {
			switch h {
			case HeaderLLMedgeToken, HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey:
				return true
			}
			return false
		})
		d.RemoveHeaders = withoutIdentity(d.RemoveHeaders)
		d.RemoveQueryParams = credentialQueryParams(r.Path, false)
		return d
	}
	return injectKey(r, cl, up, keys)
}

// injectKey allows cl's request with the next provider key of up in up's key header, the
// caller's credentials stripped, or refuses it with 503 when up has no usable key.
func injectKey(r Request, cl *caller, up *upstream, keys Keys) Decision {
	var key, name string
	ok := false
	if keys != nil {
		key, name, ok = keys.Next(up.name)
	}
	if !ok || !validKey(key) {
		d := deny(up.api, 503, ReasonNoKey, "llmedge: no key available for upstream "+quote(up.name)+
			"; try again later, and tell your llmedge operator if it persists.")
		d.Caller, d.Tenant = cl.name, cl.tenant
		return d
	}
	d := allow(cl)
	d.KeyName = name
	d.KeyHeader, d.KeyPrefix, d.KeySuffix = up.keyHeader, up.prefix, up.suffix
	d.SetHeaders = map[string]string{up.keyHeader: up.format(key)}
	d.RemoveHeaders = removeHeaders(r.Headers, func(h string) bool {
		switch h {
		case HeaderLLMedgeToken, HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey:
			// The key header is overwritten; removing it would drop the injected key.
			return h != up.keyHeader
		}
		return false
	})
	d.RemoveQueryParams = credentialQueryParams(r.Path, false)
	return d
}

// identityHeaders name the caller, its tenant and the upstream for a peer edge.
func identityHeaders(cl *caller, up *upstream) map[string]string {
	return map[string]string{wire.HeaderCaller: cl.name, wire.HeaderTenant: cl.tenant, wire.HeaderUpstream: up.name}
}

// withoutIdentity drops the identity headers from a removal list: were a forged one both
// removed and set, the removal could take the value set in its place too (the set
// overwrites the forged value anyway).
func withoutIdentity(hs []string) []string {
	return slices.DeleteFunc(hs, func(h string) bool {
		return h == wire.HeaderCaller || h == wire.HeaderTenant || h == wire.HeaderUpstream
	})
}

// decidePeer decides a request another region's edge forwarded to the peer listener. Envoy
// accepted the connection only with a certificate carrying another region's edge identity,
// and that edge's extauthz authenticated the caller and named it in x-llmedge-caller; the
// caller is checked against this region's own copy of the policy (state, expiry, allowed
// upstreams), not its token (never forwarded) or address (the connection is the edge's).
func (c *Compiled) decidePeer(r Request, up *upstream, keys Keys) Decision {
	name := r.Headers[wire.HeaderCaller]
	if name == "" {
		return deny(up.api, 401, ReasonMissingToken, "llmedge: a forwarded request must name its caller")
	}
	cl := c.byName[name]
	if cl == nil {
		return deny(up.api, 403, ReasonUnknownToken, "llmedge: the forwarded caller is unknown in this region")
	}
	denyAs := func(status int, reason, msg string) Decision {
		d := deny(up.api, status, reason, msg)
		d.Caller, d.Tenant = cl.name, cl.tenant
		return d
	}
	switch {
	case cl.disabled:
		return denyAs(401, ReasonDisabled, "llmedge: caller "+quote(cl.name)+" is disabled; ask your llmedge operator to re-enable it.")
	case !cl.expiresAt.IsZero() && r.Now.After(cl.expiresAt):
		return denyAs(401, ReasonExpired, "llmedge: the token of caller "+quote(cl.name)+" expired; ask your llmedge operator for a new one.")
	case cl.byok:
		return denyAs(403, ReasonUpstreamNotAllowed, "llmedge: caller "+quote(cl.name)+" brings its own provider key, which is not forwarded between regions.")
	}
	if _, ok := cl.allowed[up.name]; !ok {
		return denyAs(403, ReasonUpstreamNotAllowed, "llmedge: caller "+quote(cl.name)+
			" is not allowed to use upstream "+quote(up.name)+"; ask your llmedge operator for access.")
	}
	return injectKey(r, cl, up, keys)
}

// credentialQueryNames are query parameter names that carry credentials in some API,
// compared after percent-decoding, lower-casing and dropping "-" and "_" (so api_key,
// API-Key and %61pi_key are one name). No LLM API llmedge fronts uses them for anything
// else; Gemini's pageToken and the like do not match.
var credentialQueryNames = map[string]bool{
	"key": true, "apikey": true, "xapikey": true, "xgoogapikey": true, "googapikey": true,
	"token": true, "accesstoken": true, "authtoken": true, "idtoken": true, "sessiontoken": true,
	"bearer": true, "auth": true, "authorization": true, "llmedgetoken": true,
	"secret": true, "clientsecret": true, "password": true,
}

// credentialQueryParams lists the query parameters that must not reach the provider: those
// named like credentials (except Gemini's key when keepKey, which then carries a
// bring-your-own-key caller's provider key) and any whose name or value is shaped like an
// llmedge token. Names are listed as written, once each: Envoy removes query parameters by
// their raw name, so ?k%65y=... must be removed as "k%65y" or the caller's token would
// travel on to the provider.
func credentialQueryParams(path string, keepKey bool) []string {
	var out []string
	for k, v := range rawQuery(path) {
		name := normalizeQueryName(k)
		credential := credentialQueryNames[name] && !(keepKey && name == QueryKey)
		if !credential && !tokenShaped(k) && !tokenShaped(v) {
			continue
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

// normalizeQueryName decodes a raw parameter name (twice at most, for double encoding) and
// folds case, "-" and "_".
func normalizeQueryName(k string) string {
	for range 2 {
		dk, err := url.QueryUnescape(k)
		if err != nil || dk == k {
			break
		}
		k = dk
	}
	return strings.NewReplacer("-", "", "_", "").Replace(strings.ToLower(k))
}

// tokenShaped reports whether a raw query name or value holds something shaped like an
// llmedge token (its prefix), however it is percent-encoded or cased.
func tokenShaped(raw string) bool {
	for range 3 {
		if strings.Contains(strings.ToLower(raw), token.Prefix) {
			return true
		}
		d, err := url.QueryUnescape(raw)
		if err != nil || d == raw {
			return false
		}
		raw = d
	}
	return strings.Contains(strings.ToLower(raw), token.Prefix)
}

func allow(cl *caller) Decision {
	return Decision{Allow: true, Caller: cl.name, Tenant: cl.tenant, Reason: ReasonOK, ExpiresAt: cl.expiresAt}
}

// removeHeaders lists the request's headers that credential selects, then its x-llmedge-*
// headers, sorted. The result is nil when there is nothing to remove.
func removeHeaders(headers map[string]string, credential func(string) bool) []string {
	var out []string
	for _, h := range [...]string{HeaderLLMedgeToken, HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey} {
		if _, ok := headers[h]; ok && credential(h) {
			out = append(out, h)
		}
	}
	n := len(out)
	for h := range headers {
		if strings.HasPrefix(h, InternalHeaderPrefix) {
			out = append(out, h)
		}
	}
	slices.Sort(out[n:])
	return out
}

// credential is a value found in a place where a caller may put its token.
type credential struct {
	src   tokenSource
	value string
	// caller is the caller whose token value is, nil when it is nobody's.
	caller *caller
}

// findCredentials returns the non-empty values among llmedge-token, authorization
// (Bearer), x-api-key, x-goog-api-key and the key query parameter, in that order, each
// looked up. An array rather than a slice keeps the request path free of allocations.
func (c *Compiled) findCredentials(r Request) (out [5]credential, n int) {
	add := func(src tokenSource, v string) {
		if v != "" {
			out[n] = credential{src: src, value: v, caller: c.callers[token.Sum(v)]}
			n++
		}
	}
	add(srcLLMedgeToken, strings.TrimSpace(r.Headers[HeaderLLMedgeToken]))
	if t, ok := bearer(r.Headers[HeaderAuthorization]); ok {
		add(srcAuthorization, t)
	}
	add(srcAPIKey, strings.TrimSpace(r.Headers[HeaderAPIKey]))
	add(srcGoogAPIKey, strings.TrimSpace(r.Headers[HeaderGoogAPIKey]))
	if t, _ := queryParam(r.Path, QueryKey); t != "" {
		add(srcQuery, t)
	}
	return out, n
}

// place names a token source for a message.
func (s tokenSource) place() string {
	switch s {
	case srcLLMedgeToken:
		return "the llmedge-token header"
	case srcAuthorization:
		return "the Authorization header"
	case srcAPIKey:
		return "the x-api-key header"
	case srcGoogAPIKey:
		return "the x-goog-api-key header"
	case srcQuery:
		return "the key query parameter"
	}
	return "the request"
}

// twoCallersMessage explains tokens of two callers in one request. It names neither: the
// sender may not know, and should not learn, whose the second token is.
func twoCallersMessage(a, b tokenSource) string {
	return "llmedge: the request carries llmedge tokens of two different callers, in " + a.place() + " and " + b.place() +
		"; send one token only (the Authorization header does not take precedence)."
}

// tokenBoundUpstream reports where a request of a bring-your-own-key caller carries an
// llmedge token (shaped like one, or any caller's) in something that passes through to
// the provider: the credential headers other than llmedge-token, the upstream's key
// header, or any query parameter. It names the place, never the value.
func (c *Compiled) tokenBoundUpstream(r Request, up *upstream) (string, bool) {
	isToken := func(v string) bool {
		v = strings.TrimSpace(v)
		return v != "" && (token.LooksLike(v) || c.callers[token.Sum(v)] != nil)
	}
	for _, h := range [...]string{HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey, up.keyHeader} {
		v, ok := r.Headers[h]
		if !ok {
			continue
		}
		t, isBearer := bearer(v)
		// framed is the value inside the upstream's key_format, e.g. "Token {key}; v=1".
		framed := h == up.keyHeader && len(v) >= len(up.prefix)+len(up.suffix) &&
			strings.EqualFold(v[:len(up.prefix)], up.prefix) && strings.EqualFold(v[len(v)-len(up.suffix):], up.suffix) &&
			isToken(v[len(up.prefix):len(v)-len(up.suffix)])
		if isToken(v) || (isBearer && isToken(t)) || framed {
			return "the " + h + " header", true
		}
	}
	for k, v := range rawQuery(r.Path) {
		// Only Gemini's key passes through to the provider; any other parameter holding a
		// token is removed on the way (credentialQueryParams), so it needs no refusal.
		if normalizeQueryName(k) != QueryKey {
			continue
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		if isToken(v) {
			// The parameter's name is the caller's text: not echoed either.
			return "the key query parameter", true
		}
	}
	return "", false
}

// bearer extracts the token of an "Authorization: Bearer <token>" value; the scheme is
// case-insensitive.
func bearer(v string) (string, bool) {
	v = strings.TrimSpace(v)
	const scheme = "bearer"
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) || (v[len(scheme)] != ' ' && v[len(scheme)] != '\t') {
		return "", false
	}
	t := strings.TrimSpace(v[len(scheme):])
	return t, t != ""
}

// rawQuery yields each parameter of path's query (fragment dropped) as written, neither
// decoded nor deduplicated: the callers decide how to match a name, and Envoy removes
// parameters by their raw spelling.
func rawQuery(path string) iter.Seq2[string, string] {
	return func(yield func(k, v string) bool) {
		_, q, ok := strings.Cut(path, "?")
		if !ok {
			return
		}
		if i := strings.IndexByte(q, '#'); i >= 0 {
			q = q[:i]
		}
		for q != "" {
			var part string
			part, q, _ = strings.Cut(q, "&")
			k, v, _ := strings.Cut(part, "=")
			if !yield(k, v) {
				return
			}
		}
	}
}

// queryParam returns the (decoded) value of the first name parameter in path's query and
// whether the parameter is present at all.
func queryParam(path, name string) (value string, present bool) {
	for k, v := range rawQuery(path) {
		if k != name {
			if !strings.ContainsAny(k, "%+") {
				continue
			}
			if dk, err := url.QueryUnescape(k); err != nil || dk != name {
				continue
			}
		}
		if strings.ContainsAny(v, "%+") {
			dv, err := url.QueryUnescape(v)
			if err != nil {
				return "", true
			}
			v = dv
		}
		return strings.TrimSpace(v), true
	}
	return "", false
}

// validKey rejects an empty key or one that could inject headers; the key store filters
// these already, so this is defence in depth.
func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// GuessAPI picks the API family whose error shape a client most likely understands, from
// the request alone, for when the policy cannot say (no policy yet, or an unknown
// upstream), by internal/wire's signs, the ones Envoy's own local replies follow.
func GuessAPI(r Request) string {
	for _, g := range wire.APIGuesses() {
		for _, h := range g.Headers {
			if _, ok := r.Headers[h]; ok {
				return g.API
			}
		}
		for _, q := range g.QueryParams {
			if _, ok := queryParam(r.Path, q); ok {
				return g.API
			}
		}
		for _, sub := range g.PathContains {
			if strings.Contains(r.Path, sub) {
				return g.API
			}
		}
	}
	return APIOpenAI
}

// KeyRing lists an upstream's keys in a fixed order (by name), values and names alike.
type KeyRing interface {
	Keys(upstream string) (values []string)
}

// RetryKey chooses the key of a request's retry (attempt 2 and later): the key after
// current, the one the previous try carried, so a 429 caused by one key's quota is retried
// on the next and a request walks the keys in order. Envoy's upstream filters change the
// request's own headers, which every later try starts from, so current is always the
// previous try's key (checked on Envoy 1.40 with three keys: e2e TestKeyFailoverThreeKeys).
// ok is false, and the header is left as it is, when the upstream is
// unknown, has fewer than two keys, or current is not one of its keys (a bring-your-own-key
// caller's key, or a key rotated away since the first try).
func (c *Compiled) RetryKey(upstream, current string, attempt int, keys KeyRing) (header, value string, ok bool) {
	if c == nil || keys == nil || attempt < 2 {
		return "", "", false
	}
	up := c.upstreams[upstream]
	if up == nil {
		return "", "", false
	}
	ring := keys.Keys(upstream)
	if len(ring) < 2 {
		return "", "", false
	}
	for i, k := range ring {
		if subtle.ConstantTimeCompare([]byte(up.format(k)), []byte(current)) == 1 {
			next := ring[(i+1)%len(ring)]
			if !validKey(next) {
				return "", "", false
			}
			return up.keyHeader, up.format(next), true
		}
	}
	return "", "", false
}

// KeyHeader is the header an upstream's key goes in; ok is false for an unknown upstream.
func (c *Compiled) KeyHeader(upstream string) (string, bool) {
	if c == nil {
		return "", false
	}
	up := c.upstreams[upstream]
	if up == nil {
		return "", false
	}
	return up.keyHeader, true
}
