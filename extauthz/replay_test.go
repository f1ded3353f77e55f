package extauthz

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
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
}

func (l *localRLS) setConfig(string, *rlsconfv3.RateLimitConfig) error { return nil }
func (l *localRLS) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest, time.Duration) (*rlsv3.RateLimitResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked++
	return l.answer, nil
}
func (l *localRLS) answerLocally(*rlsv3.RateLimitRequest, *planSlot) (*rlsv3.RateLimitResponse, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked++
	return l.answer, l.local
}
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
	if _, _, rp := m.BeginReplay(in); rp != nil {
		t.Error("a replay was made for an upstream with two keys")
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
