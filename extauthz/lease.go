package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlconfig "github.com/envoyproxy/ratelimit/src/config"
	rllimiter "github.com/envoyproxy/ratelimit/src/limiter"
	rlredis "github.com/envoyproxy/ratelimit/src/redis"
	rlutils "github.com/envoyproxy/ratelimit/src/utils"
	"github.com/prometheus/client_golang/prometheus"
)

// leaseCache is the limiter's Redis cache: envoyproxy/ratelimit's fixed windows — the
// same keys, INCRBY and EXPIRE, counts and per-limit stats as its own Redis cache, which
// the region's ratelimit process and dashboards read — with one change: an edge reserves a
// few hits of a window ahead (a lease) and admits from it without a round trip.
//
//   - A reservation is an INCRBY of the hits it asks for: Redis counts them at once, so
//     the edges of a region together never admit more than the limit.
//   - The first request of a window for a key reserves nothing ahead; each reservation
//     after that asks for twice the last (2n+1), with what the edge holds at most leaseMax
//     and at most 1/leaseShare of what the window had left: near the limit every request
//     is its own round trip again, and what one edge holds unused is a small share of the
//     limit.
//   - Once half of a lease is used, the next is reserved in the background, so steady
//     traffic never waits on Redis.
//   - A request that finds no room waits for its own reservation, as without leases; a
//     refused request is counted in Redis as envoyproxy/ratelimit counts it.
//   - What a lease holds unused for leaseIdle is given back (DECRBY), so an edge that no
//     longer gets a caller's traffic does not keep part of the limit from the edge that does.
type leaseCache struct {
	redis   rlredis.Client
	base    *rllimiter.BaseRateLimiter
	keygen  rllimiter.CacheKeyGenerator
	clock   rlutils.TimeSource
	log     *slog.Logger
	reserve *prometheus.CounterVec // nil in tests that do not count

	mu      sync.Mutex
	settled *sync.Cond // on mu: a reservation answered
	leases  map[string]*lease
	sweepAt int64
}

// A lease is one key's (one limit's, one window's) reservation on this edge.
type lease struct {
	limit   uint64 // the limit it was reserved under: another limit starts over
	ends    int64  // unix second the window ends
	total   uint64 // the key's count in Redis after the last reservation answered
	granted uint64 // reserved hits not used yet
	size    uint64 // hits the last reservation asked for beyond its request's
	pending int    // reservations on their way, ahead or a request's own
	used    int64  // unix second of the last hit admitted from it
}

const (
	leaseMax   = 1024
	leaseShare = 32
	// leaseIdle is how long an edge keeps hits it reserved and no longer uses: then it
	// gives them back (DECRBY), so another edge that now takes the traffic can use them.
	leaseIdle = 2 // seconds
)

func newLeaseCache(client rlredis.Client, clock rlutils.TimeSource, base *rllimiter.BaseRateLimiter, reserve *prometheus.CounterVec, log *slog.Logger) *leaseCache {
	c := &leaseCache{
		redis: client, base: base, keygen: rllimiter.NewCacheKeyGenerator(""), clock: clock,
		log: log, reserve: reserve, leases: map[string]*lease{},
	}
	c.settled = sync.NewCond(&c.mu)
	go c.sweeper()
	return c
}

// sweeper sweeps once a second whether or not requests come: an edge that stopped
// getting a caller's traffic altogether gives back what it holds too.
func (c *leaseCache) sweeper() {
	for range time.Tick(time.Second) {
		c.mu.Lock()
		unused := c.sweep(c.clock.UnixNow())
		c.mu.Unlock()
		if len(unused) > 0 {
			c.giveBack(unused)
		}
	}
}

// localOnly marks a DoLimit that must not wait on Redis: when a lease cannot answer, it
// sets missed and its statuses mean nothing. lend, if not nil, asks it to lend hits to the
// request's later replays as well (lendLocked).
type localOnly struct {
	missed bool
	lend   *lending
}

// lending is hits of a request's leases lent to the later requests that replay it
// (Main.Replay, the module's fast path): ask is how many uses are wanted; n how many
// each counted descriptor's lease gave (0: none), taken from what the edge holds as if
// used at once, so the edge never admits more than it reserved. What is not used is
// given back (giveBackLent).
type lending struct {
	ask    uint64
	n      uint64
	leases []*lease
	limits []*rlconfig.RateLimit
	// ends is the earliest window end (unix second) of the leases: lent hits are void from
	// then on.
	ends int64
}

type localOnlyKey struct{}

func withLocalOnly(ctx context.Context, l *localOnly) context.Context {
	return context.WithValue(ctx, localOnlyKey{}, l)
}

// slot is one descriptor's part of a DoLimit.
type slot struct {
	key           string
	limit         *rlconfig.RateLimit
	hits          uint64
	before, after uint64 // the key's count around this request's hits, as the status reports it
	reserve       uint64 // > 0: hits this request reserves in Redis (its own and ahead)
	count         uint64 // the reservation's answer
	l             *lease // its lease (a swept lease stays valid to hold)
}

func (c *leaseCache) DoLimit(ctx context.Context, req *rlsv3.RateLimitRequest, limits []*rlconfig.RateLimit) []*rlsv3.RateLimitResponse_DescriptorStatus {
	now := c.clock.UnixNow()
	hits := rlutils.GetHitsAddends(req)
	slots := make([]slot, len(req.Descriptors))
	for i, d := range req.Descriptors {
		if limits[i] != nil {
			slots[i] = slot{key: c.keygen.GenerateCacheKey(req.Domain, d, limits[i], now).Key, limit: limits[i], hits: hits[i]}
		}
	}
	local, _ := ctx.Value(localOnlyKey{}).(*localOnly)

	c.mu.Lock()
	unused := c.sweep(now)
	fromLeases := true
	for i := range slots {
		s := &slots[i]
		if s.key == "" {
			continue
		}
		// Held from here on: a sweep while this request waits may drop it from the map.
		s.l = c.lease(s, now)
		if s.l.granted < s.hits {
			fromLeases = false
		}
	}
	if len(unused) > 0 {
		go c.giveBack(unused)
	}
	if !fromLeases && local != nil {
		c.mu.Unlock()
		local.missed = true
		return make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(slots))
	}
	var ahead []prefetch
	var pipe rlredis.Pipeline
	for i := range slots {
		s := &slots[i]
		if s.key == "" {
			continue
		}
		l := s.l
		// A reservation on its way may bring the room: wait for it rather than reserve
		// twice (this is off Envoy's worker: the local attempt never waits).
		for l.granted < s.hits && l.pending > 0 {
			c.settled.Wait()
		}
		if l.granted >= s.hits {
			ahead = c.take(s, l, now, ahead)
			continue
		}
		l.size = l.next()
		l.pending++
		s.reserve = s.hits + l.size
		pipe = c.redis.PipeAppend(pipe, &s.count, "INCRBY", s.key, s.reserve)
		pipe = c.redis.PipeAppend(pipe, nil, "EXPIRE", s.key, rlutils.UnitToDivider(s.limit.Limit.Unit))
	}
	c.mu.Unlock()

	if pipe != nil {
		c.count("request")
		err := c.pipeDo(pipe)
		c.mu.Lock()
		for _, s := range slots {
			if s.reserve > 0 {
				s.l.pending--
			}
		}
		c.settled.Broadcast()
		if err != nil {
			c.mu.Unlock()
			// As envoyproxy/ratelimit's cache reports it: the service turns it into an error.
			panic(rlredis.RedisError(err.Error()))
		}
		for i := range slots {
			s := &slots[i]
			if s.reserve == 0 {
				continue
			}
			l := s.l
			l.grant(s.count, s.reserve)
			// Reservations still on their way may hold room this one did not get: the
			// request waits for them rather than be refused while its own edge has room.
			for l.granted < s.hits && l.pending > 0 {
				c.settled.Wait()
			}
			if l.granted >= s.hits {
				ahead = c.take(s, l, now, ahead)
			} else { // refused: the window has no room left for it
				s.before = sub(s.count, s.reserve)
				s.after = s.before + s.hits
			}
		}
		c.mu.Unlock()
	}
	if local != nil && local.lend != nil && pipe == nil {
		c.mu.Lock()
		ahead = c.lendLocked(slots, local.lend, now, ahead)
		c.mu.Unlock()
	}
	for _, p := range ahead {
		go c.reserveAhead(p)
	}

	statuses := make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(slots))
	for i, s := range slots {
		if s.key != "" {
			s.limit.Stats.TotalHits.Add(s.hits)
		}
		statuses[i] = c.base.GetResponseDescriptorStatus(s.key, rllimiter.NewRateLimitInfo(s.limit, s.before, s.after, 0, 0), false, s.hits)
	}
	return statuses
}

// Flush: the reservations ahead need no waiting for; what they reserve is counted when
// Redis answers.
func (c *leaseCache) Flush() {}

// lease is s's lease, a new one for a key not seen in this window or under this limit.
// Called with mu held.
func (c *leaseCache) lease(s *slot, now int64) *lease {
	limit := uint64(s.limit.Limit.RequestsPerUnit)
	l := c.leases[s.key]
	if l == nil {
		unit := rlutils.UnitToDivider(s.limit.Limit.Unit)
		l = &lease{limit: limit, ends: (now/unit + 1) * unit}
		c.leases[s.key] = l
	}
	if l.limit != limit { // a new limit: what was reserved under the old one is not room
		l.limit, l.granted, l.size = limit, 0, 0
	}
	return l
}

// next is how many hits the next reservation asks for ahead: twice the last, with what
// the edge holds at most leaseMax and at most 1/leaseShare of what the window has left.
func (l *lease) next() uint64 {
	if l.total == 0 { // nothing reserved yet in this window: a burst at its start is exact
		return 0
	}
	left := uint64(0)
	if l.total < l.limit {
		left = l.limit - l.total
	}
	return min(2*l.size+1, sub(leaseMax, l.granted), left/leaseShare)
}

// grant records a reservation of n hits that brought the key's count to count: the part
// of it within the limit is this edge's to admit.
func (l *lease) grant(count, n uint64) {
	l.total = max(l.total, count)
	if before := sub(count, n); before < l.limit {
		l.granted += min(n, l.limit-before)
	}
}

// prefetch is a reservation ahead to make once mu is released.
type prefetch struct {
	key   string
	l     *lease
	n     uint64
	limit uint64
	ttl   int64
}

// take admits s from its lease, and plans the next reservation once half of it is used.
// Called with mu held.
func (c *leaseCache) take(s *slot, l *lease, now int64, ahead []prefetch) []prefetch {
	l.granted -= s.hits
	l.used = now
	// The count the status reports: what Redis holds (at most the limit) less what this
	// edge still holds unused.
	s.after = min(l.total, l.limit) - l.granted
	s.before = s.after - s.hits
	return c.planAhead(s, l, ahead)
}

// planAhead plans the next reservation of s's lease once half of it is used. Called with
// mu held.
func (c *leaseCache) planAhead(s *slot, l *lease, ahead []prefetch) []prefetch {
	// One reservation on its way at a time: what it brings is counted in the next size.
	if l.pending == 0 && l.granted <= l.size/2 {
		if n := l.next(); n > 0 {
			l.size = n
			l.pending++
			ahead = append(ahead, prefetch{key: s.key, l: l, n: n, limit: l.limit, ttl: rlutils.UnitToDivider(s.limit.Limit.Unit)})
		}
	}
	return ahead
}

// nearLimit is envoyproxy/ratelimit's near-limit threshold of a limit (the base
// limiter's 80 %, computed as it computes it): a hit past it is counted as near the limit.
func nearLimit(limit *rlconfig.RateLimit) uint64 {
	return uint64(math.Floor(float64(float32(limit.Limit.RequestsPerUnit) * nearLimitRatio)))
}

// lendLocked lends up to ld.ask hits of every counted descriptor's lease, after a request
// of one hit each was taken from them (slots, each with its status's after): as many as
// every lease holds, and only as far as every count stays within the near-limit threshold,
// so that each lent use is counted as within the limit as the request's own would be (the
// caller counts the uses, CountLent). Shadow-mode limits lend nothing. Called with mu held.
func (c *leaseCache) lendLocked(slots []slot, ld *lending, now int64, ahead []prefetch) []prefetch {
	n := ld.ask
	for i := range slots {
		s := &slots[i]
		if s.key == "" {
			continue
		}
		if s.hits != 1 || s.limit.ShadowMode || s.l.limit != uint64(s.limit.Limit.RequestsPerUnit) {
			return ahead
		}
		n = min(n, s.l.granted/2, sub(nearLimit(s.limit), s.after))
		if s.l.ends <= now {
			return ahead
		}
	}
	if n == 0 {
		return ahead
	}
	ld.n, ld.ends = n, math.MaxInt64
	for i := range slots {
		s := &slots[i]
		if s.key == "" {
			continue
		}
		s.l.granted -= n
		ld.leases = append(ld.leases, s.l)
		ld.limits = append(ld.limits, s.limit)
		ld.ends = min(ld.ends, s.l.ends)
		ahead = c.planAhead(s, s.l, ahead)
	}
	return ahead
}

// giveBackLent returns n hits of a lending its replays did not use to the leases they came
// from, as long as those leases are still for the same limits and windows.
func (c *leaseCache) giveBackLent(ld *lending, n uint64) {
	if n == 0 || len(ld.leases) == 0 {
		return
	}
	now := c.clock.UnixNow()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, l := range ld.leases {
		if l.ends > now && l.limit == uint64(ld.limits[i].Limit.RequestsPerUnit) {
			l.granted += n
			l.used = now
		}
	}
}

func (c *leaseCache) reserveAhead(p prefetch) {
	c.count("ahead")
	var count uint64
	pipe := c.redis.PipeAppend(nil, &count, "INCRBY", p.key, p.n)
	pipe = c.redis.PipeAppend(pipe, nil, "EXPIRE", p.key, p.ttl)
	err := c.pipeDo(pipe)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.l.pending--
	c.settled.Broadcast()
	if err != nil {
		c.log.Debug("quota reservation ahead failed; requests reserve their own", "error", err.Error())
		return
	}
	if p.l.limit == p.limit {
		p.l.grant(count, p.n)
	}
}

// pipeDo is the Redis round trip; a panic in it becomes its error, so that every
// reservation is accounted for (requests wait on pending ones) and none ends Envoy.
func (c *leaseCache) pipeDo(pipe rlredis.Pipeline) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("redis: %v", r)
		}
	}()
	return c.redis.PipeDo(pipe)
}

// sweep, once a second, drops the leases of windows that have ended and takes back what
// leases unused for leaseIdle still hold, to give back to Redis. Called with mu held.
func (c *leaseCache) sweep(now int64) (unused []prefetch) {
	if now < c.sweepAt {
		return nil
	}
	c.sweepAt = now + 1
	for k, l := range c.leases {
		switch {
		case l.ends <= now:
			delete(c.leases, k)
		case l.granted > 0 && l.pending == 0 && l.used+leaseIdle <= now:
			unused = append(unused, prefetch{key: k, n: l.granted, ttl: l.ends - now})
			l.total = sub(l.total, l.granted)
			l.granted, l.size = 0, 0
		}
	}
	return unused
}

// giveBack returns hits reserved and not used to their keys' counts. The EXPIRE keeps a
// key that expired meanwhile (its window ended) from staying behind without one.
func (c *leaseCache) giveBack(unused []prefetch) {
	var pipe rlredis.Pipeline
	for _, u := range unused {
		pipe = c.redis.PipeAppend(pipe, nil, "DECRBY", u.key, u.n)
		pipe = c.redis.PipeAppend(pipe, nil, "EXPIRE", u.key, max(u.ttl, 1))
	}
	c.count("return")
	if err := c.pipeDo(pipe); err != nil {
		c.log.Debug("giving back unused quota reservations failed; they stay counted until their windows end", "error", err.Error())
	}
}

func (c *leaseCache) count(kind string) {
	if c.reserve != nil {
		c.reserve.WithLabelValues(kind).Inc()
	}
}

// sub is a-b, or 0 below it (a key someone else decremented).
func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}
