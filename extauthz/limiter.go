package extauthz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	rlconfig "github.com/envoyproxy/ratelimit/src/config"
	rllimiter "github.com/envoyproxy/ratelimit/src/limiter"
	rlredis "github.com/envoyproxy/ratelimit/src/redis"
	rlsettings "github.com/envoyproxy/ratelimit/src/settings"
	rlstats "github.com/envoyproxy/ratelimit/src/stats"
	rlutils "github.com/envoyproxy/ratelimit/src/utils"
	gostats "github.com/lyft/gostats"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/internal/transport"
)

// limiter is envoyproxy/ratelimit's limits (its config, keys, windows, statuses and stats,
// from its Go module; quotaService in place of its service, leaseCache in front of Redis,
// syncRedis's connections) running inside extauthz, so the request-time quota check is at
// most one Redis round trip from the process Envoy already asks — none when a lease
// answers — instead of a second side call to another process. The region's ratelimit
// process keeps running on the same Redis and the same limits for the token limits Envoy
// asks it about: both derive the same Redis keys from the same domain, descriptors and
// windows.
type limiter struct {
	redis   transport.Address
	log     *slog.Logger
	stats   *statSink
	store   gostats.Store
	reserve *prometheus.CounterVec // the lease cache's round trips, by kind

	mu      sync.Mutex
	svc     atomic.Pointer[quotaService] // built on first use, under mu; read per request without it
	config  *rlsconfv3.RateLimitConfig   // the last config given, applied to a service built later
	version string
	// downUntil (unix nanoseconds) skips Redis for a while after it failed, so requests
	// get the failure mode at once instead of each waiting for the timeout.
	downUntil atomic.Int64
}

// nearLimitRatio is envoyproxy/ratelimit's default near-limit ratio, the base limiter's.
const nearLimitRatio = 0.8

// limiterRetry is how long a failed Redis stays skipped before a request tries it again.
const limiterRetry = time.Second

func newLimiter(redis transport.Address, reg prometheus.Registerer, log *slog.Logger) *limiter {
	sink := newStatSink(reg)
	store := gostats.NewStore(sink, false)
	go store.Start(time.NewTicker(time.Second))
	reserve := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmedge_extauthz_quota_reservations_total",
		Help: "Round trips to Redis for request quotas: kind=request for a request that waited on its own reservation, kind=ahead for a lease reserved in the background, kind=return for unused reservations given back. Requests answered from a lease make none.",
	}, []string{"kind"})
	reg.MustRegister(reserve)
	return &limiter{redis: redis, log: log.With("component", "ratelimit"), stats: sink, store: store, reserve: reserve}
}

// setConfig hands the region's limits to the service (now, or when it is built).
func (l *limiter) setConfig(version string, rc *rlsconfv3.RateLimitConfig) error {
	cfg, err := loadConfig(rc, l.statsManager())
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.config, l.version = rc, version
	if svc := l.svc.Load(); svc != nil {
		svc.setConfig(cfg)
	}
	return nil
}

// loadConfig loads rc the way envoyproxy/ratelimit's xDS provider does; the module
// panics on a bad config, which becomes an error here.
func loadConfig(rc *rlsconfv3.RateLimitConfig, sm rlstats.Manager) (cfg rlconfig.RateLimitConfig, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("rate-limit config %s: %v", rc.GetName(), r)
		}
	}()
	return rlconfig.NewRateLimitConfigImpl([]rlconfig.RateLimitConfigToLoad{{
		Name: rc.GetName(), ConfigYaml: rlconfig.ConfigXdsProtoToYaml(rc),
	}}, sm, false), nil
}

// loadedConfig boxes a config (an interface) for an atomic.Pointer; gen tells loaded
// configs apart (configLoads) without keeping one alive.
type loadedConfig struct {
	cfg rlconfig.RateLimitConfig
	gen uint64
}

var configLoads atomic.Uint64

func (l *limiter) statsManager() rlstats.Manager {
	return rlstats.NewStatManager(l.store, rlsettings.NewSettings())
}

// service returns the service, building it on first use; its Redis connections
// (syncRedis) open when a check needs one.
func (l *limiter) service() (svc *quotaService, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if svc := l.svc.Load(); svc != nil {
		return svc, nil
	}
	if l.config == nil {
		return nil, errors.New("no rate-limit config yet")
	}
	defer func() {
		if r := recover(); r != nil { // the module panics on what it cannot build
			err = fmt.Errorf("redis %s: %v", l.redis, r)
		}
	}()
	sm := l.statsManager()
	clock := rlutils.NewTimeSourceImpl()
	// envoyproxy/ratelimit's defaults: near limit at 80 %, no expiry jitter, no key prefix.
	base := rllimiter.NewBaseRateLimit(clock, rand.New(rlutils.NewLockedSource(time.Now().Unix())), 0, nil, nearLimitRatio, "", sm)
	s := &quotaService{cache: newLeaseCache(newSyncRedis(l.redis, time.Second), clock, base, l.reserve, l.log)}
	cfg, err := loadConfig(l.config, sm)
	if err != nil {
		return nil, err
	}
	s.setConfig(cfg)
	l.svc.Store(s)
	l.log.Info("rate-limit checks in process", "redis", l.redis.String(), "config_version", l.version)
	return s, nil
}

// ShouldRateLimit asks the service within timeout. Past it, or on an error, Redis is
// skipped for limiterRetry and the caller applies the region's failure mode.
func (l *limiter) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest, timeout time.Duration) (*rlsv3.RateLimitResponse, error) {
	if time.Now().UnixNano() < l.downUntil.Load() {
		return nil, errors.New("redis unavailable (retrying shortly)")
	}
	svc, err := l.service()
	if err != nil {
		l.markDown(err)
		return nil, err
	}
	type answer struct {
		resp *rlsv3.RateLimitResponse
		err  error
	}
	done := make(chan answer, 1)
	go func() { // the module's Redis calls take no context: bound them here
		var a answer
		// The module turns Redis errors into errors and re-panics on anything else: a panic
		// here would end the process (Envoy's, for the check inside Envoy).
		defer func() {
			if p := recover(); p != nil {
				a = answer{err: fmt.Errorf("rate-limit check failed: %v", p)}
			}
			done <- a
		}()
		a.resp, a.err = svc.ShouldRateLimit(context.WithoutCancel(ctx), req)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case a := <-done:
		if a.err != nil {
			l.markDown(a.err)
		}
		return a.resp, a.err
	case <-t.C:
		err := fmt.Errorf("no answer from redis within %v", timeout)
		l.markDown(err)
		return nil, err
	}
}

// answerLocally answers req from this edge's quota leases without waiting on Redis, or
// says it cannot (ok false): then ShouldRateLimit must be asked. slot, if not nil, keeps
// req's plan for req to be asked again.
func (l *limiter) answerLocally(req *rlsv3.RateLimitRequest, slot *planSlot, lend *lending) (resp *rlsv3.RateLimitResponse, ok bool) {
	svc := l.svc.Load()
	if svc == nil {
		return nil, false
	}
	defer func() {
		if p := recover(); p != nil {
			resp, ok = nil, false
		}
		if !ok && lend != nil && lend.n > 0 { // not answered: nothing lent either
			svc.giveBackLent(lend, lend.n)
			lend.n = 0
		}
	}()
	att := &localOnly{lend: lend}
	resp, err := svc.shouldRateLimit(withLocalOnly(context.Background(), att), req, slot)
	if err != nil || att.missed {
		return nil, false
	}
	return resp, true
}

// giveBackLent returns n unused hits of a lending (lease.go).
func (l *limiter) giveBackLent(ld *lending, n uint64) {
	if svc := l.svc.Load(); svc != nil {
		svc.giveBackLent(ld, n)
	}
}

func (s *quotaService) giveBackLent(ld *lending, n uint64) {
	if c, ok := s.cache.(*leaseCache); ok {
		c.giveBackLent(ld, n)
	}
}

func (l *limiter) markDown(err error) {
	if prev := l.downUntil.Swap(time.Now().Add(limiterRetry).UnixNano()); prev < time.Now().UnixNano() {
		l.log.Warn("rate-limit checks unavailable; applying the region's failure mode", "error", err.Error(), "retry_in", limiterRetry)
	}
}

// quotaService answers rate-limit requests from a loaded config and the lease cache, as
// envoyproxy/ratelimit's service does: each descriptor's limit from the config (one that
// another limit replaces, or an unlimited one, is not counted), the cache's statuses, and
// OVER_LIMIT when an enforced limit is spent (a quota-mode limit reports it without
// refusing). It is not that service because the service opens a tracing span per call whose
// attributes format the whole request as text: a sixth of the check's CPU inside Envoy.
type quotaService struct {
	cache rllimiter.RateLimitCache
	cfg   atomic.Pointer[loadedConfig]
}

func (s *quotaService) setConfig(cfg rlconfig.RateLimitConfig) {
	s.cfg.Store(&loadedConfig{cfg: cfg, gen: configLoads.Add(1)})
}

func (s *quotaService) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return s.shouldRateLimit(ctx, req, nil)
}

// quotaPlan is what a rate-limit request's descriptors resolve to under one loaded config:
// each one's limit (nil: not counted, as unlimited, replaced or without a limit), and
// which are unlimited.
type quotaPlan struct {
	gen       uint64 // the loadedConfig's
	limits    []*rlconfig.RateLimit
	unlimited []bool
}

// planSlot keeps a request's plan for the next time the same request is asked (a replay,
// extauthz.Replay, asks the same descriptors again): valid while the config is the one
// it was made under.
type planSlot struct{ p atomic.Pointer[quotaPlan] }

// shouldRateLimit is ShouldRateLimit with the request's plan kept in slot (nil: none).
func (s *quotaService) shouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest, slot *planSlot) (resp *rlsv3.RateLimitResponse, err error) {
	defer func() {
		if p := recover(); p != nil {
			re, ok := p.(rlredis.RedisError) // the cache's Redis errors; anything else is a bug
			if !ok {
				panic(p)
			}
			resp, err = nil, re
		}
	}()
	lc := s.cfg.Load()
	switch {
	case lc == nil || lc.cfg == nil || lc.cfg.IsEmptyDomains():
		return nil, errors.New("no rate-limit configuration loaded")
	case req.GetDomain() == "" || len(req.GetDescriptors()) == 0:
		return nil, errors.New("a rate-limit request needs a domain and descriptors")
	}
	var p *quotaPlan
	if slot != nil {
		if p = slot.p.Load(); p != nil && p.gen != lc.gen {
			p = nil
		}
	}
	if p == nil {
		p = plan(ctx, lc, req)
		if slot != nil {
			slot.p.Store(p)
		}
	}
	limits, unlimited := p.limits, p.unlimited
	statuses := s.cache.DoLimit(ctx, req, limits)
	resp = &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK, Statuses: statuses}
	for i, st := range statuses {
		switch {
		case unlimited[i]:
			statuses[i] = &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: math.MaxUint32}
		case st.GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT:
		case limits[i] != nil && limits[i].QuotaMode:
			statuses[i] = &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK, CurrentLimit: st.GetCurrentLimit(), LimitRemaining: st.GetLimitRemaining()}
		default:
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
	}
	return resp, nil
}

// plan looks up each of req's descriptors in the config, as envoyproxy/ratelimit's service
// does: a limit that another limit replaces, or an unlimited one, is not counted.
func plan(ctx context.Context, lc *loadedConfig, req *rlsv3.RateLimitRequest) *quotaPlan {
	n := len(req.Descriptors)
	p := &quotaPlan{gen: lc.gen, limits: make([]*rlconfig.RateLimit, n), unlimited: make([]bool, n)}
	var replaced map[string]bool // made only for a limit that replaces another
	for i, d := range req.Descriptors {
		lim := lc.cfg.GetLimit(ctx, req.Domain, d)
		if lim == nil {
			continue
		}
		for _, r := range lim.Replaces {
			if replaced == nil {
				replaced = map[string]bool{}
			}
			replaced[r] = true
		}
		if lim.Unlimited {
			p.unlimited[i] = true
			continue
		}
		p.limits[i] = lim
	}
	for i, lim := range p.limits {
		if lim != nil && lim.Name != "" && replaced[lim.Name] {
			p.limits[i] = nil
		}
	}
	return p
}

// statSink exports the module's per-limit counters the way envoyproxy/ratelimit's own
// Prometheus endpoint names them (its default mapping):
// ratelimit_service_rate_limit_{total_hits,within_limit,near_limit,over_limit,shadow_mode}
// with labels domain, key1 and key2. Dashboards and the alerts' quota rule read the same
// series from extauthz's /metrics as from ratelimit's.
type statSink struct {
	counters map[string]*prometheus.CounterVec
}

var rateLimitStats = []string{"total_hits", "within_limit", "near_limit", "over_limit", "shadow_mode"}

func newStatSink(reg prometheus.Registerer) *statSink {
	s := &statSink{counters: map[string]*prometheus.CounterVec{}}
	for _, name := range rateLimitStats {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_service_rate_limit_" + name,
			Help: "envoyproxy/ratelimit's " + name + " counter for the quota checks extauthz makes in process, per limit (domain, key1, key2), as ratelimit itself exports it.",
		}, []string{"domain", "key1", "key2"})
		reg.MustRegister(c)
		s.counters[name] = c
	}
	return s
}

// FlushCounter takes a counter's increase since the last flush; names look like
// ratelimit.service.rate_limit.<domain>.<key1>[.<key2>...].<stat>.
func (s *statSink) FlushCounter(name string, value uint64) {
	rest, ok := strings.CutPrefix(name, "ratelimit.service.rate_limit.")
	if !ok {
		return
	}
	parts := strings.Split(rest, ".")
	if len(parts) < 3 {
		return
	}
	c, ok := s.counters[parts[len(parts)-1]]
	if !ok {
		return
	}
	key2 := ""
	if len(parts) > 3 {
		key2 = parts[2]
	}
	c.WithLabelValues(parts[0], parts[1], key2).Add(float64(value))
}
func (s *statSink) FlushGauge(string, uint64)  {}
func (s *statSink) FlushTimer(string, float64) {}
