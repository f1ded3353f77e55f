package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/extauthz/decide"
	"github.com/llmedge/llmedge/extauthz/keystore"
	"github.com/llmedge/llmedge/internal/wire"
)

// The check itself, whatever carried the request to it: Envoy's gRPC ext_authz call
// (Check), or the filter extauthz runs as inside Envoy (extauthz/module). Both hand it
// the same facts and apply the same Outcome, so the two transports cannot drift.

// Input is one request to check.
type Input struct {
	// Region, Upstream, Route and Hop are what the request's route says (ext_authz's
	// context extensions, or the route's metadata for the module).
	Region, Upstream, Route, Hop string
	// Headers holds the credential headers and the internal (x-llmedge-) ones the caller
	// sent, names in lower case; a header sent more than once has its values joined by
	// commas, as Envoy sends them to ext_authz.
	Headers map[string]string
	// Path is the request's :path, with its query.
	Path string
	// Source is the caller's address as Envoy sees it (after trusted X-Forwarded-For hops).
	Source netip.Addr
	// Model is the model the request names ("" when none), for model-scoped quotas.
	Model string
}

// Header is one header to set.
type Header struct{ Name, Value string }

// Outcome is the answer to a check.
type Outcome struct {
	Allow bool

	// On allow: the key header to set (overwriting), the caller's credentials to remove
	// (headers and query parameters), the caller's identity for the request's dynamic
	// metadata, and the X-RateLimit headers for the response.
	SetHeaders        []Header
	RemoveHeaders     []string
	RemoveQueryParams []string
	Caller, Tenant    string
	Upstream          string
	ResponseHeaders   []Header

	// On refusal: the response. Its body is shaped like the upstream API's errors, or
	// plain text that Envoy's local replies shape (a spent quota).
	Status  int
	Headers []Header
	Body    string
}

// Pending is a check that waits on the region's Redis for its quotas: Finish does that
// round trip, off any thread that must not block.
type Pending struct {
	m     *Main
	r     decide.Request
	d     decide.Decision
	q     *quotas
	req   *rlsv3.RateLimitRequest
	model string
}

// Begin checks a request as far as it can without waiting: the Outcome when no quota
// needs asking or this edge's quota leases answer it, or else a Pending whose Finish gives
// it.
func (m *Main) Begin(in Input) (Outcome, *Pending) {
	out, p, _ := m.begin(in, false)
	return out, p
}

// BeginReplay is Begin, and, for a request allowed at once, the Replay that answers a
// request with the same Input the same way (nil when none may: see Replay).
func (m *Main) BeginReplay(in Input) (Outcome, *Pending, *Replay) {
	return m.begin(in, true)
}

func (m *Main) begin(in Input, replay bool) (Outcome, *Pending, *Replay) {
	r := decide.Request{
		Region:   in.Region,
		Upstream: in.Upstream,
		Route:    in.Route,
		Hop:      in.Hop,
		Headers:  in.Headers,
		Path:     in.Path,
		SourceIP: in.Source,
		Now:      time.Now(),
	}
	var d decide.Decision
	applied := m.applied.Load() // before the policy: see apply
	p := m.policy.Load()
	if p == nil {
		d = decide.NotReady(decide.GuessAPI(r))
	} else {
		d = p.Decide(r, keySource{m.keys})
	}
	q := m.quotas.Load()
	var req *rlsv3.RateLimitRequest
	// A request forwarded by a peer was counted where it entered.
	if d.Allow && r.Hop != wire.HopPeer {
		if q != nil {
			if req = q.request(d.Caller, r.Upstream, in.Model); req != nil {
				a, ok := q.answerLocally(req, nil, nil)
				if !ok {
					return Outcome{}, &Pending{m: m, r: r, d: d, q: q, req: req, model: in.Model}, nil
				}
				out := m.finish(r, d, q, a)
				if !replay || !out.Allow {
					return out, nil, nil
				}
				return out, nil, m.replayOf(applied, r, d, q, req)
			}
		}
	}
	out := m.finish(r, d, nil, quotaAnswer{result: quotaNone})
	if !replay || !out.Allow {
		return out, nil, nil
	}
	return out, nil, m.replayOf(applied, r, d, q, nil)
}

// A Replay is an allowed request's decision, kept to answer later requests with the same
// Input (the module's fast path, extauthz/module): Main.Replay gives such a request the
// Outcome Begin would — its quotas asked, its metrics and logs as Begin's — without
// deciding it again, as long as nothing the decision read has changed: the policy and
// its quotas (no policy applied since), the upstream's keys (the same ones since), and the
// caller's expiry (not yet reached). An upstream with several keys gives each request the
// next (KeyPool): the keeper of the Replay rotates them. Decide reads nothing else but the
// Input; the caller of Replay vouches for the Input being the same. A Replay keeps no
// policy alive: the module may hold many.
type Replay struct {
	applied uint64 // Main.applied when the policy was read
	quotas  *quotas
	// key is the injected key's value, "" when none was (a caller's own key, a request
	// forwarded to another region) or when the upstream has several (pool).
	key  string
	pool *KeyPool
	r    decide.Request
	d    decide.Decision
	req  *rlsv3.RateLimitRequest
	// plan keeps req's limits, looked up once (limiter.go).
	plan planSlot
	// allowed is the Outcome of an allowed replay but its quota headers, and checked and
	// quotaOK the counters it adds to: made once, as finish would make them.
	allowed          Outcome
	checked, quotaOK prometheus.Counter
}

// Format implements fmt.Formatter: a Replay holds the key it injects, so every verb prints
// only what names it (caller, upstream, route).
func (rp *Replay) Format(f fmt.State, _ rune) {
	if rp == nil {
		_, _ = f.Write([]byte("extauthz.Replay(nil)"))
		return
	}
	_, _ = fmt.Fprintf(f, "extauthz.Replay{Caller:%q, Upstream:%q, Route:%q, Pool:%v}", rp.d.Caller, rp.r.Upstream, rp.r.Route, rp.pool != nil)
}

// Quota says whether rp's requests are under a quota (ReplayLend lends fewer of them).
func (rp *Replay) Quota() bool { return rp.req != nil }

// A KeyPool is how the requests of a Replay whose upstream has several keys get theirs:
// in turn, as the upstream's requests do when decided one by one. The Outcome a replay
// gives carries the decision's key; its keeper sets Header to Values[i] instead, for the
// i-th request answered from the Replay (counting from 0 across the Replay's life).
// Values hold the keys themselves: never log them.
type KeyPool struct {
	Header string
	// Values are the header's values, one per key, starting with the key after the
	// decision's in the keystore's name order.
	Values []string
	first  *keystore.Key // the keys the pool was made from: the keystore's slice
	n      int
}

// KeyPool is rp's key pool, nil when its requests get the decision's key or none.
func (rp *Replay) KeyPool() *KeyPool { return rp.pool }

// String implements fmt.Stringer without the keys: the header and how many values.
func (p *KeyPool) String() string {
	if p == nil {
		return "extauthz.KeyPool(nil)"
	}
	return fmt.Sprintf("extauthz.KeyPool{Header:%q, Values:[%d redacted]}", p.Header, len(p.Values))
}

// Format implements fmt.Formatter so that every verb prints String's form.
func (p *KeyPool) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(p.String())) }

// LogValue implements slog.LogValuer without the keys.
func (p *KeyPool) LogValue() slog.Value { return slog.StringValue(p.String()) }

// keyPool is the pool of d's upstream when it has several keys, one of them d's; nil
// otherwise.
func (m *Main) keyPool(upstream string, d decide.Decision) *KeyPool {
	keys := m.keys.Keys(upstream)
	if len(keys) < 2 || d.KeyHeader == "" {
		return nil
	}
	at := slices.IndexFunc(keys, func(k keystore.Key) bool { return k.Name == d.KeyName })
	if at < 0 || d.SetHeaders[d.KeyHeader] != d.KeyPrefix+keys[at].Value()+d.KeySuffix {
		return nil
	}
	p := &KeyPool{Header: d.KeyHeader, Values: make([]string, len(keys)), first: &keys[0], n: len(keys)}
	for i := range keys {
		p.Values[i] = d.KeyPrefix + keys[(at+1+i)%len(keys)].Value() + d.KeySuffix
	}
	return p
}

// KeysGiven says that n requests answered from rp got their keys from its KeyPool, in turn
// after the decision's: the upstream's next Begin then takes the key after the last of
// them (keystore.Store.Advance), so the turn goes on where the pool left it. Nothing
// without a pool.
func (m *Main) KeysGiven(rp *Replay, n uint64) {
	if rp == nil || rp.pool == nil || n == 0 {
		return
	}
	m.keys.Advance(rp.r.Upstream, n)
}

// holds says whether the upstream's keys are still those p was made from.
func (p *KeyPool) holds(keys []keystore.Key) bool {
	return len(keys) == p.n && &keys[0] == p.first
}

// replayOf is the Replay of an allowed decision, or nil when a later request could be
// decided otherwise with the same Input (an upstream with several keys whose pool cannot
// be stated: a key not among them).
func (m *Main) replayOf(applied uint64, r decide.Request, d decide.Decision, q *quotas, req *rlsv3.RateLimitRequest) *Replay {
	r.Headers = nil // read by Decide only; not kept
	rp := &Replay{applied: applied, quotas: q, r: r, d: d, req: req}
	if d.KeyName != "" {
		if m.keys.Count(r.Upstream) != 1 {
			// At debug level a pool is not replayed (replay): no Replay to keep either.
			if m.log.Enabled(context.Background(), slog.LevelDebug) {
				return nil
			}
			if rp.pool = m.keyPool(r.Upstream, d); rp.pool == nil {
				return nil
			}
		} else if k, ok := m.keys.Next(r.Upstream); ok {
			rp.key = k.Value()
		} else {
			return nil
		}
	}
	rp.allowed = allowed(d, r.Upstream, nil)
	rp.checked = m.checks.WithLabelValues(r.Upstream, d.Reason)
	rp.quotaOK = m.quotaChecks.WithLabelValues(r.Upstream, quotaOK.String())
	return rp
}

// Replay answers a request with the Input rp was made for: ok false when rp no longer
// holds, or when its quotas need a round trip to Redis; the caller then checks the
// request with Begin. An Outcome it gives is Begin's: it may refuse (a spent quota).
func (m *Main) Replay(rp *Replay) (Outcome, bool) {
	out, _, ok := m.replay(rp, 0)
	return out, ok
}

// Lent is what ReplayLend lent: later requests with the Replay's Input that its caller may
// answer itself, each as Replay would, without asking — the module's fast path answers
// them in C. Quota hits for them are taken from this edge's leases at once (as if used),
// so the edge admits no more than it reserved; those not used go back (GiveBack).
type Lent struct {
	// Uses is how many later requests (0: none).
	Uses int64
	// Limit is the x-ratelimit-limit value, "" when the requests are under no limit (they
	// get no X-RateLimit headers). The i-th of the Uses (from 1) reports
	// x-ratelimit-remaining Remaining+Uses-i and x-ratelimit-reset ResetAt minus the unix
	// second it is answered in.
	Limit     string
	Remaining int64
	ResetAt   int64
	// Until is the unix time in nanoseconds from which none may be used: the caller's
	// expiry, the end of a limit's window.
	Until int64
	ld    *lending
}

// ReplayLend is Replay, and when the request is allowed lends up to ask later requests
// with the same Input (Lent), unless the allowed requests are logged one by one (debug
// level): what a lending's uses skip is the log line, their counts come later (CountLent).
// A request under a limit lends only what its leases hold and keeps every lent use within
// envoyproxy/ratelimit's near-limit threshold, so each counts as within the limit.
func (m *Main) ReplayLend(rp *Replay, ask int64) (Outcome, Lent, bool) {
	if ask <= 0 || m.log.Enabled(context.Background(), slog.LevelDebug) {
		out, _, ok := m.replay(rp, 0)
		return out, Lent{}, ok
	}
	return m.replay(rp, ask)
}

func (m *Main) replay(rp *Replay, ask int64) (Outcome, Lent, bool) {
	if m.applied.Load() != rp.applied {
		return Outcome{}, Lent{}, false
	}
	now := time.Now()
	if !rp.d.ExpiresAt.IsZero() && now.After(rp.d.ExpiresAt) {
		return Outcome{}, Lent{}, false
	}
	if rp.pool != nil {
		// At debug level each allowed request's line names its key: the Go check's.
		if !rp.pool.holds(m.keys.Keys(rp.r.Upstream)) || m.log.Enabled(context.Background(), slog.LevelDebug) {
			return Outcome{}, Lent{}, false
		}
	}
	if rp.key != "" {
		if m.keys.Count(rp.r.Upstream) != 1 {
			return Outcome{}, Lent{}, false
		}
		if k, ok := m.keys.Next(rp.r.Upstream); !ok || k.Value() != rp.key {
			return Outcome{}, Lent{}, false
		}
	}
	a := quotaAnswer{result: quotaNone}
	var q *quotas
	var ld *lending
	if rp.req != nil {
		if ask > 0 {
			ld = &lending{ask: uint64(ask)}
		}
		var ok bool
		if a, ok = rp.quotas.answerLocally(rp.req, &rp.plan, ld); !ok {
			return Outcome{}, Lent{}, false
		}
		q = rp.quotas
	}
	m.replays.Inc()
	if a.result != quotaNone && a.result != quotaOK {
		if ld != nil && ld.n > 0 { // not lent after all
			rp.quotas.lim.giveBackLent(ld, ld.n)
		}
		return m.finish(rp.r, rp.d, q, a), Lent{}, true
	}
	// finish's allowed path, with what it looks up and builds made once.
	if a.result == quotaOK {
		rp.quotaOK.Inc()
	}
	rp.checked.Inc()
	m.logAllowed(rp.r, rp.d, a.result)
	out := rp.allowed
	out.ResponseHeaders = a.headers
	return out, m.lent(rp, a, ld, ask, now), true
}

// lent is what an allowed replay lends: ask uses without a quota; with one, what its
// leases lent (ld), when the answer had X-RateLimit headers to count down.
func (m *Main) lent(rp *Replay, a quotaAnswer, ld *lending, ask int64, now time.Time) Lent {
	l := Lent{Until: math.MaxInt64}
	if !rp.d.ExpiresAt.IsZero() {
		l.Until = rp.d.ExpiresAt.UnixNano()
	}
	switch {
	case ask <= 0:
		return Lent{}
	case rp.req == nil || a.result == quotaNone:
		l.Uses = ask
		return l
	case ld == nil || ld.n == 0:
		return Lent{}
	case len(a.headers) == 0: // no limit counts the request: nothing to count down
		l.Uses, l.ld = int64(ld.n), ld
		return l
	case len(a.headers) != 3 || a.remaining < ld.n:
		rp.quotas.lim.giveBackLent(ld, ld.n)
		return Lent{}
	}
	l.Uses, l.ld = int64(ld.n), ld
	l.Limit = a.limit
	l.Remaining = int64(a.remaining - ld.n)
	l.ResetAt = now.Unix() + a.resetIn
	if ld.ends != math.MaxInt64 {
		l.Until = min(l.Until, ld.ends*int64(time.Second))
	}
	return l
}

// CountLent counts n uses of a lending as Replay counts each (the check and quota
// counters, and envoyproxy/ratelimit's per-limit hits, all within the limit).
func (m *Main) CountLent(rp *Replay, l *Lent, n int64) {
	if n <= 0 {
		return
	}
	m.replays.Add(float64(n))
	m.lentReplays.Add(float64(n))
	rp.checked.Add(float64(n))
	if l.ld == nil {
		return
	}
	rp.quotaOK.Add(float64(n))
	for _, lim := range l.ld.limits {
		lim.Stats.TotalHits.Add(uint64(n))
		lim.Stats.WithinLimit.Add(uint64(n))
	}
}

// GiveBack returns n uses of a lending that were not used: their quota hits go back to
// the leases they came from.
func (m *Main) GiveBack(rp *Replay, l *Lent, n int64) {
	if n <= 0 || l.ld == nil || rp.quotas == nil || rp.quotas.lim == nil {
		return
	}
	rp.quotas.lim.giveBackLent(l.ld, uint64(n))
}

// Finish asks the rate-limit service and gives the check's Outcome.
func (p *Pending) Finish(ctx context.Context) Outcome {
	return p.m.finish(p.r, p.d, p.q, p.q.ask(ctx, p.req))
}

// Authorize is Begin and, when it must, Finish.
func (m *Main) Authorize(ctx context.Context, in Input) Outcome {
	out, p := m.Begin(in)
	if p != nil {
		return p.Finish(ctx)
	}
	return out
}

func (m *Main) finish(r decide.Request, d decide.Decision, q *quotas, quota quotaAnswer) Outcome {
	if quota.result != quotaNone {
		m.quotaChecks.WithLabelValues(r.Upstream, quota.result.String()).Inc()
	}
	switch {
	case quota.result == quotaOver:
		m.checks.WithLabelValues(r.Upstream, decide.ReasonOverLimit).Inc()
		m.log.Info("denied", "reason", decide.ReasonOverLimit, "status", http.StatusTooManyRequests, "caller", d.Caller, "route", r.Route, "upstream", r.Upstream, "limits", quota.limit)
		return overLimit(d.Caller, quota)
	case quota.result == quotaUnavailable && q.failClosed:
		caller := d.Caller
		api := decide.APIOpenAI
		if p := m.policy.Load(); p != nil {
			api = p.API(r.Upstream)
		}
		d = decide.RateLimitUnavailable(api, r.Region)
		d.Caller = caller
	}
	m.checks.WithLabelValues(r.Upstream, d.Reason).Inc()
	if d.Allow {
		m.logAllowed(r, d, quota.result)
		return allowed(d, r.Upstream, quota.headers)
	}
	m.log.Info("denied", "reason", d.Reason, "status", d.Status, "caller", d.Caller, "route", r.Route, "upstream", r.Upstream, "source", r.SourceIP.String())
	return Outcome{Status: d.Status, Headers: []Header{{"content-type", d.ContentType}}, Body: string(d.Body)}
}

// logAllowed logs an allowed check at debug level.
func (m *Main) logAllowed(r decide.Request, d decide.Decision, quota quotaResult) {
	if m.log.Enabled(context.Background(), slog.LevelDebug) { // its arguments would cost allocations on every request
		m.log.Debug("allowed", "caller", d.Caller, "route", r.Route, "upstream", r.Upstream, "key", d.KeyName, "quota", quota.String())
	}
}

func allowed(d decide.Decision, upstream string, responseHeaders []Header) Outcome {
	out := Outcome{
		Allow: true, RemoveHeaders: d.RemoveHeaders, RemoveQueryParams: d.RemoveQueryParams,
		Caller: d.Caller, Tenant: d.Tenant, Upstream: upstream, ResponseHeaders: responseHeaders,
	}
	for k, v := range d.SetHeaders {
		out.SetHeaders = append(out.SetHeaders, Header{k, v})
	}
	return out
}

// overLimit is the 429 of a spent quota. Envoy shapes the body like the provider's errors
// around this message (controlplane/translate, local replies) and adds the request id;
// the X-RateLimit headers and Retry-After go with it, as Envoy's rate-limit filter would
// send them.
func overLimit(caller string, a quotaAnswer) Outcome {
	msg := fmt.Sprintf("llmedge: rate limit exceeded for caller %s (limits: %s); retry after %s seconds.", caller, a.limit, a.reset)
	headers := append(append([]Header(nil), a.headers...), Header{"retry-after", a.reset}, Header{"content-type", "text/plain"})
	return Outcome{Status: http.StatusTooManyRequests, Headers: headers, Body: msg}
}
