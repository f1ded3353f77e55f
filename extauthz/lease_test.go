package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	rlconfig "github.com/envoyproxy/ratelimit/src/config"
	rllimiter "github.com/envoyproxy/ratelimit/src/limiter"
	rlredis "github.com/envoyproxy/ratelimit/src/redis"
	rlsettings "github.com/envoyproxy/ratelimit/src/settings"
	rlstats "github.com/envoyproxy/ratelimit/src/stats"
	gostats "github.com/lyft/gostats"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/transport"
)

type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) UnixNow() int64 { return c.now.Load() }

// edge is one Envoy's lease cache (and its own limit objects, as each process loads the
// config itself) against a shared real Redis.
type edge struct {
	c       *leaseCache
	sm      rlstats.Manager
	reserve *prometheus.CounterVec
}

func newEdge(t *testing.T, sock string, clock *fakeClock) *edge {
	t.Helper()
	sm := rlstats.NewStatManager(gostats.NewStore(gostats.NewNullSink(), false), rlsettings.NewSettings())
	base := rllimiter.NewBaseRateLimit(clock, rand.New(rand.NewSource(1)), 0, nil, 0.8, "", sm)
	reserve := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"kind"})
	client := newSyncRedis(transport.Address{Path: sock}, time.Second)
	t.Cleanup(func() { client.Close() })
	return &edge{c: newLeaseCache(client, clock, base, reserve, slog.New(slog.DiscardHandler)), sm: sm, reserve: reserve}
}

func (e *edge) limit(perHour uint32) *rlconfig.RateLimit {
	return rlconfig.NewRateLimit(perHour, rlsv3.RateLimitResponse_RateLimit_HOUR, e.sm.NewStats("d.caller_alice"),
		false, false, false, "callers.alice.limits[0]", nil, false)
}

var aliceRequest = &rlsv3.RateLimitRequest{Domain: "d", HitsAddend: 1, Descriptors: []*rlcommonv3.RateLimitDescriptor{
	{Entries: []*rlcommonv3.RateLimitDescriptor_Entry{{Key: "caller", Value: "alice"}}},
}}

// check is one request as extauthz makes it: from the lease if it can (local true), else
// with its own round trip.
func (e *edge) check(lim *rlconfig.RateLimit) (st *rlsv3.RateLimitResponse_DescriptorStatus, local bool) {
	limits := []*rlconfig.RateLimit{lim}
	att := &localOnly{}
	if s := e.c.DoLimit(withLocalOnly(context.Background(), att), aliceRequest, limits); !att.missed {
		return s[0], true
	}
	return e.c.DoLimit(context.Background(), aliceRequest, limits)[0], false
}

// unused is what the edge holds reserved and not used, once no reservation is on its way.
func (e *edge) unused(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	testenv.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		e.c.mu.Lock()
		defer e.c.mu.Unlock()
		n = 0
		for k, l := range e.c.leases {
			if l.pending > 0 {
				return fmt.Errorf("%s: a reservation is on its way", k)
			}
			n += l.granted
		}
		return nil
	})
	return n
}

func redisCount(t *testing.T, r *testenv.Redis, key string) uint64 {
	t.Helper()
	v, err := r.Do("GET", key)
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	s, _ := v.(string)
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("GET %s = %v: want a count", key, v)
	}
	return n
}

const hour = int64(3600)

// leaseRig is a real Redis, its socket, and a clock at now for the edges on it.
func leaseRig(t *testing.T, now int64) (*testenv.Redis, string, *fakeClock) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "redis.sock")
	r := testenv.StartRedisSocket(t, sock)
	clock := &fakeClock{}
	clock.now.Store(now)
	return r, sock, clock
}

// Near a small limit every request is its own round trip, counted under
// envoyproxy/ratelimit's key; a refused request counts too; a new limit applies at once.
func TestLeaseCountsAsRatelimitDoes(t *testing.T) {
	r, sock, clock := leaseRig(t, 100*hour+42)
	e := newEdge(t, sock, clock)
	key := fmt.Sprintf("d_caller_alice_%d", 100*hour) // ratelimit's fixed-window key

	three := e.limit(3)
	for i, want := range []struct {
		code      rlsv3.RateLimitResponse_Code
		remaining uint32
	}{{rlsv3.RateLimitResponse_OK, 2}, {rlsv3.RateLimitResponse_OK, 1}, {rlsv3.RateLimitResponse_OK, 0}, {rlsv3.RateLimitResponse_OVER_LIMIT, 0}} {
		st, local := e.check(three)
		if local {
			t.Errorf("request %d answered from a lease; a limit of 3 leaves no room to reserve ahead", i+1)
		}
		if st.GetCode() != want.code || st.GetLimitRemaining() != want.remaining || st.GetCurrentLimit().GetRequestsPerUnit() != 3 {
			t.Fatalf("request %d: %v remaining %d limit %v; want %v remaining %d", i+1, st.GetCode(), st.GetLimitRemaining(), st.GetCurrentLimit(), want.code, want.remaining)
		}
		if reset := st.GetDurationUntilReset().GetSeconds(); reset != hour-42 {
			t.Errorf("request %d: reset in %d s; want %d", i+1, reset, hour-42)
		}
	}
	if n := redisCount(t, r, key); n != 4 {
		t.Errorf("%s = %d; want 4 (the refused request counts, as ratelimit counts it)", key, n)
	}
	if ttl, err := r.Do("TTL", key); err != nil || ttl.(int64) <= 0 || ttl.(int64) > hour {
		t.Errorf("TTL %s = %v, %v; want the window's expiry", key, ttl, err)
	}

	six := e.limit(6) // a config change: 4 counted so far, two more pass
	for i := 5; i <= 7; i++ {
		st, _ := e.check(six)
		if want := map[bool]rlsv3.RateLimitResponse_Code{true: rlsv3.RateLimitResponse_OK, false: rlsv3.RateLimitResponse_OVER_LIMIT}[i <= 6]; st.GetCode() != want {
			t.Errorf("request %d under a limit of 6: %v; want %v", i, st.GetCode(), want)
		}
	}

	// The next window is a new key, whose first request reserves for itself.
	clock.now.Add(hour)
	if st, local := e.check(six); local || st.GetCode() != rlsv3.RateLimitResponse_OK || st.GetLimitRemaining() != 5 {
		t.Errorf("first request of the next hour: %v remaining %d, from a lease %v; want OK, 5, from Redis", st.GetCode(), st.GetLimitRemaining(), local)
	}
	if n := redisCount(t, r, fmt.Sprintf("d_caller_alice_%d", 101*hour)); n != 1 {
		t.Errorf("next hour's count %d; want 1", n)
	}
}

// Steady traffic under a large limit is answered from leases, reserved ahead in the
// background; Redis counts exactly what was admitted plus what the edge holds.
func TestLeaseAnswersSteadyTrafficFromLeases(t *testing.T) {
	r, sock, clock := leaseRig(t, 200*hour)
	e := newEdge(t, sock, clock)
	lim := e.limit(100000)

	const n = 3000
	var local int
	for i := 1; i <= n; i++ {
		st, l := e.check(lim)
		if st.GetCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("request %d: %v", i, st.GetCode())
		}
		if rem := st.GetLimitRemaining(); rem > uint32(100000-i) || rem < uint32(100000-i-leaseMax) {
			t.Fatalf("request %d: remaining %d; want %d less what the edge holds (at most %d)", i, rem, 100000-i, leaseMax)
		}
		if l {
			local++
		}
	}
	waited := testutil.ToFloat64(e.reserve.WithLabelValues("request"))
	ahead := testutil.ToFloat64(e.reserve.WithLabelValues("ahead"))
	t.Logf("%d requests: %d from leases, %v waited on their own reservation, %v reservations ahead", n, local, waited, ahead)
	if local < n*9/10 || waited > n/10 || ahead == 0 {
		t.Errorf("%d of %d requests from leases, %v waited on Redis, %v reserved ahead; want at least 90 %% from leases", local, n, waited, ahead)
	}
	unused := e.unused(t)
	if got := redisCount(t, r, fmt.Sprintf("d_caller_alice_%d", 200*hour)); got != n+unused || unused > leaseMax {
		t.Errorf("Redis counts %d; want the %d admitted + the %d the edge holds (at most %d)", got, n, unused, leaseMax)
	}
}

// A burst past the limit: one edge admits exactly the limit; two edges of a region
// together never more, and every hit within the limit is either admitted or still held.
func TestLeaseNeverAdmitsPastTheLimit(t *testing.T) {
	for _, edges := range []int{1, 2} {
		t.Run(fmt.Sprintf("edges=%d", edges), func(t *testing.T) {
			_, sock, clock := leaseRig(t, 300*hour)
			var es []*edge
			var lims []*rlconfig.RateLimit
			for range edges {
				e := newEdge(t, sock, clock)
				es, lims = append(es, e), append(lims, e.limit(300))
			}
			var admitted, refused atomic.Int64
			count := func(st *rlsv3.RateLimitResponse_DescriptorStatus) {
				if st.GetCode() == rlsv3.RateLimitResponse_OK {
					admitted.Add(1)
				} else {
					refused.Add(1)
				}
			}
			// Warm: sequential traffic gives every edge a lease.
			for i := range 60 {
				st, _ := es[i%edges].check(lims[i%edges])
				count(st)
			}
			var wg sync.WaitGroup
			for w := range 32 {
				wg.Go(func() {
					for range 20 {
						st, _ := es[w%edges].check(lims[w%edges])
						count(st)
					}
				})
			}
			wg.Wait()
			var unused uint64
			for _, e := range es {
				unused += e.unused(t)
			}
			t.Logf("%d requests against a limit of 300 on %d edge(s): %d admitted, %d refused, %d held unused", 60+32*20, edges, admitted.Load(), refused.Load(), unused)
			if admitted.Load() > 300 || admitted.Load()+int64(unused) != 300 || admitted.Load()+refused.Load() != 60+32*20 {
				t.Errorf("admitted %d, held %d, refused %d; want admitted + held = 300 exactly", admitted.Load(), unused, refused.Load())
			}
			if edges == 1 && admitted.Load() != 300 {
				t.Errorf("one edge admitted %d; want exactly the limit", admitted.Load())
			}
		})
	}
}

// An edge whose view of the count is stale (other edges used the window meanwhile)
// reserves ahead past the limit: only the part within it is its to admit.
func TestLeaseClipsAReservationAtTheLimit(t *testing.T) {
	r, sock, clock := leaseRig(t, 500*hour)
	key := fmt.Sprintf("d_caller_alice_%d", 500*hour)
	e := newEdge(t, sock, clock)
	lim := e.limit(3000)
	admitted := 0
	run := func(n int) {
		for range n {
			if st, _ := e.check(lim); st.GetCode() == rlsv3.RateLimitResponse_OK {
				admitted++
			}
		}
	}
	run(200) // the edge holds a lease and thinks ≈ 2,800 are left
	held := e.unused(t)
	others := 3000 - 10 - redisCount(t, r, key) // other edges leave 10 in the window
	if _, err := r.Do("INCRBY", key, strconv.FormatUint(others, 10)); err != nil {
		t.Fatal(err)
	}
	run(int(held) + 100) // its next reservation ahead is sized on the stale view
	held = e.unused(t)
	t.Logf("admitted %d, held %d, others %d, against a limit of 3000", admitted, held, others)
	if uint64(admitted)+held+others != 3000 {
		t.Errorf("admitted %d + held %d + the others' %d = %d; want the limit, 3000", admitted, held, others, uint64(admitted)+held+others)
	}
}

// With Redis gone, what a lease holds is still admitted (it was counted), and then a
// request's own reservation fails as envoyproxy/ratelimit's cache fails: a RedisError.
func TestLeaseWithRedisGone(t *testing.T) {
	r, sock, clock := leaseRig(t, 400*hour)
	e := newEdge(t, sock, clock)
	lim := e.limit(100000)
	for range 200 {
		e.check(lim)
	}
	held := e.unused(t)
	if held == 0 {
		t.Fatal("no lease held after 200 requests")
	}
	r.Stop()
	for i := range held {
		if st, local := e.check(lim); !local || st.GetCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("held request %d of %d with Redis gone: %v, from the lease %v", i+1, held, st.GetCode(), local)
		}
	}
	e.unused(t) // the reservation ahead failed and is accounted for
	defer func() {
		if _, ok := recover().(rlredis.RedisError); !ok {
			t.Error("a request past the lease with Redis gone did not fail with a RedisError")
		}
	}()
	e.check(lim)
}

// The limiter asks envoyproxy/ratelimit's service with the lease cache: answered locally
// once a lease is held, with the service's statuses.
func TestLimiterAnswersLocally(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	testenv.StartRedisSocket(t, sock)
	l := newLimiter(transport.Address{Path: sock}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	rc := &rlsconfv3.RateLimitConfig{Name: "d", Domain: "d", Descriptors: []*rlsconfv3.RateLimitDescriptor{{
		Key: "caller", Value: "alice",
		RateLimit: &rlsconfv3.RateLimitPolicy{Name: "callers.alice.limits[0]", Unit: rlsconfv3.RateLimitUnit_HOUR, RequestsPerUnit: 100000},
	}}}
	if err := l.setConfig("v1", rc); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.answerLocally(aliceRequest, nil, nil); ok {
		t.Fatal("answered locally before any reservation")
	}
	testenv.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if resp, ok := l.answerLocally(aliceRequest, nil, nil); ok {
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetCurrentLimit().GetName() != "callers.alice.limits[0]" {
				t.Fatalf("local answer %v", resp)
			}
			return nil
		}
		if resp, err := l.ShouldRateLimit(context.Background(), aliceRequest, time.Second); err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("ShouldRateLimit: %v, %v", resp, err)
		}
		return fmt.Errorf("not answered locally yet")
	})
}

// overCache answers OVER_LIMIT for every limit it is given, and records them.
type overCache struct{ got []*rlconfig.RateLimit }

func (c *overCache) DoLimit(_ context.Context, _ *rlsv3.RateLimitRequest, limits []*rlconfig.RateLimit) []*rlsv3.RateLimitResponse_DescriptorStatus {
	c.got = limits
	out := make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(limits))
	for i, l := range limits {
		out[i] = &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
		if l != nil {
			out[i] = &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OVER_LIMIT, CurrentLimit: l.Limit}
		}
	}
	return out
}
func (c *overCache) Flush() {}

// The quota service asks the cache about each descriptor's limit as envoyproxy/ratelimit's
// service does: a replaced or unlimited limit is not counted, an unknown descriptor has none.
func TestQuotaServiceLimitsPerDescriptor(t *testing.T) {
	policy := func(name string, n uint32, replaces ...string) *rlsconfv3.RateLimitPolicy {
		p := &rlsconfv3.RateLimitPolicy{Name: name, Unit: rlsconfv3.RateLimitUnit_HOUR, RequestsPerUnit: n}
		for _, r := range replaces {
			p.Replaces = append(p.Replaces, &rlsconfv3.RateLimitReplace{Name: r})
		}
		return p
	}
	rc := &rlsconfv3.RateLimitConfig{Name: "d", Domain: "d", Descriptors: []*rlsconfv3.RateLimitDescriptor{
		{Key: "k", Value: "replaced", RateLimit: policy("replaced", 1)},
		{Key: "k", Value: "free", RateLimit: &rlsconfv3.RateLimitPolicy{Unlimited: true}},
		{Key: "k", Value: "replacing", RateLimit: policy("replacing", 5, "replaced")},
	}}
	sm := rlstats.NewStatManager(gostats.NewStore(gostats.NewNullSink(), false), rlsettings.NewSettings())
	cfg, err := loadConfig(rc, sm)
	if err != nil {
		t.Fatal(err)
	}
	cache := &overCache{}
	s := &quotaService{cache: cache}
	req := &rlsv3.RateLimitRequest{Domain: "d", HitsAddend: 1}
	if _, err := s.ShouldRateLimit(context.Background(), req); err == nil {
		t.Error("answered without a config")
	}
	s.setConfig(cfg)
	for _, v := range []string{"replaced", "free", "replacing", "unknown"} {
		req.Descriptors = append(req.Descriptors, &rlcommonv3.RateLimitDescriptor{Entries: []*rlcommonv3.RateLimitDescriptor_Entry{{Key: "k", Value: v}}})
	}
	resp, err := s.ShouldRateLimit(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var counted []string
	for _, l := range cache.got {
		if l != nil {
			counted = append(counted, l.Name)
		}
	}
	if fmt.Sprint(counted) != "[replacing]" {
		t.Errorf("limits counted %v; want [replacing] (replaced one dropped, unlimited and unknown have none)", counted)
	}
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || resp.GetStatuses()[1].GetLimitRemaining() != 4294967295 || resp.GetStatuses()[2].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("response %v; want OVER_LIMIT from the replacing limit and the unlimited one's remaining at the maximum", resp)
	}
	if _, err := s.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "d"}); err == nil {
		t.Error("answered a request without descriptors")
	}
}

// An edge that stops getting a caller's traffic gives back what it reserved, so the edge
// that now gets it can use the whole limit.
func TestLeaseGivesBackWhatItNoLongerUses(t *testing.T) {
	r, sock, clock := leaseRig(t, 600*hour)
	key := fmt.Sprintf("d_caller_alice_%d", 600*hour)
	a, b := newEdge(t, sock, clock), newEdge(t, sock, clock)
	la, lb := a.limit(1000), b.limit(1000)
	admitted := 0
	run := func(e *edge, lim *rlconfig.RateLimit, n int) {
		for range n {
			if st, _ := e.check(lim); st.GetCode() == rlsv3.RateLimitResponse_OK {
				admitted++
			}
		}
	}
	run(a, la, 300)
	held := a.unused(t)
	if held == 0 {
		t.Fatal("edge a holds nothing after 300 requests")
	}
	clock.now.Add(leaseIdle) // a gets no more requests: its sweeper gives back what it holds
	testenv.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := redisCount(t, r, key); n != 300 {
			return fmt.Errorf("%s = %d; want the 300 admitted once a gives back its %d", key, n, held)
		}
		return nil
	})
	if got := a.unused(t); got != 0 {
		t.Errorf("a still holds %d", got)
	}
	run(b, lb, 1000) // b now gets the traffic, and the rest of the window
	t.Logf("admitted %d of 1000 (a had held %d)", admitted, held)
	if held := b.unused(t); uint64(admitted)+held != 1000 {
		t.Errorf("admitted %d, b holds %d; want 1000 together", admitted, held)
	}
	if n := redisCount(t, r, key); n < 1000 {
		t.Errorf("%s = %d; want at least the limit (refused requests count)", key, n)
	}
}

// A request asked again with its plan kept (a replay's) keeps its limits only while the
// config is the one they were looked up in: a new limit applies to its very next ask.
func TestLimiterPlanFollowsTheConfig(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	testenv.StartRedisSocket(t, sock)
	l := newLimiter(transport.Address{Path: sock}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	config := func(name string, perHour uint32) *rlsconfv3.RateLimitConfig {
		return &rlsconfv3.RateLimitConfig{Name: "d", Domain: "d", Descriptors: []*rlsconfv3.RateLimitDescriptor{{
			Key: "caller", Value: "alice",
			RateLimit: &rlsconfv3.RateLimitPolicy{Name: name, Unit: rlsconfv3.RateLimitUnit_HOUR, RequestsPerUnit: perHour},
		}}}
	}
	if err := l.setConfig("v1", config("first", 100000)); err != nil {
		t.Fatal(err)
	}
	var slot planSlot
	limitName := func() string {
		t.Helper()
		var name string
		testenv.Eventually(t, 5*time.Second, time.Millisecond, func() error {
			resp, ok := l.answerLocally(aliceRequest, &slot, nil)
			if !ok {
				if _, err := l.ShouldRateLimit(context.Background(), aliceRequest, time.Second); err != nil {
					t.Fatal(err)
				}
				return fmt.Errorf("not answered locally yet")
			}
			name = resp.GetStatuses()[0].GetCurrentLimit().GetName()
			return nil
		})
		return name
	}
	if got := limitName(); got != "first" || slot.p.Load() == nil {
		t.Fatalf("limit %q, plan kept %v; want first, kept", got, slot.p.Load() != nil)
	}
	kept := slot.p.Load()
	if err := l.setConfig("v2", config("second", 200000)); err != nil {
		t.Fatal(err)
	}
	if got := limitName(); got != "second" || slot.p.Load() == kept {
		t.Fatalf("after a new config: limit %q, plan renewed %v; want second, renewed", got, slot.p.Load() != kept)
	}
}

// lendNow is one request answered from the edge's leases (as a replay asks it) that also
// asks to lend ask hits to the replay's later requests; ok false when the leases could not
// answer it.
func (e *edge) lendNow(lim *rlconfig.RateLimit, ask uint64) (st *rlsv3.RateLimitResponse_DescriptorStatus, ld *lending, ok bool) {
	ld = &lending{ask: ask}
	att := &localOnly{lend: ld}
	s := e.c.DoLimit(withLocalOnly(context.Background(), att), aliceRequest, []*rlconfig.RateLimit{lim})
	if att.missed {
		return nil, nil, false
	}
	return s[0], ld, true
}

// A lending takes its hits from what the edge reserved, as if used at once: Redis counts
// every admitted request and every hit held or lent, never more; what comes back is
// held again (and given back to Redis when idle); a lending never reaches past the
// near-limit threshold, so every lent use is within the limit as its own request's would
// be; a lending from a window that has ended is not taken back.
func TestLeaseLendsToReplays(t *testing.T) {
	r, sock, clock := leaseRig(t, 300*hour)
	e := newEdge(t, sock, clock)
	lim := e.limit(100000)
	key := fmt.Sprintf("d_caller_alice_%d", 300*hour)

	admitted := uint64(0)
	var ld *lending
	for admitted < 2000 {
		st, l, ok := e.lendNow(lim, 64)
		if !ok {
			e.check(lim) // through Redis: the leases grow
			admitted++
			continue
		}
		admitted++
		if st.GetCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("request %d: %v", admitted, st.GetCode())
		}
		if l.n > 0 {
			ld = l
			break
		}
	}
	if ld == nil {
		t.Fatalf("%d requests and no lending", admitted)
	}
	if ld.n > 64 || len(ld.leases) != 1 || ld.ends != 301*hour {
		t.Fatalf("lent %d hits of %d leases until %d; want at most 64 of one lease, until the hour ends", ld.n, len(ld.leases), ld.ends)
	}
	if unused, got := e.unused(t), redisCount(t, r, key); got != admitted+unused+ld.n {
		t.Errorf("Redis counts %d; want the %d admitted + %d held + %d lent", got, admitted, unused, ld.n)
	}
	// The lent hits count as used for the requests after: the next one's remaining is lower
	// by them.
	st, _ := e.check(lim)
	admitted++
	if rem, want := uint64(st.GetLimitRemaining()), 100000-admitted-ld.n; rem > want {
		t.Errorf("after lending %d: remaining %d; want at most %d", ld.n, rem, want)
	}
	// 5 used, the rest given back: held again, then given back to Redis once idle.
	used := uint64(5)
	e.c.giveBackLent(ld, ld.n-used)
	admitted += used
	if unused, got := e.unused(t), redisCount(t, r, key); got != admitted+unused {
		t.Errorf("after the give-back Redis counts %d; want the %d admitted + %d held", got, admitted, unused)
	}
	clock.now.Add(leaseIdle + 1)
	e.check(lim) // sweeps
	admitted++
	testenv.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if unused, got := e.unused(t), redisCount(t, r, key); got != admitted+unused {
			return fmt.Errorf("Redis counts %d; want the %d admitted + %d held", got, admitted, unused)
		}
		return nil
	})

	// Near the limit: a 1,000 an hour limit is near at 800; no lending reaches past it.
	small := e.limit(1000)
	smallKey := fmt.Sprintf("d_caller_alice_%d", 301*hour)
	clock.now.Store(301 * hour)
	lentTotal := uint64(0)
	for i := 0; i < 1000; i++ {
		st, l, ok := e.lendNow(small, 64)
		if !ok {
			if st, _ := e.check(small); st.GetCode() != rlsv3.RateLimitResponse_OK {
				break
			}
			continue
		}
		if st.GetCode() != rlsv3.RateLimitResponse_OK {
			break
		}
		if after := uint64(1000 - st.GetLimitRemaining()); l.n > 0 && after+l.n > nearLimit(small) {
			t.Fatalf("lent %d hits at a count of %d: past the near-limit threshold %d", l.n, after, nearLimit(small))
		}
		lentTotal += l.n
		if l.n > 0 {
			e.c.giveBackLent(l, l.n)
		}
	}
	if lentTotal == 0 {
		t.Error("nothing lent under a 1,000 an hour limit")
	}
	if n := redisCount(t, r, smallKey); n < 1000 {
		t.Errorf("%s = %d; want the limit reached", smallKey, n)
	}

	// A lending whose window has ended does not come back into the new window's leases.
	clock.now.Store(302 * hour)
	_, l, ok := e.lendNow(lim, 64)
	for !ok || l.n == 0 {
		e.check(lim)
		_, l, ok = e.lendNow(lim, 64)
	}
	held := e.unused(t)
	clock.now.Store(303 * hour)
	e.c.giveBackLent(l, l.n)
	if got := e.unused(t); got > held {
		t.Errorf("a lending of an ended window came back: held %d, now %d", held, got)
	}
}
