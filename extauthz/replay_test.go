package extauthz

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	rlconfig "github.com/envoyproxy/ratelimit/src/config"
	rlsettings "github.com/envoyproxy/ratelimit/src/settings"
	rlstats "github.com/envoyproxy/ratelimit/src/stats"
	gostats "github.com/lyft/gostats"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/wire"
)

// localRLS answers every request locally, as a lease does, or says it cannot.
type localRLS struct {
	mu     sync.Mutex
	answer *rlsv3.RateLimitResponse
	local  bool
	asked  int
	// lend is how many hits a lending gets (as lease.go's would: of one limit, its window
	// ending at ends); returned counts what came back.
	lend, returned uint64
	ends           int64
}

func (l *localRLS) setConfig(string, *rlsconfv3.RateLimitConfig) error { return nil }
func (l *localRLS) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest, time.Duration) (*rlsv3.RateLimitResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked++
	return l.answer, nil
}
func (l *localRLS) giveBackLent(_ *lending, n uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.returned += n
}

func (l *localRLS) answerLocally(_ *rlsv3.RateLimitRequest, _ *planSlot, ld *lending) (*rlsv3.RateLimitResponse, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked++
	if ld != nil && l.local && l.lend > 0 {
		ld.n, ld.ends = min(ld.ask, l.lend), l.ends
		ld.leases = []*lease{{}}
		ld.limits = []*rlconfig.RateLimit{rlconfig.NewRateLimit(100, rlsv3.RateLimitResponse_RateLimit_MINUTE, testStats.NewStats("d.caller_app"), false, false, false, "", nil, false)}
	}
	return l.answer, l.local
}

var testStats = rlstats.NewStatManager(gostats.NewStore(gostats.NewNullSink(), false), rlsettings.NewSettings())

func (l *localRLS) set(answer *rlsv3.RateLimitResponse, local bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answer, l.local = answer, local
}

func replayInput(tok string) Input {
	return Input{
		Region: "hk", Upstream: "openai", Route: "openai",
		Headers: map[string]string{"authorization": "Bearer " + tok, "x-llmedge-caller": "forged"},
		Path:    "/v1/chat/completions?api_key=x",
	}
}

func remaining(n uint32) *rlsv3.RateLimitResponse {
	return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
		{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: n, DurationUntilReset: durationpb.New(30 * time.Second),
			CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{Name: "callers.app.limits[0]", RequestsPerUnit: 100, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE}},
	}}
}

// A replay answers as Begin does — the same changes to the request, the quota asked
// again with its own headers, the same metrics — and stops holding when the policy, the
// quotas, the key or the clock would decide otherwise.
func TestReplayAnswersAsBeginDoes(t *testing.T) {
	m := newMain(t)
	rls := &localRLS{answer: remaining(9), local: true}
	m.limiter = rls
	const tok = "llme_replay_test_token_aaaaaaaaaaaaaaaaaaaaaaaaa"
	if err := m.apply("v1", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	in := replayInput(tok)
	in.Model = "gpt-4o"
	out, pending, rp := m.BeginReplay(in)
	if pending != nil || !out.Allow || rp == nil {
		t.Fatalf("BeginReplay = %+v, %v, %v; want allowed at once, with a replay", out, pending, rp)
	}
	if h := fmt.Sprint(out.SetHeaders); !strings.Contains(h, "Bearer sk-unit-key") {
		t.Fatalf("set headers %s: want the key", h)
	}
	rls.set(remaining(8), true)
	again, ok := m.Replay(rp)
	if !ok {
		t.Fatal("Replay did not hold right after the check")
	}
	want := out
	want.ResponseHeaders = []Header{
		{"x-ratelimit-limit", `100, 100;w=60;name="callers.app.limits[0]"`}, {"x-ratelimit-remaining", "8"}, {"x-ratelimit-reset", "30"},
	}
	if !reflect.DeepEqual(again, want) {
		t.Errorf("Replay = %+v\nwant     %+v", again, want)
	}
	if n := testutil.ToFloat64(m.checks.WithLabelValues("openai", "ok")); n != 2 {
		t.Errorf("checks ok = %v, want 2 (the check and its replay)", n)
	}
	if n := testutil.ToFloat64(m.quotaChecks.WithLabelValues("openai", "ok")); n != 2 {
		t.Errorf("quota checks ok = %v, want 2", n)
	}
	if n := testutil.ToFloat64(m.replays); n != 1 {
		t.Errorf("replays = %v, want 1", n)
	}

	// A spent quota refuses, as Begin would.
	rls.set(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
		{Code: rlsv3.RateLimitResponse_OVER_LIMIT, DurationUntilReset: durationpb.New(5 * time.Second),
			CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{Name: "callers.app.limits[0]", RequestsPerUnit: 100, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE}},
	}}, true)
	if refused, ok := m.Replay(rp); !ok || refused.Allow || refused.Status != 429 {
		t.Errorf("Replay with the quota spent = %+v, %v; want a 429", refused, ok)
	}
	// A quota that needs Redis: not answered, nothing counted.
	rls.set(remaining(7), false)
	before := testutil.ToFloat64(m.replays)
	if _, ok := m.Replay(rp); ok {
		t.Error("Replay held with a quota that needs a round trip")
	}
	if testutil.ToFloat64(m.replays) != before {
		t.Error("a replay that did not hold was counted")
	}
	rls.set(remaining(7), true)

	// The caller's expiry.
	_, _, expired := m.BeginReplay(in)
	expired.d.ExpiresAt = time.Now().Add(-time.Millisecond)
	if _, ok := m.Replay(expired); ok {
		t.Error("Replay held past the caller's expiry")
	}
	// A new policy, even the same one.
	if err := m.apply("v2", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Replay(rp); ok {
		t.Error("Replay held across a new policy")
	}
	_, _, rp = m.BeginReplay(in)
	if rp == nil {
		t.Fatal("no replay under the new policy")
	}
	if _, ok := m.Replay(rp); !ok {
		t.Fatal("a fresh replay did not hold")
	}

	// The key: another value, then a second key (each request gets the next).
	keys := m.opts.KeysDir
	if err := os.WriteFile(filepath.Join(keys, "openai", "k1"), []byte("sk-unit-key-rotated"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		if _, ok := m.Replay(rp); ok {
			return fmt.Errorf("replay still holds after the key changed")
		}
		return nil
	})
	out, _, rp = m.BeginReplay(in)
	if rp == nil || !strings.Contains(fmt.Sprint(out.SetHeaders), "sk-unit-key-rotated") {
		t.Fatalf("after the key changed: %+v, replay %v", out.SetHeaders, rp)
	}
	if err := os.WriteFile(filepath.Join(keys, "openai", "k2"), []byte("sk-unit-key-two"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		if _, ok := m.Replay(rp); ok {
			return fmt.Errorf("replay still holds with two keys")
		}
		return nil
	})
	if rp.KeyPool() != nil {
		t.Error("a replay made for one key has a key pool")
	}
	// Two keys: the replay's pool holds both, the one after the decision's first.
	values := map[string]string{"Bearer sk-unit-key-rotated": "Bearer sk-unit-key-two", "Bearer sk-unit-key-two": "Bearer sk-unit-key-rotated"}
	for range 2 { // the keystore's round robin starts each check on the other key
		out, _, rp = m.BeginReplay(in)
		if rp == nil || rp.KeyPool() == nil {
			t.Fatalf("no replay with a key pool for an upstream with two keys: %v", rp)
		}
		got := out.SetHeaders[0].Value
		pool := rp.KeyPool()
		if pool.Header != "authorization" || len(pool.Values) != 2 || pool.Values[0] != values[got] || pool.Values[1] != got {
			t.Errorf("the check sent one key; its pool (header %q, %d values) does not start with the other and end with it", pool.Header, len(pool.Values))
		}
		if _, ok := m.Replay(rp); !ok {
			t.Error("a replay with a key pool did not hold")
		}
	}
	// A third key: the pool no longer holds.
	if err := os.WriteFile(filepath.Join(keys, "openai", "k3"), []byte("sk-unit-key-three"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		if _, ok := m.Replay(rp); ok {
			return fmt.Errorf("replay still holds after a key was added")
		}
		return nil
	})
	if _, _, rp = m.BeginReplay(in); rp == nil || len(rp.KeyPool().Values) != 3 {
		t.Fatal("no replay with a pool of the three keys")
	}
	// Keys given from a pool count as given: the next check takes the key after the last
	// of them, so the turn goes on across a decision made again (the fast path's entry
	// released, KeysGiven) instead of repeating a key the pool just gave.
	for given := range uint64(5) {
		out, _, next := m.BeginReplay(in)
		if next == nil || next.KeyPool() == nil {
			t.Fatalf("no replay with a pool of the three keys: %v", next)
		}
		m.KeysGiven(next, given)
		after, _, _ := m.BeginReplay(in)
		// The pool's values start after the decision's key: given of them went out, so the
		// next check's key is the one after those, Values[given].
		if want := next.KeyPool().Values[given%3]; after.SetHeaders[0].Value != want {
			t.Errorf("after a pool gave %d keys the next check sent another key than the one after them (decision's: %t)",
				given, after.SetHeaders[0].Value == out.SetHeaders[0].Value)
		}
	}
	// Without a pool nothing counts: the next check still takes the key after the last one.
	_, _, next := m.BeginReplay(in)
	m.KeysGiven(nil, 1)
	m.KeysGiven(&Replay{r: next.r}, 1) // the same upstream, no pool
	if after, _, _ := m.BeginReplay(in); after.SetHeaders[0].Value != next.KeyPool().Values[0] {
		t.Error("KeysGiven without a key pool moved the upstream's turn")
	}
	// Printed or logged, a pool shows no key.
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("pool", "pool", rp.KeyPool())
	printed := fmt.Sprintf("%v %+v %#v %s %q %x", rp.KeyPool(), rp.KeyPool(), rp.KeyPool(), rp.KeyPool(), rp.KeyPool(), rp.KeyPool()) + logged.String() +
		fmt.Sprintf("%v %+v %#v %+v", rp, rp, rp, struct{ R *Replay }{rp})
	for _, secret := range []string{"sk-unit-key-rotated", "sk-unit-key-two", "sk-unit-key-three"} {
		if strings.Contains(printed, secret) {
			t.Errorf("a printed or logged key pool shows a key: %s", printed)
		}
	}
	if !strings.Contains(printed, "3 redacted") {
		t.Errorf("a printed key pool does not say how many keys it holds: %s", printed)
	}
	// At debug level each allowed request's log line names the key the Go check chose.
	m.log = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, ok := m.Replay(rp); ok {
		t.Error("a replay with a key pool held at log level debug")
	}
	if _, _, rp := m.BeginReplay(in); rp != nil {
		t.Error("a replay with a key pool was made at log level debug")
	}
}

// Only a request allowed at once gets a replay; a refusal, or a check waiting on Redis,
// none. A request forwarded by a peer asks no quota on replay either.
func TestReplayOnlyForAllowed(t *testing.T) {
	m := newMain(t)
	rls := &localRLS{answer: remaining(9), local: false}
	m.limiter = rls
	const tok = "llme_replay_test_token_bbbbbbbbbbbbbbbbbbbbbbbbb"
	if err := m.apply("v1", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	if out, _, rp := m.BeginReplay(replayInput("llme_replay_test_token_not_known_aaaaaaaaaaaaa")); out.Allow || rp != nil {
		t.Errorf("unknown token: %+v, replay %v", out, rp)
	}
	if _, pending, rp := m.BeginReplay(replayInput(tok)); pending == nil || rp != nil {
		t.Errorf("a check waiting on Redis: pending %v, replay %v", pending, rp)
	}

	peer := Input{Region: "hk", Upstream: "openai", Route: "openai", Hop: wire.HopPeer, Headers: map[string]string{wire.HeaderCaller: "app"}, Path: "/v1/chat/completions"}
	out, pending, rp := m.BeginReplay(peer)
	if !out.Allow || pending != nil || rp == nil {
		t.Fatalf("peer request: %+v, %v, %v; want allowed with a replay", out, pending, rp)
	}
	asked := rls.asked
	if again, ok := m.Replay(rp); !ok || !again.Allow || len(again.ResponseHeaders) != 0 {
		t.Errorf("peer replay = %+v, %v", again, ok)
	}
	if rls.asked != asked {
		t.Error("a peer's replay asked the quota")
	}
}

// ReplayLend lends later requests with the same Input to its caller: without a quota as
// many as asked, with one what the leases lent, counting the quota down from this
// request's remaining; the lent uses are counted as replays when told (CountLent), what
// was not used goes back (GiveBack). A request logged one by one lends nothing, nor one
// refused; a change of policy calls the replay hook and voids the Replay.
func TestReplayLends(t *testing.T) {
	m := newMain(t)
	ends := time.Now().Unix() + 30
	rls := &localRLS{answer: remaining(90), local: true, lend: 8, ends: ends}
	m.limiter = rls
	var changed atomic.Int32
	m.SetReplayHooks(func() { changed.Add(1) }, nil)
	const tok = "llme_replay_test_token_ccccccccccccccccccccccccc"
	if err := m.apply("v1", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	if changes := changed.Load(); changes != 1 {
		t.Errorf("the replay hook ran %d times for one policy applied, want 1", changes)
	}
	in := replayInput(tok)
	out, _, rp := m.BeginReplay(in)
	if !out.Allow || rp == nil || !rp.Quota() {
		t.Fatalf("BeginReplay = %+v, %v; want allowed with a replay under a quota", out, rp)
	}
	again, lent, ok := m.ReplayLend(rp, 16)
	if !ok || !again.Allow {
		t.Fatalf("ReplayLend = %+v, %v", again, ok)
	}
	now := time.Now().Unix()
	if lent.Uses != 8 || lent.Remaining != 90-8 || lent.Limit != again.ResponseHeaders[0].Value ||
		lent.ResetAt < now+29 || lent.ResetAt > now+31 || lent.Until != ends*int64(time.Second) {
		t.Errorf("lent %+v (now %d); want 8 uses counting down to 82, the limit %q, reset in 30 s, until the window ends at %d",
			lent, now, again.ResponseHeaders[0].Value, ends)
	}
	checks := testutil.ToFloat64(m.checks.WithLabelValues("openai", "ok"))
	quotaOK := testutil.ToFloat64(m.quotaChecks.WithLabelValues("openai", "ok"))
	replays := testutil.ToFloat64(m.replays)
	m.CountLent(rp, &lent, 5)
	if d := testutil.ToFloat64(m.checks.WithLabelValues("openai", "ok")) - checks; d != 5 {
		t.Errorf("5 lent uses counted %v checks", d)
	}
	if d := testutil.ToFloat64(m.quotaChecks.WithLabelValues("openai", "ok")) - quotaOK; d != 5 {
		t.Errorf("5 lent uses counted %v quota checks", d)
	}
	if d := testutil.ToFloat64(m.replays) - replays; d != 5 {
		t.Errorf("5 lent uses counted %v replays", d)
	}
	if d := testutil.ToFloat64(m.lentReplays); d != 5 {
		t.Errorf("lent replays %v, want 5", d)
	}
	m.GiveBack(rp, &lent, 3)
	if rls.returned != 3 {
		t.Errorf("%d hits given back, want the 3 not used", rls.returned)
	}

	// Without a quota, as many as asked, until the caller's expiry.
	peer := Input{Region: "hk", Upstream: "openai", Route: "openai", Hop: wire.HopPeer, Headers: map[string]string{wire.HeaderCaller: "app"}, Path: "/v1/chat/completions"}
	_, _, prp := m.BeginReplay(peer)
	if _, l, ok := m.ReplayLend(prp, 100); !ok || l.Uses != 100 || l.Limit != "" || l.Until != math.MaxInt64 {
		t.Errorf("a request under no quota lent %+v, %v; want 100 uses without headers, no end", l, ok)
	}
	_, _, exp := m.BeginReplay(peer)
	exp.d.ExpiresAt = time.Now().Add(time.Hour)
	if _, l, _ := m.ReplayLend(exp, 100); l.Until != exp.d.ExpiresAt.UnixNano() {
		t.Errorf("lent until %d, want the caller's expiry %d", l.Until, exp.d.ExpiresAt.UnixNano())
	}
	if _, l, ok := m.ReplayLend(rp, 0); !ok || l.Uses != 0 {
		t.Errorf("asked for none: lent %+v", l)
	}

	// A refusal lends nothing (and keeps nothing lent).
	rls.set(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
		{Code: rlsv3.RateLimitResponse_OVER_LIMIT, DurationUntilReset: durationpb.New(5 * time.Second),
			CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{Name: "callers.app.limits[0]", RequestsPerUnit: 100, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE}},
	}}, true)
	returned := rls.returned
	if refused, l, ok := m.ReplayLend(rp, 16); !ok || refused.Allow || l.Uses != 0 || rls.returned != returned+8 {
		t.Errorf("a refused replay: %+v, lent %+v, returned %d; want a 429 lending nothing, the leases' lending given back", refused, l, rls.returned-returned)
	}
	rls.set(remaining(50), true)

	// Allowed requests logged one by one: none lent, so that each is.
	debug := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m.log, debug = debug, m.log
	if _, l, ok := m.ReplayLend(rp, 16); !ok || l.Uses != 0 {
		t.Errorf("with debug logging: lent %+v, %v; want none", l, ok)
	}
	m.log = debug

	if err := m.apply("v2", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	if changes := changed.Load(); changes != 2 {
		t.Errorf("the replay hook ran %d times for two policies applied, want 2", changes)
	}
	if _, l, ok := m.ReplayLend(rp, 16); ok || l.Uses != 0 {
		t.Errorf("across a new policy: lent %+v, %v", l, ok)
	}
	// The keys: a change calls the hook once the new key is in use.
	if err := os.WriteFile(filepath.Join(m.opts.KeysDir, "openai", "k1"), []byte("sk-unit-key-lend-rotated"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		if changed.Load() < 3 {
			return fmt.Errorf("no hook call for the key change yet")
		}
		return nil
	})
}
