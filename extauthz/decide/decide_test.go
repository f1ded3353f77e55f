package decide

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

// Tokens of the test policy's callers. None is a substring of a caller, tenant, upstream or
// key name, so the leak checks below cannot match by accident.
const (
	tokAlice   = "llm-tok-ALICE-6f1c2e0b9d"  // all upstreams
	tokAlice2  = "llm-tok-ALICE2-0a9b8c7d6e" // alice's second token
	tokBob     = "llm-tok-BOB-2b3c4d5e6f"    // disabled
	tokCarol   = "llm-tok-CAROL-3c4d5e6f70"  // expires at expiry
	tokDave    = "llm-tok-DAVE-4d5e6f7081"   // CIDR-restricted
	tokFrank   = "llm-tok-FRANK-5e6f708192"  // azure only
	tokByok    = "llm-tok-BYOK-6f708192a3"   // brings own key
	tokUnknown = "llm-tok-NOBODY-708192a3b4" // in no policy
	// Shaped like llmedge tokens (token.Prefix) but in no policy: rotated out, say.
	tokStale  = "llme_STALE-81920a3b4c5d"
	tokStale2 = "llme_STALE2-9a3b4c5d6e7f"

	keyOpenAI    = "sk-KEYVALUE-openai-11111"
	keyAnthropic = "sk-ant-KEYVALUE-22222"
	keyGemini    = "AIza-KEYVALUE-33333"
	keyAzure     = "az-KEYVALUE-44444"

	// provider keys a BYOK caller sends
	ownKey = "sk-OWNPROVIDERKEY-55555"
)

var (
	expiry = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	now    = time.Date(2026, 5, 1, 9, 30, 0, 0, time.UTC)
)

func sum(tok string) string { return token.Digest(tok) }

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

var allUpstreams = []string{"openai", "anthropic", "gemini", "azure"}

func testPolicy() Policy {
	return Policy{
		Region: "hk",
		Upstreams: []Upstream{
			{Name: "anthropic", KeyHeader: "x-api-key", KeyFormat: "{key}", API: APIAnthropic},
			{Name: "azure", KeyHeader: "api-key", KeyFormat: "{key}", API: APIOpenAI},
			{Name: "gemini", KeyHeader: "x-goog-api-key", KeyFormat: "{key}", API: APIGemini},
			{Name: "openai", KeyHeader: "authorization", KeyFormat: "Bearer {key}", API: APIOpenAI},
		},
		Callers: []Caller{
			{Name: "alice", Tenant: "team-a", TokenSHA256: []string{sum(tokAlice), strings.ToUpper(sum(tokAlice2))}, AllowedUpstreams: allUpstreams},
			{Name: "bob", Tenant: "team-b", TokenSHA256: []string{sum(tokBob)}, AllowedUpstreams: allUpstreams, Disabled: true},
			{Name: "carol", Tenant: "team-c", TokenSHA256: []string{sum(tokCarol)}, AllowedUpstreams: allUpstreams, ExpiresAt: expiry},
			{Name: "dave", Tenant: "team-d", TokenSHA256: []string{sum(tokDave)}, AllowedUpstreams: allUpstreams,
				AllowCIDRs: prefixes("10.0.0.0/8", "2001:db8::/32"), DenyCIDRs: prefixes("10.9.0.0/16", "2001:db8:bad::/48")},
			{Name: "frank", Tenant: "team-f", TokenSHA256: []string{sum(tokFrank)}, AllowedUpstreams: []string{"azure"}},
			{Name: "byok", Tenant: "team-y", TokenSHA256: []string{sum(tokByok)}, AllowedUpstreams: allUpstreams, BYOK: true},
		},
	}
}

func compiled(t testing.TB) *Compiled {
	t.Helper()
	c, err := Compile(testPolicy())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fakeKeys hands out one key per upstream and counts calls.
type fakeKeys struct {
	keys  map[string][2]string // upstream -> value, name
	calls int
}

func (f *fakeKeys) Next(up string) (string, string, bool) {
	f.calls++
	v, ok := f.keys[up]
	return v[0], v[1], ok
}

func newKeys() *fakeKeys {
	return &fakeKeys{keys: map[string][2]string{
		"openai":    {keyOpenAI, "openai-primary"},
		"anthropic": {keyAnthropic, "anthropic-primary"},
		"gemini":    {keyGemini, "gemini-primary"},
		"azure":     {keyAzure, "azure-primary"},
	}}
}

var keyOf = map[string]string{"openai": keyOpenAI, "anthropic": keyAnthropic, "gemini": keyGemini, "azure": keyAzure}

// nativeAuth puts tok where upstream's native SDK would.
func nativeAuth(upstream, tok string) (map[string]string, string) {
	switch upstream {
	case "anthropic":
		return map[string]string{"x-api-key": tok, "anthropic-version": "2023-06-01"}, "/anthropic/v1/messages"
	case "gemini":
		return map[string]string{"x-goog-api-key": tok}, "/gemini/v1beta/models/m:generateContent"
	default:
		return map[string]string{"authorization": "Bearer " + tok}, "/" + upstream + "/v1/chat/completions"
	}
}

func req(upstream, tok string) Request {
	h, path := nativeAuth(upstream, tok)
	h["content-type"] = "application/json"
	return Request{Region: "hk", Upstream: upstream, Route: upstream + "-chat", Headers: h, Path: path,
		SourceIP: netip.MustParseAddr("10.1.2.3"), Now: now}
}

// checkBody decodes d.Body as api's error shape and checks its fields.
func checkBody(t *testing.T, api string, d Decision) {
	t.Helper()
	if d.ContentType != "application/json" {
		t.Errorf("ContentType = %q", d.ContentType)
	}
	var raw map[string]any
	if err := json.Unmarshal(d.Body, &raw); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, d.Body)
	}
	switch api {
	case APIOpenAI:
		var e struct {
			Error struct{ Message, Type, Code string }
		}
		mustDecode(t, d.Body, &e)
		if e.Error.Message == "" || e.Error.Code != d.Reason {
			t.Errorf("openai body %s: want message and code %q", d.Body, d.Reason)
		}
		wantType := "llmedge_auth_error"
		switch d.Reason {
		case ReasonMissingToken, ReasonBYOKKeyMissing, ReasonBYOKTokenAsKey, ReasonConflictingCredentials:
			wantType = "invalid_request_error"
		}
		if e.Error.Type != wantType {
			t.Errorf("openai error.type = %q, want %q", e.Error.Type, wantType)
		}
		if len(raw) != 1 {
			t.Errorf("openai body has extra top-level fields: %s", d.Body)
		}
	case APIAnthropic:
		var e struct {
			Type  string
			Error struct{ Type, Message string }
		}
		mustDecode(t, d.Body, &e)
		want := map[int]string{400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 500: "api_error", 503: "api_error"}[d.Status]
		if e.Type != "error" || e.Error.Type != want || e.Error.Message == "" {
			t.Errorf("anthropic body %s: want type error, error.type %q and a message", d.Body, want)
		}
	case APIGemini:
		var e struct {
			Error struct {
				Code    int
				Message string
				Status  string
			}
		}
		mustDecode(t, d.Body, &e)
		want := map[int]string{400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 500: "INTERNAL", 503: "UNAVAILABLE"}[d.Status]
		if e.Error.Code != d.Status || e.Error.Status != want || e.Error.Message == "" {
			t.Errorf("gemini body %s: want code %d, status %q and a message", d.Body, d.Status, want)
		}
	default:
		t.Fatalf("unknown api %q", api)
	}
}

func mustDecode(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func message(t *testing.T, d Decision) string {
	t.Helper()
	var e struct {
		Error struct{ Message string }
	}
	mustDecode(t, d.Body, &e)
	return e.Error.Message
}

// checkDenied checks the fields every denial shares.
func checkDenied(t *testing.T, d Decision, status int, reason string) {
	t.Helper()
	if d.Allow || d.Status != status || d.Reason != reason {
		t.Fatalf("got allow=%v status=%d reason=%q, want deny %d %q (body %s)", d.Allow, d.Status, d.Reason, status, reason, d.Body)
	}
	if d.SetHeaders != nil || d.RemoveHeaders != nil || d.RemoveQueryParams != nil || d.KeyName != "" {
		t.Errorf("denial carries rewrites: %+v", d)
	}
}

// TestDenialsPerAPI runs every denial rule against one upstream of each API family and
// checks status, reason, body shape and the caller fields.
func TestDenialsPerAPI(t *testing.T) {
	c := compiled(t)
	type scenario struct {
		name       string
		mut        func(r *Request, up string)
		keys       Keys
		status     int
		reason     string
		caller     string
		msgHas     []string
		msgHasNot  []string
		keyCallsOK bool
	}
	noKeys := &fakeKeys{}
	scenarios := []scenario{
		{name: "missing token", mut: func(r *Request, up string) { r.Headers = map[string]string{"content-type": "application/json"} },
			status: 401, reason: ReasonMissingToken, msgHas: []string{"llmedge-token"}},
		{name: "unknown token", mut: func(r *Request, up string) { *r = req(up, tokUnknown) },
			status: 401, reason: ReasonUnknownToken},
		{name: "disabled", mut: func(r *Request, up string) { *r = req(up, tokBob) },
			status: 401, reason: ReasonDisabled, caller: "bob", msgHas: []string{`"bob"`, "disabled"}},
		{name: "expired", mut: func(r *Request, up string) { *r = req(up, tokCarol); r.Now = expiry.Add(time.Second) },
			status: 401, reason: ReasonExpired, caller: "carol", msgHas: []string{"expired", "2026-06-01T12:00:00Z"}},
		{name: "ip denied by deny list", mut: func(r *Request, up string) { *r = req(up, tokDave); r.SourceIP = netip.MustParseAddr("10.9.1.1") },
			status: 403, reason: ReasonIPDenied, caller: "dave", msgHas: []string{"10.9.1.1"}, msgHasNot: []string{"10.9.0.0", "/16", "10.0.0.0", "2001:db8"}},
		{name: "ip outside allow list", mut: func(r *Request, up string) { *r = req(up, tokDave); r.SourceIP = netip.MustParseAddr("192.0.2.7") },
			status: 403, reason: ReasonIPDenied, caller: "dave", msgHas: []string{"192.0.2.7"}, msgHasNot: []string{"10.0.0.0", "/8", "2001:db8"}},
		{name: "upstream not allowed", mut: func(r *Request, up string) { *r = req(up, tokFrank) },
			status: 403, reason: ReasonUpstreamNotAllowed, caller: "frank", msgHas: []string{`"frank"`}},
		{name: "byok without llmedge-token", mut: func(r *Request, up string) { *r = req(up, tokByok) },
			status: 401, reason: ReasonBYOKKeyMissing, caller: "byok", msgHas: []string{"llmedge-token"}},
		{name: "byok without provider key", mut: func(r *Request, up string) {
			*r = req(up, tokByok)
			r.Headers = map[string]string{"llmedge-token": tokByok}
		}, status: 401, reason: ReasonBYOKKeyMissing, caller: "byok"},
		{name: "no key", mut: func(r *Request, up string) {}, keys: noKeys,
			status: 503, reason: ReasonNoKey, caller: "alice", msgHasNot: []string{"primary"}},
		{name: "region mismatch", mut: func(r *Request, up string) { r.Region = "sg" },
			status: 500, reason: ReasonBadRoute, msgHasNot: []string{"sg", "hk"}},
	}
	for _, up := range []string{"openai", "anthropic", "gemini"} {
		api := c.API(up)
		for _, sc := range scenarios {
			t.Run(up+"/"+sc.name, func(t *testing.T) {
				r := req(up, tokAlice)
				sc.mut(&r, up)
				keys := sc.keys
				if keys == nil {
					keys = newKeys()
				}
				d := c.Decide(r, keys)
				checkDenied(t, d, sc.status, sc.reason)
				checkBody(t, api, d)
				if d.Caller != sc.caller {
					t.Errorf("Caller = %q, want %q", d.Caller, sc.caller)
				}
				msg := message(t, d)
				for _, s := range sc.msgHas {
					if !strings.Contains(msg, s) {
						t.Errorf("message %q lacks %q", msg, s)
					}
				}
				for _, s := range sc.msgHasNot {
					if strings.Contains(msg, s) {
						t.Errorf("message %q contains %q", msg, s)
					}
				}
				if sc.reason == ReasonUpstreamNotAllowed && !strings.Contains(msg, quote(up)) {
					t.Errorf("message %q does not name upstream %q", msg, up)
				}
				if sc.reason == ReasonNoKey && !strings.Contains(msg, "no key available for upstream "+quote(up)) {
					t.Errorf("no_key message %q", msg)
				}
			})
		}
	}
}

func TestMissingTokenMessageSaysWhere(t *testing.T) {
	c := compiled(t)
	for up, where := range map[string]string{"openai": "Authorization: Bearer", "anthropic": "x-api-key", "gemini": "key query parameter"} {
		r := req(up, "")
		r.Headers = map[string]string{}
		d := c.Decide(r, newKeys())
		checkDenied(t, d, 401, ReasonMissingToken)
		if msg := message(t, d); !strings.Contains(msg, where) {
			t.Errorf("%s: missing-token message %q does not say %q", up, msg, where)
		}
		if strings.Contains(string(d.Body), `\u003c`) {
			t.Errorf("body is HTML-escaped: %s", d.Body)
		}
	}
}

func TestTokenSources(t *testing.T) {
	c := compiled(t)
	tests := []struct {
		name    string
		headers map[string]string
		query   string
		reason  string
	}{
		{"llmedge-token", map[string]string{"llmedge-token": tokAlice}, "", ReasonOK},
		{"bearer", map[string]string{"authorization": "Bearer " + tokAlice}, "", ReasonOK},
		{"bearer lower-case scheme", map[string]string{"authorization": "bearer " + tokAlice}, "", ReasonOK},
		{"bearer upper-case scheme, extra spaces", map[string]string{"authorization": "BEARER   " + tokAlice + " "}, "", ReasonOK},
		{"bearer tab", map[string]string{"authorization": "Bearer\t" + tokAlice}, "", ReasonOK},
		{"x-api-key", map[string]string{"x-api-key": tokAlice}, "", ReasonOK},
		{"x-goog-api-key", map[string]string{"x-goog-api-key": tokAlice}, "", ReasonOK},
		{"key query", nil, "?alt=sse&key=" + tokAlice, ReasonOK},
		{"key query percent-encoded", nil, "?key=" + strings.ReplaceAll(tokAlice, "-", "%2D"), ReasonOK},
		{"key query name percent-encoded", nil, "?k%65y=" + tokAlice, ReasonOK},
		{"second token of a caller", map[string]string{"x-api-key": tokAlice2}, "", ReasonOK},
		// A valid token wins over a stale one wherever each sits; no header takes precedence.
		{"llmedge-token valid, authorization stale", map[string]string{"llmedge-token": tokAlice, "authorization": "Bearer " + tokStale}, "", ReasonOK},
		{"authorization stale, x-api-key valid", map[string]string{"authorization": "Bearer " + tokStale, "x-api-key": tokAlice}, "", ReasonOK},
		{"x-api-key valid, x-goog-api-key stale", map[string]string{"x-api-key": tokAlice, "x-goog-api-key": tokStale}, "", ReasonOK},
		{"x-goog-api-key stale, ?key= valid", map[string]string{"x-goog-api-key": tokStale}, "?key=" + tokAlice, ReasonOK},
		{"authorization valid, ?key= stale", map[string]string{"authorization": "Bearer " + tokAlice}, "?key=" + tokStale, ReasonOK},
		{"two tokens of the same caller", map[string]string{"authorization": "Bearer " + tokAlice, "x-api-key": tokAlice2}, "", ReasonOK},
		{"llmedge-token stale, authorization valid", map[string]string{"llmedge-token": tokStale, "authorization": "Bearer " + tokAlice}, "", ReasonOK},
		{"llmedge-token stale alone", map[string]string{"llmedge-token": tokStale}, "", ReasonUnknownToken},
		{"two stale tokens", map[string]string{"authorization": "Bearer " + tokStale, "x-api-key": tokStale2}, "", ReasonUnknownToken},
		{"non-bearer authorization is not a token", map[string]string{"authorization": "Basic " + tokAlice}, "", ReasonMissingToken},
		{"non-bearer authorization falls through", map[string]string{"authorization": "Basic Zm9vOmJhcg==", "x-api-key": tokAlice}, "", ReasonOK},
		{"bearer without token", map[string]string{"authorization": "Bearer "}, "", ReasonMissingToken},
		{"bearer glued to token", map[string]string{"authorization": "Bearer" + tokAlice}, "", ReasonMissingToken},
		{"empty headers do not count", map[string]string{"llmedge-token": "", "x-api-key": "  ", "x-goog-api-key": tokAlice}, "", ReasonOK},
		{"empty key param", nil, "?key=", ReasonMissingToken},
		{"other params only", nil, "?keys=" + tokAlice + "&apikey=" + tokAlice, ReasonMissingToken},
		{"unknown token", map[string]string{"x-api-key": tokUnknown}, "", ReasonUnknownToken},
		{"token is case-sensitive", map[string]string{"x-api-key": strings.ToLower(tokAlice)}, "", ReasonUnknownToken},
		{"nothing", map[string]string{"content-type": "application/json"}, "", ReasonMissingToken},
	}
	for _, up := range []string{"openai", "anthropic", "gemini"} {
		for _, tt := range tests {
			t.Run(up+"/"+tt.name, func(t *testing.T) {
				h := map[string]string{}
				maps.Copy(h, tt.headers)
				r := Request{Region: "hk", Upstream: up, Headers: h, Path: "/" + up + "/v1/x" + tt.query, SourceIP: netip.MustParseAddr("10.0.0.1"), Now: now}
				d := c.Decide(r, newKeys())
				if d.Reason != tt.reason {
					t.Fatalf("reason = %q, want %q (body %s)", d.Reason, tt.reason, d.Body)
				}
				if tt.reason == ReasonOK && (!d.Allow || d.Caller != "alice" || d.Tenant != "team-a") {
					t.Errorf("want allow as alice/team-a, got %+v", d)
				}
				if tt.reason != ReasonOK {
					checkBody(t, c.API(up), d)
				}
			})
		}
	}
}

// TestAllowRewrites checks the header and query rewrites of allowed requests.
func TestAllowRewrites(t *testing.T) {
	c := compiled(t)
	tests := []struct {
		name       string
		upstream   string
		headers    map[string]string
		query      string
		set        map[string]string
		remove     []string
		removeQ    []string
		keyName    string
		wantCaller string
	}{
		{
			name:     "openai via bearer: key header overwritten, not removed",
			upstream: "openai", headers: map[string]string{"authorization": "Bearer " + tokAlice},
			set: map[string]string{"authorization": "Bearer " + keyOpenAI}, keyName: "openai-primary",
		},
		{
			name:     "openai via llmedge-token: every other credential removed except the key header",
			upstream: "openai", headers: map[string]string{"llmedge-token": tokAlice, "authorization": "Bearer " + tokStale, "x-api-key": tokStale, "x-goog-api-key": tokStale2},
			set:    map[string]string{"authorization": "Bearer " + keyOpenAI},
			remove: []string{"llmedge-token", "x-api-key", "x-goog-api-key"}, keyName: "openai-primary",
		},
		{
			name:     "anthropic via x-api-key",
			upstream: "anthropic", headers: map[string]string{"x-api-key": tokAlice, "anthropic-version": "2023-06-01"},
			set: map[string]string{"x-api-key": keyAnthropic}, keyName: "anthropic-primary",
		},
		{
			name:     "anthropic via bearer: authorization removed",
			upstream: "anthropic", headers: map[string]string{"authorization": "Bearer " + tokAlice},
			set: map[string]string{"x-api-key": keyAnthropic}, remove: []string{"authorization"}, keyName: "anthropic-primary",
		},
		{
			name:     "gemini via ?key=: key param removed",
			upstream: "gemini", query: "?alt=sse&key=" + tokAlice,
			set: map[string]string{"x-goog-api-key": keyGemini}, removeQ: []string{"key"}, keyName: "gemini-primary",
		},
		{
			name:     "gemini via header with a stray ?key=: key param still removed",
			upstream: "gemini", headers: map[string]string{"x-goog-api-key": tokAlice}, query: "?key=" + tokStale,
			set: map[string]string{"x-goog-api-key": keyGemini}, removeQ: []string{"key"}, keyName: "gemini-primary",
		},
		{
			name:     "azure custom header: all credential headers removed",
			upstream: "azure", headers: map[string]string{"authorization": "Bearer " + tokFrank, "api-key": "caller-sent"},
			set: map[string]string{"api-key": keyAzure}, remove: []string{"authorization"}, keyName: "azure-primary", wantCaller: "frank",
		},
		{
			name:     "x-llmedge-* stripped, sorted, lookalikes kept",
			upstream: "openai",
			headers: map[string]string{"authorization": "Bearer " + tokAlice, "x-llmedge-caller": "mallory", "x-llmedge-tenant": "t",
				"x-llmedge-": "", "x-llmedgeish": "keep", "llmedge-other": "keep", "x-request-id": "keep"},
			set:    map[string]string{"authorization": "Bearer " + keyOpenAI},
			remove: []string{"x-llmedge-", "x-llmedge-caller", "x-llmedge-tenant"}, keyName: "openai-primary",
		},
		{
			name:     "credential headers first, then x-llmedge-*",
			upstream: "gemini", headers: map[string]string{"llmedge-token": tokAlice, "x-llmedge-route": "x", "authorization": "Basic abc"},
			set:    map[string]string{"x-goog-api-key": keyGemini},
			remove: []string{"llmedge-token", "authorization", "x-llmedge-route"}, keyName: "gemini-primary",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Request{Region: "hk", Upstream: tt.upstream, Headers: tt.headers, Path: "/" + tt.upstream + "/v1/x" + tt.query,
				SourceIP: netip.MustParseAddr("10.0.0.1"), Now: now}
			keys := newKeys()
			d := c.Decide(r, keys)
			if !d.Allow || d.Reason != ReasonOK || d.Status != 0 || d.Body != nil {
				t.Fatalf("want allow, got %+v (body %s)", d, d.Body)
			}
			want := tt.wantCaller
			if want == "" {
				want = "alice"
			}
			if d.Caller != want {
				t.Errorf("Caller = %q, want %q", d.Caller, want)
			}
			if !maps.Equal(d.SetHeaders, tt.set) {
				t.Errorf("SetHeaders = %v, want %v", d.SetHeaders, tt.set)
			}
			if !slices.Equal(d.RemoveHeaders, tt.remove) {
				t.Errorf("RemoveHeaders = %q, want %q", d.RemoveHeaders, tt.remove)
			}
			for h := range d.SetHeaders {
				if slices.Contains(d.RemoveHeaders, h) {
					t.Errorf("key header %q is also removed: the injected key would be dropped", h)
				}
			}
			if !slices.Equal(d.RemoveQueryParams, tt.removeQ) {
				t.Errorf("RemoveQueryParams = %q, want %q", d.RemoveQueryParams, tt.removeQ)
			}
			if d.KeyName != tt.keyName {
				t.Errorf("KeyName = %q, want %q", d.KeyName, tt.keyName)
			}
			if got, want := d.SetHeaders[d.KeyHeader], d.KeyPrefix+keys.keys[tt.upstream][0]+d.KeySuffix; len(d.SetHeaders) != 1 || got != want {
				t.Errorf("key header %q (prefix %q, suffix %q) does not hold the key as they say (%d set headers)", d.KeyHeader, d.KeyPrefix, d.KeySuffix, len(d.SetHeaders))
			}
			if keys.calls != 1 {
				t.Errorf("keys.Next called %d times, want 1", keys.calls)
			}
		})
	}
}

func TestBYOK(t *testing.T) {
	c := compiled(t)
	tests := []struct {
		name     string
		upstream string
		headers  map[string]string
		query    string
		reason   string
		remove   []string
	}{
		{"openai: token in llmedge-token, key in authorization", "openai",
			map[string]string{"llmedge-token": tokByok, "authorization": "Bearer " + ownKey, "x-llmedge-debug": "1"}, "",
			ReasonOK, []string{"llmedge-token", "x-llmedge-debug"}},
		{"anthropic: key in x-api-key", "anthropic",
			map[string]string{"llmedge-token": tokByok, "x-api-key": ownKey}, "", ReasonOK, []string{"llmedge-token"}},
		{"gemini: key in x-goog-api-key", "gemini",
			map[string]string{"llmedge-token": tokByok, "x-goog-api-key": ownKey}, "", ReasonOK, []string{"llmedge-token"}},
		{"gemini: key in ?key=, which stays", "gemini",
			map[string]string{"llmedge-token": tokByok}, "?key=" + ownKey, ReasonOK, []string{"llmedge-token"}},
		{"azure: key in its own header", "azure",
			map[string]string{"llmedge-token": tokByok, "api-key": ownKey}, "", ReasonOK, []string{"llmedge-token"}},
		{"token in authorization instead of llmedge-token", "openai",
			map[string]string{"authorization": "Bearer " + tokByok}, "", ReasonBYOKKeyMissing, nil},
		{"token in x-api-key instead of llmedge-token", "anthropic",
			map[string]string{"x-api-key": tokByok}, "", ReasonBYOKKeyMissing, nil},
		{"token in ?key= instead of llmedge-token", "gemini",
			nil, "?key=" + tokByok, ReasonBYOKKeyMissing, nil},
		{"no provider key", "openai",
			map[string]string{"llmedge-token": tokByok}, "", ReasonBYOKKeyMissing, nil},
		{"provider key in the wrong header", "anthropic",
			map[string]string{"llmedge-token": tokByok, "authorization": "Bearer " + ownKey}, "", ReasonBYOKKeyMissing, nil},
		{"empty provider key", "openai",
			map[string]string{"llmedge-token": tokByok, "authorization": " "}, "", ReasonBYOKKeyMissing, nil},
		{"gemini ?key= does not count for other APIs", "openai",
			map[string]string{"llmedge-token": tokByok}, "?key=" + ownKey, ReasonBYOKKeyMissing, nil},

		// An llmedge token, the caller's own or anyone's, in anything that passes through
		// to the provider is refused, never forwarded.
		{"own token as the provider key", "openai",
			map[string]string{"llmedge-token": tokByok, "authorization": "Bearer " + tokByok}, "", ReasonBYOKTokenAsKey, nil},
		{"another caller's token as the provider key", "openai",
			map[string]string{"llmedge-token": tokByok, "authorization": "Bearer " + tokAlice}, "", ReasonBYOKTokenAsKey, nil},
		{"a token-shaped value as the provider key", "openai",
			map[string]string{"llmedge-token": tokByok, "authorization": "bearer  " + tokStale}, "", ReasonBYOKTokenAsKey, nil},
		{"token-shaped x-api-key", "anthropic",
			map[string]string{"llmedge-token": tokByok, "x-api-key": " " + tokStale}, "", ReasonBYOKTokenAsKey, nil},
		{"own key right, a token in authorization which would pass through", "anthropic",
			map[string]string{"llmedge-token": tokByok, "x-api-key": ownKey, "authorization": "Bearer " + tokStale}, "", ReasonBYOKTokenAsKey, nil},
		{"another caller's token in x-goog-api-key", "gemini",
			map[string]string{"llmedge-token": tokByok, "x-goog-api-key": tokAlice}, "", ReasonBYOKTokenAsKey, nil},
		{"token in ?key=", "gemini",
			map[string]string{"llmedge-token": tokByok}, "?key=" + tokStale, ReasonBYOKTokenAsKey, nil},
		{"own key right, a token in a percent-encoded ?key=", "gemini",
			map[string]string{"llmedge-token": tokByok, "x-goog-api-key": ownKey}, "?alt=sse&k%65y=" + strings.ReplaceAll(tokByok, "-", "%2D"), ReasonBYOKTokenAsKey, nil},
		{"token in a custom key header", "azure",
			map[string]string{"llmedge-token": tokByok, "api-key": tokStale}, "", ReasonBYOKTokenAsKey, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Request{Region: "hk", Upstream: tt.upstream, Headers: tt.headers, Path: "/" + tt.upstream + "/v1/x" + tt.query,
				SourceIP: netip.MustParseAddr("10.0.0.1"), Now: now}
			keys := newKeys()
			d := c.Decide(r, keys)
			if d.Reason != tt.reason {
				t.Fatalf("reason = %q, want %q (body %s)", d.Reason, tt.reason, d.Body)
			}
			if d.Caller != "byok" || d.Tenant != "team-y" {
				t.Errorf("Caller/Tenant = %q/%q", d.Caller, d.Tenant)
			}
			if keys.calls != 0 {
				t.Errorf("a BYOK request drew %d upstream keys", keys.calls)
			}
			if tt.reason != ReasonOK {
				checkDenied(t, d, 401, tt.reason)
				checkBody(t, c.API(tt.upstream), d)
				msg := message(t, d)
				if !strings.Contains(msg, "llmedge-token") {
					t.Errorf("message %q does not say where the llmedge token goes", msg)
				}
				if tt.reason == ReasonBYOKTokenAsKey && (!strings.Contains(msg, "not a provider key") || !strings.Contains(msg, tt.upstream+" key")) {
					t.Errorf("message %q does not explain that an llmedge token is not a %s key", msg, tt.upstream)
				}
				for _, secret := range []string{tokByok, tokAlice, tokStale, ownKey, "api_key", "api%5Fkey"} {
					if strings.Contains(string(d.Body), secret) {
						t.Errorf("body echoes %q: %s", secret, d.Body)
					}
				}
				return
			}
			if !d.Allow || d.SetHeaders != nil || d.KeyName != "" || d.RemoveQueryParams != nil {
				t.Errorf("BYOK allow should inject nothing and keep ?key=: %+v", d)
			}
			if !slices.Equal(d.RemoveHeaders, tt.remove) {
				t.Errorf("RemoveHeaders = %q, want %q", d.RemoveHeaders, tt.remove)
			}
		})
	}
}

// TestBYOKTokenInFramedKeyHeader: a token inside the upstream's own key_format framing is
// found too.
func TestBYOKTokenInFramedKeyHeader(t *testing.T) {
	p := testPolicy()
	p.Upstreams[1].KeyFormat = "Token {key}; v=1" // azure
	c, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	for v, reason := range map[string]string{
		"Token " + tokStale + "; v=1": ReasonBYOKTokenAsKey,
		"token " + tokAlice + "; V=1": ReasonBYOKTokenAsKey,
		"Token " + ownKey + "; v=1":   ReasonOK,
		"Token ; v=1":                 ReasonOK,
		"; v=1":                       ReasonOK,
	} {
		d := c.Decide(Request{Region: "hk", Upstream: "azure", Headers: map[string]string{"llmedge-token": tokByok, "api-key": v},
			Path: "/azure/v1/x", Now: now}, newKeys())
		if d.Reason != reason {
			t.Errorf("api-key %q: reason %q, want %q", v, d.Reason, reason)
		}
	}
}

// TestCredentialConflicts: with credentials in several places, the valid llmedge token is
// accepted wherever it sits, and disagreements are refused with an explanation, shaped
// for each API.
func TestCredentialConflicts(t *testing.T) {
	c := compiled(t)
	tests := []struct {
		name    string
		headers map[string]string
		query   string
		reason  string
		caller  string   // on the denial
		msgHas  []string // beyond the common checks
	}{
		{"tokens of two callers: authorization and x-api-key",
			map[string]string{"authorization": "Bearer " + tokAlice, "x-api-key": tokFrank}, "",
			ReasonConflictingCredentials, "", []string{"two different callers", "Authorization header", "x-api-key header"}},
		{"tokens of two callers: x-api-key and authorization (no header takes precedence)",
			map[string]string{"authorization": "Bearer " + tokFrank, "x-api-key": tokAlice}, "",
			ReasonConflictingCredentials, "", []string{"two different callers"}},
		{"tokens of two callers: llmedge-token and authorization",
			map[string]string{"llmedge-token": tokAlice, "authorization": "Bearer " + tokFrank}, "",
			ReasonConflictingCredentials, "", []string{"two different callers", "llmedge-token header"}},
		{"tokens of two callers: header and ?key=",
			map[string]string{"x-goog-api-key": tokAlice}, "?key=" + tokBob,
			ReasonConflictingCredentials, "", []string{"two different callers", "key query parameter"}},
		{"a token and a provider key for a caller without BYOK",
			map[string]string{"authorization": "Bearer " + ownKey, "x-api-key": tokAlice}, "",
			ReasonConflictingCredentials, "alice", []string{"x-api-key header", "Authorization header", "does not bring its own provider key"}},
		{"llmedge-token and a provider key for a caller without BYOK",
			map[string]string{"llmedge-token": tokAlice, "x-api-key": ownKey}, "",
			ReasonConflictingCredentials, "alice", []string{"llmedge-token header", "x-api-key header", "does not bring its own provider key"}},
		{"a token and something unknown that is no llmedge token",
			map[string]string{"authorization": "Bearer " + tokUnknown, "x-api-key": tokAlice}, "",
			ReasonConflictingCredentials, "alice", nil},
		{"a token and a provider key in ?key=",
			map[string]string{"authorization": "Bearer " + tokAlice}, "?key=" + ownKey,
			ReasonConflictingCredentials, "alice", []string{"key query parameter"}},
		{"a disabled caller's conflict is still a conflict",
			map[string]string{"authorization": "Bearer " + tokBob, "x-api-key": ownKey}, "",
			ReasonConflictingCredentials, "bob", nil},
		{"a provider key and nothing valid",
			map[string]string{"authorization": "Bearer " + ownKey, "x-api-key": tokStale}, "",
			ReasonUnknownToken, "", nil},
		{"Basic authorization is not a credential",
			map[string]string{"authorization": "Basic Zm9vOmJhcg==", "x-api-key": tokAlice}, "",
			ReasonOK, "", nil},
		{"a token and a stale token",
			map[string]string{"authorization": "Bearer " + tokAlice, "x-api-key": tokStale}, "",
			ReasonOK, "", nil},
	}
	for _, up := range []string{"openai", "anthropic", "gemini"} {
		for _, tt := range tests {
			t.Run(up+"/"+tt.name, func(t *testing.T) {
				r := Request{Region: "hk", Upstream: up, Headers: tt.headers, Path: "/" + up + "/v1/x" + tt.query,
					SourceIP: netip.MustParseAddr("10.0.0.1"), Now: now}
				keys := newKeys()
				d := c.Decide(r, keys)
				if d.Reason != tt.reason {
					t.Fatalf("reason = %q, want %q (body %s)", d.Reason, tt.reason, d.Body)
				}
				if tt.reason == ReasonOK {
					if !d.Allow || d.Caller != "alice" {
						t.Errorf("want allow as alice: %+v", d)
					}
					return
				}
				status := 400
				if tt.reason == ReasonUnknownToken {
					status = 401
				}
				checkDenied(t, d, status, tt.reason)
				checkBody(t, c.API(up), d)
				if d.Caller != tt.caller {
					t.Errorf("Caller = %q, want %q", d.Caller, tt.caller)
				}
				if keys.calls != 0 {
					t.Errorf("a refused request drew a key")
				}
				msg := message(t, d)
				for _, want := range tt.msgHas {
					if !strings.Contains(msg, want) {
						t.Errorf("message %q lacks %q", msg, want)
					}
				}
				// Tokens, keys and the other caller's name stay out of the message.
				for _, secret := range []string{tokAlice, tokFrank, tokBob, tokUnknown, tokStale, ownKey, "frank"} {
					if strings.Contains(msg, secret) {
						t.Errorf("message %q contains %q", msg, secret)
					}
				}
			})
		}
	}
}

func TestNonBYOKCallerMayUseLLMedgeToken(t *testing.T) {
	d := compiled(t).Decide(Request{Region: "hk", Upstream: "anthropic", Headers: map[string]string{"llmedge-token": tokAlice},
		Path: "/anthropic/v1/messages", Now: now}, newKeys())
	if !d.Allow || d.SetHeaders["x-api-key"] != keyAnthropic || !slices.Equal(d.RemoveHeaders, []string{"llmedge-token"}) {
		t.Fatalf("got %+v", d)
	}
}

func TestExpiryBoundary(t *testing.T) {
	c := compiled(t)
	for _, tt := range []struct {
		at     time.Time
		reason string
	}{
		{expiry.Add(-time.Hour), ReasonOK},
		{expiry.Add(-time.Nanosecond), ReasonOK},
		{expiry, ReasonOK}, // expires *after* ExpiresAt
		{expiry.Add(time.Nanosecond), ReasonExpired},
		{expiry.Add(24 * time.Hour), ReasonExpired},
	} {
		r := req("openai", tokCarol)
		r.Now = tt.at
		if d := c.Decide(r, newKeys()); d.Reason != tt.reason {
			t.Errorf("at %s: reason %q, want %q", tt.at.Format(time.RFC3339Nano), d.Reason, tt.reason)
		}
	}
	// Zero ExpiresAt never expires.
	r := req("openai", tokAlice)
	r.Now = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	if d := c.Decide(r, newKeys()); !d.Allow {
		t.Errorf("a caller without expiry was refused: %s", d.Reason)
	}
}

func TestCIDR(t *testing.T) {
	c := compiled(t)
	for _, tt := range []struct {
		ip    string
		allow bool
	}{
		{"10.1.2.3", true},
		{"10.255.255.255", true},
		{"10.9.0.1", false},          // in deny, inside allow
		{"11.0.0.1", false},          // outside allow
		{"::ffff:10.1.2.3", true},    // IPv4-mapped, as on a dual-stack listener
		{"::ffff:10.9.1.1", false},   // mapped and denied
		{"2001:db8::1", true},        // v6 allow
		{"2001:db8:bad::1", false},   // v6 deny
		{"2001:db8:bad:1::1", false}, // v6 deny, deeper
		{"2001:db9::1", false},       // v6 outside allow
		{"fe80::1%eth0", false},      // link-local with zone, outside
		{"2001:db8::1%eth0", true},   // zone ignored
		{"", false},                  // unknown source address with an allow list
	} {
		r := req("openai", tokDave)
		r.SourceIP = netip.Addr{}
		if tt.ip != "" {
			r.SourceIP = netip.MustParseAddr(tt.ip)
		}
		d := c.Decide(r, newKeys())
		if d.Allow != tt.allow {
			t.Errorf("%q: allow = %v (%s), want %v", tt.ip, d.Allow, d.Reason, tt.allow)
			continue
		}
		if !tt.allow {
			checkDenied(t, d, 403, ReasonIPDenied)
		}
	}

	// Deny list only; IPv4-mapped prefixes in the policy mean their IPv4 range.
	p := testPolicy()
	p.Callers = []Caller{{Name: "eve", TokenSHA256: []string{sum(tokAlice)}, AllowedUpstreams: []string{"openai"},
		DenyCIDRs: prefixes("192.0.2.0/24", "::ffff:198.51.100.0/120")}}
	c2, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	for ip, allow := range map[string]bool{"192.0.2.9": false, "198.51.100.4": false, "::ffff:198.51.100.4": false, "203.0.113.1": true, "2001:db8::1": true} {
		r := req("openai", tokAlice)
		r.SourceIP = netip.MustParseAddr(ip)
		if d := c2.Decide(r, newKeys()); d.Allow != allow {
			t.Errorf("deny-only %s: allow = %v, want %v", ip, d.Allow, allow)
		}
	}
}

func TestBadRoute(t *testing.T) {
	c := compiled(t)
	for _, tt := range []struct {
		name string
		mut  func(*Request)
		api  string
	}{
		{"empty upstream", func(r *Request) { r.Upstream = "" }, APIOpenAI},
		{"unknown upstream", func(r *Request) { r.Upstream = "mistral" }, APIOpenAI},
		{"unknown upstream, anthropic client", func(r *Request) {
			r.Upstream = "nope"
			r.Headers = map[string]string{"anthropic-version": "2023-06-01"}
		}, APIAnthropic},
		{"unknown upstream, gemini client", func(r *Request) { r.Upstream = "nope"; r.Path = "/x?key=" + tokAlice }, APIGemini},
		{"region mismatch", func(r *Request) { r.Region = "sg"; r.Upstream = "gemini" }, APIGemini},
		{"empty region", func(r *Request) { r.Region = ""; r.Upstream = "anthropic" }, APIAnthropic},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := req("openai", tokAlice)
			tt.mut(&r)
			keys := newKeys()
			d := c.Decide(r, keys)
			checkDenied(t, d, 500, ReasonBadRoute)
			checkBody(t, tt.api, d)
			if d.Caller != "" || keys.calls != 0 {
				t.Errorf("a bad route must be refused before looking at the caller or keys: %+v", d)
			}
			if msg := message(t, d); strings.Contains(msg, "mistral") || strings.Contains(msg, "sg") || !strings.Contains(msg, "operator") {
				t.Errorf("bad_route message should be generic and point to the operator: %q", msg)
			}
		})
	}
}

func TestNotReady(t *testing.T) {
	for _, api := range []string{APIOpenAI, APIAnthropic, APIGemini} {
		d := NotReady(api)
		checkDenied(t, d, 503, ReasonNotReady)
		checkBody(t, api, d)
		if msg := message(t, d); !strings.Contains(msg, "no policy yet") {
			t.Errorf("%s: %q", api, msg)
		}
	}
	checkBody(t, APIOpenAI, NotReady("")) // unknown API falls back to the OpenAI shape

	var nilPolicy *Compiled
	d := nilPolicy.Decide(req("anthropic", tokAlice), newKeys())
	checkDenied(t, d, 503, ReasonNotReady)
	checkBody(t, APIAnthropic, d)
}

func TestNoKey(t *testing.T) {
	c := compiled(t)
	for name, keys := range map[string]Keys{
		"nil keys":       nil,
		"none":           &fakeKeys{},
		"empty key":      &fakeKeys{keys: map[string][2]string{"openai": {"", "blank"}}},
		"key with CRLF":  &fakeKeys{keys: map[string][2]string{"openai": {"sk-x\r\nx-evil: 1", "evil"}}},
		"key with NUL":   &fakeKeys{keys: map[string][2]string{"openai": {"sk-x\x00", "nul"}}},
		"other upstream": &fakeKeys{keys: map[string][2]string{"anthropic": {keyAnthropic, "a"}}},
	} {
		t.Run(name, func(t *testing.T) {
			d := c.Decide(req("openai", tokAlice), keys)
			checkDenied(t, d, 503, ReasonNoKey)
			checkBody(t, APIOpenAI, d)
			for _, s := range []string{"blank", "evil", "nul", "sk-x"} {
				if strings.Contains(string(d.Body), s) {
					t.Errorf("no_key body names key %q: %s", s, d.Body)
				}
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	base := testPolicy
	tests := []struct {
		name string
		mut  func(*Policy)
		want string // substring of the error
	}{
		{"duplicate token across callers", func(p *Policy) {
			p.Callers[1].TokenSHA256 = append(p.Callers[1].TokenSHA256, sum(tokAlice))
		}, `callers "alice" and "bob" share a token`},
		{"duplicate token across callers, different case", func(p *Policy) {
			p.Callers[1].TokenSHA256 = append(p.Callers[1].TokenSHA256, strings.ToUpper(sum(tokAlice)))
		}, "share a token"},
		{"bad hex", func(p *Policy) { p.Callers[0].TokenSHA256 = []string{"zz" + sum(tokAlice)[2:]} }, "token_sha256 #0 is not a hex SHA-256"},
		{"short hash", func(p *Policy) { p.Callers[0].TokenSHA256 = []string{sum(tokAlice)[:62]} }, "not a hex SHA-256"},
		{"plain token instead of hash", func(p *Policy) { p.Callers[0].TokenSHA256 = []string{tokAlice} }, "not a hex SHA-256"},
		{"unknown allowed upstream", func(p *Policy) { p.Callers[0].AllowedUpstreams = []string{"openai", "mistral"} }, `allowed upstream "mistral" is not in the policy`},
		{"key_format without {key}", func(p *Policy) { p.Upstreams[0].KeyFormat = "Bearer key" }, "exactly once (it has 0)"},
		{"key_format with {key} twice", func(p *Policy) { p.Upstreams[0].KeyFormat = "{key}{key}" }, "exactly once (it has 2)"},
		{"empty key_format", func(p *Policy) { p.Upstreams[0].KeyFormat = "" }, "exactly once"},
		{"key_format with CRLF", func(p *Policy) { p.Upstreams[0].KeyFormat = "{key}\r\nx-evil: 1" }, "control character"},
		{"empty header", func(p *Policy) { p.Upstreams[0].KeyHeader = "" }, "key_header"},
		{"header with space", func(p *Policy) { p.Upstreams[0].KeyHeader = "x api key" }, "not a valid HTTP header name"},
		{"header with colon", func(p *Policy) { p.Upstreams[0].KeyHeader = "x-api-key:" }, "not a valid HTTP header name"},
		{"pseudo-header", func(p *Policy) { p.Upstreams[0].KeyHeader = ":authority" }, "not a valid HTTP header name"},
		{"header with newline", func(p *Policy) { p.Upstreams[0].KeyHeader = "x-a\nb" }, "not a valid HTTP header name"},
		{"host header", func(p *Policy) { p.Upstreams[0].KeyHeader = "host" }, "reserved header"},
		{"llmedge-token header", func(p *Policy) { p.Upstreams[0].KeyHeader = "llmedge-token" }, "reserved header"},
		{"x-llmedge header", func(p *Policy) { p.Upstreams[0].KeyHeader = "X-LLMedge-Key" }, "reserved header"},
		{"unknown api", func(p *Policy) { p.Upstreams[0].API = "cohere" }, `api "cohere"`},
		{"duplicate upstream", func(p *Policy) { p.Upstreams = append(p.Upstreams, p.Upstreams[0]) }, "defined twice"},
		{"duplicate caller", func(p *Policy) { p.Callers = append(p.Callers, Caller{Name: "alice"}) }, `caller "alice": defined twice`},
		{"empty caller name", func(p *Policy) { p.Callers[0].Name = "" }, "caller #0: empty name"},
		{"empty upstream name", func(p *Policy) { p.Upstreams[0].Name = "" }, "upstream #0: empty name"},
		{"invalid cidr", func(p *Policy) { p.Callers[0].AllowCIDRs = []netip.Prefix{{}} }, "allow_cidrs: #0 is not a valid CIDR"},
		{"invalid deny cidr", func(p *Policy) { p.Callers[0].DenyCIDRs = []netip.Prefix{{}} }, "deny_cidrs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base()
			tt.mut(&p)
			c, err := Compile(p)
			if err == nil {
				t.Fatalf("Compile succeeded (%v), want an error containing %q", c, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			for _, tok := range []string{tokAlice, tokAlice2, tokBob} {
				if strings.Contains(strings.ToLower(err.Error()), sum(tok)[:16]) {
					t.Errorf("error reveals a token hash: %v", err)
				}
			}
		})
	}

	// Several problems are all reported.
	p := base()
	p.Upstreams[0].KeyFormat = "x"
	p.Callers[0].AllowedUpstreams = []string{"nope"}
	if _, err := Compile(p); err == nil || !strings.Contains(err.Error(), "key_format") || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("want both problems reported, got %v", err)
	}
}

func TestCompileAccepts(t *testing.T) {
	p := testPolicy()
	// The same hash twice in one caller, upper-case hex, a mixed-case header name.
	p.Callers[0].TokenSHA256 = append(p.Callers[0].TokenSHA256, sum(tokAlice))
	p.Upstreams[0].KeyHeader = "X-Api-Key"
	c, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Region() != "hk" || c.API("gemini") != APIGemini || c.API("nope") != "" {
		t.Errorf("Region/API accessors wrong")
	}
	d := c.Decide(req("anthropic", tokAlice2), newKeys())
	if !d.Allow || d.SetHeaders["x-api-key"] != keyAnthropic {
		t.Errorf("header name not normalised to lower case: %+v", d.SetHeaders)
	}
	// An empty policy compiles and refuses everything as a bad route.
	c, err = Compile(Policy{Region: "hk"})
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Decide(req("openai", tokAlice), newKeys()); d.Reason != ReasonBadRoute {
		t.Errorf("empty policy: %s", d.Reason)
	}
}

func TestKeyFormat(t *testing.T) {
	p := testPolicy()
	p.Upstreams[1].KeyFormat = "Token {key}; v=1"
	c, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	d := c.Decide(req("azure", tokAlice), newKeys())
	if got := d.SetHeaders["api-key"]; got != "Token "+keyAzure+"; v=1" {
		t.Errorf("formatted key header = %q", got)
	}
}

// TestNoSecretsInDecisions runs a grid of requests (every caller token and an unknown one,
// in every token source, against every upstream, in and out of region, at several times and
// addresses, with and without keys) and checks that no Decision field other than the
// injected key header carries a token, a token hash or an upstream key, and that the key
// header never carries a token.
func TestNoSecretsInDecisions(t *testing.T) {
	c := compiled(t)
	tokens := []string{tokAlice, tokAlice2, tokBob, tokCarol, tokDave, tokFrank, tokByok, tokUnknown, tokStale}
	var forbidden []string // never anywhere
	for _, tok := range tokens {
		h := sum(tok)
		forbidden = append(forbidden, tok, h, strings.ToUpper(h), h[:16])
	}
	keyValues := []string{keyOpenAI, keyAnthropic, keyGemini, keyAzure, ownKey}
	keyNames := []string{"openai-primary", "anthropic-primary", "gemini-primary", "azure-primary"}

	placements := []func(tok string) (map[string]string, string){
		func(tok string) (map[string]string, string) { return map[string]string{"llmedge-token": tok}, "" },
		func(tok string) (map[string]string, string) {
			return map[string]string{"llmedge-token": tok, "authorization": "Bearer " + ownKey, "x-api-key": ownKey, "x-goog-api-key": ownKey}, ""
		},
		func(tok string) (map[string]string, string) {
			return map[string]string{"authorization": "Bearer " + tok}, ""
		},
		func(tok string) (map[string]string, string) {
			return map[string]string{"llmedge-token": tok, "x-api-key": tok, "authorization": "Bearer " + tokStale}, "?api_key=" + tok
		},
		func(tok string) (map[string]string, string) {
			return map[string]string{"authorization": "Bearer " + tok, "x-api-key": tokAlice}, ""
		},
		func(tok string) (map[string]string, string) {
			return map[string]string{"authorization": "Basic " + tok}, ""
		},
		func(tok string) (map[string]string, string) { return map[string]string{"x-api-key": tok}, "" },
		func(tok string) (map[string]string, string) { return map[string]string{"x-goog-api-key": tok}, "" },
		func(tok string) (map[string]string, string) { return map[string]string{}, "?key=" + tok },
		func(tok string) (map[string]string, string) {
			return map[string]string{"x-llmedge-caller": tok, "x-llmedge-" + strings.ToLower(tok[:8]): "1"}, "?key=" + tok
		},
	}
	keysets := []func() Keys{func() Keys { return newKeys() }, func() Keys { return &fakeKeys{} }, func() Keys { return nil }}
	ips := []string{"10.1.2.3", "10.9.9.9", "192.0.2.1", "2001:db8::5", "::ffff:10.1.1.1"}
	times := []time.Time{now, expiry, expiry.Add(time.Minute)}
	n := 0
	reasons := map[string]int{}
	for _, tok := range tokens {
		for _, place := range placements {
			for _, up := range append(slices.Clone(allUpstreams), "", "nope") {
				for _, region := range []string{"hk", "sg"} {
					for _, ip := range ips {
						for _, at := range times {
							for _, ks := range keysets {
								h, q := place(tok)
								r := Request{Region: region, Upstream: up, Route: "r", Headers: h, Path: "/v1/x" + q,
									SourceIP: netip.MustParseAddr(ip), Now: at}
								d := c.Decide(r, ks())
								n++
								reasons[d.Reason]++
								checkNoSecrets(t, d, forbidden, keyValues, keyNames)
							}
						}
					}
				}
			}
		}
	}
	for _, want := range []string{ReasonOK, ReasonBadRoute, ReasonMissingToken, ReasonUnknownToken, ReasonDisabled, ReasonExpired,
		ReasonIPDenied, ReasonUpstreamNotAllowed, ReasonBYOKKeyMissing, ReasonNoKey, ReasonBYOKTokenAsKey, ReasonConflictingCredentials} {
		if reasons[want] == 0 {
			t.Errorf("the grid never produced reason %q; widen it", want)
		}
	}
	t.Logf("%d decisions checked: %v", n, reasons)
}

func checkNoSecrets(t *testing.T, d Decision, forbidden, keyValues, keyNames []string) {
	t.Helper()
	var fields []string // may hold neither tokens nor keys
	fields = append(fields, string(d.Body), d.Reason, d.Caller, d.Tenant, d.KeyName, d.ContentType)
	fields = append(fields, d.RemoveHeaders...)
	fields = append(fields, d.RemoveQueryParams...)
	for h := range d.SetHeaders {
		fields = append(fields, h)
	}
	for _, f := range fields {
		for _, s := range slices.Concat(forbidden, keyValues) {
			if strings.Contains(f, s) {
				t.Fatalf("decision field %q contains secret %q (decision %+v)", f, s, d)
			}
		}
	}
	for _, name := range keyNames {
		if strings.Contains(string(d.Body), name) {
			t.Fatalf("body names key %q: %s", name, d.Body)
		}
	}
	for _, v := range d.SetHeaders {
		for _, s := range forbidden {
			if strings.Contains(v, s) {
				t.Fatalf("key header value carries a caller token: %+v", d)
			}
		}
	}
	if d.Allow != (d.Reason == ReasonOK) {
		t.Fatalf("Allow %v with reason %q", d.Allow, d.Reason)
	}
}

// FuzzDecide checks, for arbitrary tokens and request shapes, that Decide never panics, that
// a decision never echoes the token (when it is long enough to be recognisable) and that
// allow and deny fields stay consistent.
func FuzzDecide(f *testing.F) {
	f.Add(tokAlice, uint8(0), "openai", "10.1.2.3", "")
	f.Add(tokByok, uint8(1), "gemini", "2001:db8::1", "&key=x")
	f.Add("nobody-at-all-123", uint8(4), "anthropic", "192.0.2.1", "")
	f.Add("Bearer\x00\r\n", uint8(2), "nope", "::1", "?")
	c := compiled(f)
	f.Fuzz(func(t *testing.T, tok string, where uint8, up, ip, extraQuery string) {
		h := map[string]string{}
		q := ""
		switch where % 5 {
		case 0:
			h["llmedge-token"] = tok
		case 1:
			h["authorization"] = "Bearer " + tok
		case 2:
			h["x-api-key"] = tok
		case 3:
			h["x-goog-api-key"] = tok
		case 4:
			q = "?key=" + tok
		}
		addr, _ := netip.ParseAddr(ip)
		d := c.Decide(Request{Region: "hk", Upstream: up, Headers: h, Path: "/v1/x" + q + extraQuery, SourceIP: addr, Now: now}, newKeys())
		if d.Allow {
			if d.Status != 0 || d.Body != nil {
				t.Fatalf("allow with a body: %+v", d)
			}
		} else {
			if d.Status == 0 || !json.Valid(d.Body) || d.Reason == "" || d.SetHeaders != nil {
				t.Fatalf("bad denial: %+v", d)
			}
		}
		trimmed := strings.TrimSpace(tok)
		if len(trimmed) >= 12 {
			var all strings.Builder
			fmt.Fprint(&all, string(d.Body), d.Reason, d.Caller, d.Tenant, d.KeyName, d.RemoveHeaders, d.RemoveQueryParams)
			for _, v := range d.SetHeaders {
				all.WriteString(v)
			}
			if strings.Contains(all.String(), trimmed) || strings.Contains(all.String(), sum(trimmed)) {
				t.Fatalf("decision echoes the token: %+v", d)
			}
		}
	})
}

func BenchmarkDecide(b *testing.B) {
	c := compiled(b)
	keys := newKeys()
	r := Request{
		Region: "hk", Upstream: "openai", Route: "openai-chat",
		Headers: map[string]string{
			":authority": "edge.example.com", ":method": "POST", ":path": "/openai/v1/chat/completions", ":scheme": "https",
			"authorization": "Bearer " + tokAlice, "content-type": "application/json", "user-agent": "OpenAI/Python 1.99.0",
			"accept": "application/json", "x-request-id": "5f0c7f1e-7a0d-4f0e-9c1b-1c2d3e4f5a6b", "x-llmedge-trace": "1",
		},
		Path:     "/openai/v1/chat/completions",
		SourceIP: netip.MustParseAddr("10.1.2.3"),
		Now:      now,
	}
	b.ReportAllocs()
	for b.Loop() {
		d := c.Decide(r, keys)
		if !d.Allow {
			b.Fatal(d.Reason)
		}
	}
}

func TestCredentialQueryParams(t *testing.T) {
	tok := "llme_AbCdEf0123456789"
	cases := []struct {
		path    string
		keepKey bool
		want    []string
	}{
		{"/p", false, nil},
		{"/p?alt=sse&pageToken=abc&beta=true", false, nil},
		{"/p?key=a", false, []string{"key"}},
		{"/p?key=a", true, nil},
		{"/p?key=" + tok, true, []string{"key"}}, // a token is never a provider key
		{"/p?k%65y=a&key=b&key=c", false, []string{"k%65y", "key"}},
		{"/p?%6B%65%79=a#key=frag", false, []string{"%6B%65%79"}},
		{"/p?keys=a&monkey=b&ke=c", false, nil},
		{"/p?api_key=a&API-KEY=b&ApiKey=c&%61pi_key=d&api%255Fkey=e", false, []string{"api_key", "API-KEY", "ApiKey", "%61pi_key", "api%255Fkey"}},
		{"/p?access_token=a&Token=b&x-api-key=c&llmedge-token=d", false, []string{"access_token", "Token", "x-api-key", "llmedge-token"}},
		{"/p?q=" + tok + "&other=" + url.QueryEscape("Bearer "+tok), false, []string{"q", "other"}},
		{"/p?q=LLME%5Fabc&r=llme%255fabc", false, []string{"q", "r"}},
		{"/p?" + tok, false, []string{tok}},
	}
	for _, c := range cases {
		got := credentialQueryParams(c.path, c.keepKey)
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("credentialQueryParams(%q, %v) = %q, want %q", c.path, c.keepKey, got, c.want)
		}
	}
}

// Envoy forwards only wire.CredentialHeaders to extauthz: every header the decision reads
// a token from must be among them, or that SDK style would silently stop working.
func TestEnvoyForwardsEveryCredentialHeader(t *testing.T) {
	for _, h := range []string{HeaderLLMedgeToken, HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey} {
		if !slices.Contains(wire.CredentialHeaders, h) {
			t.Errorf("%s is read by the decision but not in wire.CredentialHeaders", h)
		}
	}
}

// GuessAPI follows internal/wire's signs, the ones Envoy's local replies are compiled from:
// each sign alone names its family, and a request with none is OpenAI's.
func TestGuessAPIFollowsWire(t *testing.T) {
	for _, g := range wire.APIGuesses() {
		for _, h := range g.Headers {
			if got := GuessAPI(Request{Path: "/v1/x", Headers: map[string]string{h: "v"}}); got != g.API {
				t.Errorf("header %s: GuessAPI = %s, want %s", h, got, g.API)
			}
		}
		for _, q := range g.QueryParams {
			if got := GuessAPI(Request{Path: "/v1/x?" + q + "=v"}); got != g.API {
				t.Errorf("query %s: GuessAPI = %s, want %s", q, got, g.API)
			}
		}
		for _, p := range g.PathContains {
			if got := GuessAPI(Request{Path: "/x" + p + "y"}); got != g.API {
				t.Errorf("path %s: GuessAPI = %s, want %s", p, got, g.API)
			}
		}
	}
	if got := GuessAPI(Request{Path: "/v1/chat/completions", Headers: map[string]string{"authorization": "Bearer x"}}); got != APIOpenAI {
		t.Errorf("no sign: GuessAPI = %s, want %s", got, APIOpenAI)
	}
}

type ring map[string][]string

func (r ring) Keys(upstream string) []string { return r[upstream] }

// TestRetryKey: a retry's key is the one attempt−1 places after the first try's, in the
// key store's order; anything that is not one of the upstream's keys stays as it is.
func TestRetryKey(t *testing.T) {
	c := compiled(t)
	keys := ring{"openai": {"sk-a", "sk-b", "sk-c"}, "anthropic": {"ak-only"}}
	cases := []struct {
		name, upstream, current string
		attempt                 int
		header, value           string
		ok                      bool
	}{
		{"second try moves on", "openai", "Bearer sk-a", 2, "authorization", "Bearer sk-b", true},
		{"third try: the one after the second try's key", "openai", "Bearer sk-b", 3, "authorization", "Bearer sk-c", true},
		{"wraps around", "openai", "Bearer sk-c", 2, "authorization", "Bearer sk-a", true},
		{"first try untouched", "openai", "Bearer sk-a", 1, "", "", false},
		{"one key kept", "anthropic", "ak-only", 2, "", "", false},
		{"caller's own key kept", "openai", "Bearer sk-own", 2, "", "", false},
		{"unknown upstream", "nope", "Bearer sk-a", 2, "", "", false},
	}
	for _, tc := range cases {
		h, v, ok := c.RetryKey(tc.upstream, tc.current, tc.attempt, keys)
		if h != tc.header || v != tc.value || ok != tc.ok {
			t.Errorf("%s: got %q %q %v, want %q %q %v", tc.name, h, v, ok, tc.header, tc.value, tc.ok)
		}
	}
	if _, _, ok := (*Compiled)(nil).RetryKey("openai", "Bearer sk-a", 2, keys); ok {
		t.Error("no policy: a key was chosen")
	}
}
