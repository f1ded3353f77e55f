package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rlconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/llmedge/llmedge/internal/stack"
)

func TestStartRedis(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	if !strings.HasPrefix(r.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr() = %q", r.Addr())
	}
	if v, err := r.Do("SET", "k", "v"); err != nil || v != "OK" {
		t.Fatalf("SET = %v, %v", v, err)
	}
	if v, err := r.Do("GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET = %v, %v", v, err)
	}
	if v, err := r.Do("CONFIG", "GET", "save"); err != nil || fmt.Sprint(v) != "[save ]" {
		t.Errorf("CONFIG GET save = %v, %v; want persistence off", v, err)
	}
	if _, err := r.Do("NOSUCHCOMMAND"); err == nil {
		t.Error("error reply not returned as an error")
	}

	r.Kill()
	if err := stack.RedisPONG(r.Addr())(context.Background()); err == nil {
		t.Fatal("PING answered after Kill")
	}
	r.Restart(t)
	if v, err := r.Do("GET", "k"); err != nil || v != nil {
		t.Errorf("GET after restart = %v, %v; want nil (nothing persisted)", v, err)
	}
	r.Restart(t) // of a running server: stops it first
	r.Stop()
	if err := stack.RedisPONG(r.Addr())(context.Background()); err == nil {
		t.Fatal("PING answered after Stop")
	}
	if !strings.Contains(strings.ToLower(r.Process().Log()), "ready to accept connections") {
		t.Errorf("redis log lacks the ready line:\n%s", r.Process().Log())
	}
}

// rlXDS is an in-process go-control-plane ADS server that records every
// request the ratelimit clients send (ACKs and NACKs).
type rlXDS struct {
	cache cachev3.SnapshotCache
	addr  string

	mu   sync.Mutex
	reqs []xdsReq
	stop func() // closes the listener and every stream
}

type xdsReq struct {
	node, version, nonce, errMsg string
	at                           time.Time
}

// rlRegionHash keys snapshots like the control plane: node.locality.region,
// else node metadata "region" (all ratelimit can send).
type rlRegionHash struct{}

func (rlRegionHash) ID(n *corev3.Node) string {
	if r := n.GetLocality().GetRegion(); r != "" {
		return r
	}
	return n.GetMetadata().GetFields()["region"].GetStringValue()
}

// startRLXDS serves ADS on addr ("" for a free port of 127.0.0.1).
func startRLXDS(t *testing.T, addr string) *rlXDS {
	t.Helper()
	x := &rlXDS{cache: cachev3.NewSnapshotCache(true, rlRegionHash{}, nil)}
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			x.mu.Lock()
			defer x.mu.Unlock()
			x.reqs = append(x.reqs, xdsReq{
				node:    req.GetNode().GetId(),
				version: req.GetVersionInfo(),
				nonce:   req.GetResponseNonce(),
				errMsg:  req.GetErrorDetail().GetMessage(),
				at:      time.Now(),
			})
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, x.cache, cb)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	x.addr = lis.Addr().String()
	go func() { _ = g.Serve(lis) }()
	x.stop = func() { g.Stop(); cancel() }
	t.Cleanup(x.stop)
	return x
}

func (x *rlXDS) set(t *testing.T, region, version string, cfgs ...*rlconfv3.RateLimitConfig) {
	t.Helper()
	res := make([]types.Resource, len(cfgs))
	for i, c := range cfgs {
		res[i] = c
	}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{resourcev3.RateLimitConfigType: res})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.cache.SetSnapshot(context.Background(), region, snap); err != nil {
		t.Fatal(err)
	}
}

func (x *rlXDS) requests() []xdsReq {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]xdsReq(nil), x.reqs...)
}

// waitAck waits for a request from node that acknowledges version.
func (x *rlXDS) waitAck(t *testing.T, node, version string) {
	t.Helper()
	Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, r := range x.requests() {
			if r.node == node && r.version == version && r.nonce != "" && r.errMsg == "" {
				return nil
			}
		}
		return fmt.Errorf("no ACK of version %q from %s; requests: %+v", version, node, x.requests())
	})
}

// waitRequest waits for any request from node.
func (x *rlXDS) waitRequest(t *testing.T, node string) {
	t.Helper()
	Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, r := range x.requests() {
			if r.node == node {
				return nil
			}
		}
		return fmt.Errorf("no request from %s", node)
	})
}

// rlConfig is the llmedge domain with caller_minute → caller=alice → n/minute.
func rlConfig(name string, perMinute uint32) *rlconfv3.RateLimitConfig {
	return &rlconfv3.RateLimitConfig{
		Name:   name,
		Domain: "llmedge",
		Descriptors: []*rlconfv3.RateLimitDescriptor{{
			Key:   "llmedge",
			Value: "caller_minute",
			Descriptors: []*rlconfv3.RateLimitDescriptor{{
				Key:   "caller",
				Value: "alice",
				RateLimit: &rlconfv3.RateLimitPolicy{
					Unit:            rlconfv3.RateLimitUnit_MINUTE,
					RequestsPerUnit: perMinute,
				},
			}},
		}},
	}
}

func aliceRequest() *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{
		Domain: "llmedge",
		Descriptors: []*rlcommonv3.RateLimitDescriptor{{
			Entries: []*rlcommonv3.RateLimitDescriptor_Entry{
				{Key: "llmedge", Value: "caller_minute"},
				{Key: "caller", Value: "alice"},
			},
		}},
	}
}

func rlsClient(t *testing.T, addr string) rlsv3.RateLimitServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rlsv3.NewRateLimitServiceClient(conn)
}

func shouldRateLimit(c rlsv3.RateLimitServiceClient, req *rlsv3.RateLimitRequest, timeout time.Duration) (*rlsv3.RateLimitResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.ShouldRateLimit(ctx, req)
}

const aliceLimitLine = "llmedge.llmedge_caller_minute.caller_alice: unit=MINUTE requests_per_unit="

func TestRatelimitOverXDS(t *testing.T) {
	t.Parallel()
	x := startRLXDS(t, "")
	x.set(t, "hk", "1", rlConfig("llmedge-hk", 3))
	redis := StartRedis(t)
	rl := StartRatelimit(t, RatelimitOptions{Region: "hk", XDSAddr: x.addr, RedisAddr: redis.Addr()})
	rl.WaitHealthy(t)
	x.waitAck(t, "ratelimit-hk", "1")
	if cfg := rl.Config(t); !strings.Contains(cfg, aliceLimitLine+"3,") {
		t.Fatalf("/rlconfig lacks the 3/minute limit:\n%s", cfg)
	}
	client := rlsClient(t, rl.GRPCAddr())

	// Fixed one-minute windows: if the window turns over during the four
	// calls, the counter restarts; flush and try again in the new window.
	var resps []*rlsv3.RateLimitResponse
	for attempt := 0; ; attempt++ {
		if _, err := redis.Do("FLUSHALL"); err != nil {
			t.Fatal(err)
		}
		resps = resps[:0]
		for i := 0; i < 4; i++ {
			resp, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
			if err != nil {
				t.Fatalf("ShouldRateLimit #%d: %v", i+1, err)
			}
			resps = append(resps, resp)
		}
		first, last := resps[0].Statuses[0].GetDurationUntilReset().AsDuration(), resps[3].Statuses[0].GetDurationUntilReset().AsDuration()
		if last <= first || attempt == 2 {
			break
		}
	}
	for i, resp := range resps {
		t.Logf("call %d: %v", i+1, resp)
		want := rlsv3.RateLimitResponse_OK
		if i == 3 {
			want = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		if resp.OverallCode != want || len(resp.Statuses) != 1 || resp.Statuses[0].Code != want {
			t.Errorf("call %d: overall %v, statuses %v; want %v", i+1, resp.OverallCode, resp.Statuses, want)
			continue
		}
		st := resp.Statuses[0]
		if st.CurrentLimit.GetRequestsPerUnit() != 3 || st.CurrentLimit.GetUnit() != rlsv3.RateLimitResponse_RateLimit_MINUTE {
			t.Errorf("call %d: current limit %v, want 3/MINUTE", i+1, st.CurrentLimit)
		}
		if wantRemaining := uint32(max(0, 2-i)); st.LimitRemaining != wantRemaining {
			t.Errorf("call %d: limit_remaining %d, want %d", i+1, st.LimitRemaining, wantRemaining)
		}
		if d := st.DurationUntilReset.AsDuration(); d <= 0 || d > time.Minute {
			t.Errorf("call %d: duration_until_reset %v, want (0, 1m]", i+1, d)
		}
		if len(resp.ResponseHeadersToAdd) != 0 {
			t.Errorf("call %d: headers %v without LIMIT_RESPONSE_HEADERS_ENABLED", i+1, resp.ResponseHeadersToAdd)
		}
	}

	// An update applies without a restart.
	t0 := time.Now()
	x.set(t, "hk", "2", rlConfig("llmedge-hk", 10))
	Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if cfg := rl.Config(t); !strings.Contains(cfg, aliceLimitLine+"10,") {
			return fmt.Errorf("/rlconfig still %q", cfg)
		}
		return nil
	})
	t.Logf("limit 3 -> 10 visible in /rlconfig after %v", time.Since(t0))
	x.waitAck(t, "ratelimit-hk", "2")
	resp, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if resp.OverallCode != rlsv3.RateLimitResponse_OK || resp.Statuses[0].CurrentLimit.GetRequestsPerUnit() != 10 {
		t.Errorf("after update: %v, want OK with limit 10", resp)
	}

	// A config ratelimit rejects (empty domain) is NACKed; the old one stays.
	before := len(x.requests())
	bad := rlConfig("llmedge-hk", 5)
	bad.Domain = ""
	x.set(t, "hk", "3", bad)
	var nack xdsReq
	Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, r := range x.requests()[before:] {
			if r.errMsg != "" {
				nack = r
				return nil
			}
		}
		return errors.New("no NACK yet")
	})
	t.Logf("NACK: %+v", nack)
	if nack.version != "2" || !strings.Contains(nack.errMsg, "empty domain") {
		t.Errorf("NACK %+v: want version_info 2 (last accepted) and the loader's error", nack)
	}
	if cfg := rl.Config(t); !strings.Contains(cfg, aliceLimitLine+"10,") {
		t.Errorf("after NACK /rlconfig = %q, want the previous limit", cfg)
	}
	if !rl.Healthy() {
		t.Error("unhealthy after a rejected config")
	}
	waitMetric(t, rl, "ratelimit_service_config_load_error ")
	// go-control-plane answers a NACK (version 2 != snapshot 3) with the same
	// snapshot again, so the NACKs repeat until the snapshot is fixed.
	n0 := len(nacksOf(x.requests()[before:]))
	Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := len(nacksOf(x.requests()[before:])); n < n0+5 {
			return fmt.Errorf("%d NACKs", n)
		}
		return nil
	})
	nacks := nacksOf(x.requests()[before:])
	first, last := nacks[0].at, nacks[len(nacks)-1].at
	t.Logf("%d NACKs of the bad version in %v (%.0f/s)", len(nacks), last.Sub(first), float64(len(nacks)-1)/last.Sub(first).Seconds())
	x.set(t, "hk", "4", rlConfig("llmedge-hk", 10))
	x.waitAck(t, "ratelimit-hk", "4")
	afterFix := len(x.requests())
	Eventually(t, 2*time.Second, 50*time.Millisecond, func() error {
		// Quiet once fixed: at most the in-flight NACKs land after the ACK.
		if n := len(nacksOf(x.requests()[afterFix:])); n > 2 {
			return fmt.Errorf("%d NACKs after the fix", n)
		}
		return nil
	})

	// Redis down: what does the caller (Envoy) see? Each pooled connection
	// (REDIS_POOL_SIZE=10) fails once with EOF and is dropped; once the pool
	// is empty, calls block until Redis is back (the client uses no timeout).
	redis.Stop()
	var seen []string
	for i := 0; i < 15; i++ {
		start := time.Now()
		_, err := shouldRateLimit(client, aliceRequest(), 300*time.Millisecond)
		if err == nil {
			t.Fatalf("call %d with Redis down succeeded", i+1)
		}
		seen = append(seen, fmt.Sprintf("%v after %v: %v", status.Code(err), time.Since(start).Round(time.Millisecond), status.Convert(err).Message()))
		if status.Code(err) == codes.DeadlineExceeded {
			break
		}
	}
	t.Logf("ShouldRateLimit with Redis stopped:\n  %s", strings.Join(seen, "\n  "))
	if !strings.HasPrefix(seen[0], "Unknown") || !strings.HasPrefix(seen[len(seen)-1], "DeadlineExceeded") {
		t.Errorf("with Redis down: want Unknown errors, then hanging calls; got %v", seen)
	}
	t.Logf("healthy with Redis down: %v", rl.Healthy())
	waitMetric(t, rl, `ratelimit_service_should_rate_limit_error{err_type="redis_error"} `)

	redis.Restart(t)
	start := time.Now()
	Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, err := shouldRateLimit(client, aliceRequest(), time.Second)
		if err != nil {
			return err
		}
		if resp.OverallCode != rlsv3.RateLimitResponse_OK {
			return fmt.Errorf("overall %v", resp.OverallCode)
		}
		return nil
	})
	t.Logf("Redis back: ShouldRateLimit OK again after %v", time.Since(start))
	if rl.Exited() {
		t.Fatal("ratelimit exited")
	}

	start = time.Now()
	rl.Stop()
	t.Logf("ratelimit Stop (SIGTERM) took %v", time.Since(start))
	if !strings.Contains(rl.Log(), "shutting down gracefully") {
		t.Errorf("no graceful shutdown logged")
	}
}

// waitMetric waits for a Prometheus sample starting with prefix and a value
// other than 0 (stats are flushed every STATS_FLUSH_INTERVAL).
func waitMetric(t *testing.T, rl *RatelimitProcess, prefix string) {
	t.Helper()
	Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		for _, line := range strings.Split(rl.Metrics(t), "\n") {
			if strings.HasPrefix(line, prefix) && !strings.HasSuffix(line, " 0") {
				t.Logf("metric %s", line)
				return nil
			}
		}
		return fmt.Errorf("no non-zero %q", prefix)
	})
}

func nacksOf(reqs []xdsReq) []xdsReq {
	var out []xdsReq
	for _, r := range reqs {
		if r.errMsg != "" {
			out = append(out, r)
		}
	}
	return out
}

func TestRatelimitStartsWithoutConfig(t *testing.T) {
	t.Parallel()
	x := startRLXDS(t, "")
	redis := StartRedis(t)
	rl := StartRatelimit(t, RatelimitOptions{Region: "sg", XDSAddr: x.addr, RedisAddr: redis.Addr()})
	client := rlsClient(t, rl.GRPCAddr())

	if rl.Healthy() {
		t.Error("healthy before any config")
	}
	if cfg := rl.Config(t); cfg != "" {
		t.Errorf("/rlconfig = %q before any config", cfg)
	}
	_, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
	t.Logf("ShouldRateLimit without config: code %v: %v", status.Code(err), err)
	if status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "no rate limit configuration loaded") {
		t.Errorf("ShouldRateLimit without config: %v", err)
	}

	x.set(t, "sg", "1", rlConfig("llmedge-sg", 3))
	rl.WaitHealthy(t)
	x.waitAck(t, "ratelimit-sg", "1")
	resp, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
	if err != nil || resp.OverallCode != rlsv3.RateLimitResponse_OK {
		t.Fatalf("after config: %v, %v", resp, err)
	}

	// An empty snapshot (no domains) is accepted but, with
	// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED, makes the service unhealthy.
	x.set(t, "sg", "2")
	x.waitAck(t, "ratelimit-sg", "2")
	Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if rl.Healthy() {
			return errors.New("still healthy with no domains")
		}
		return nil
	})
	resp, err = shouldRateLimit(client, aliceRequest(), 5*time.Second)
	t.Logf("ShouldRateLimit with an empty config: %v, %v", resp, err)
	if err != nil || resp.OverallCode != rlsv3.RateLimitResponse_OK {
		t.Errorf("with an empty config: %v, %v; want OK (no matching limit)", resp, err)
	}
}

func TestRatelimitWaitsForConfigWhenNotForced(t *testing.T) {
	t.Parallel()
	x := startRLXDS(t, "")
	redis := StartRedis(t)
	rl := StartRatelimit(t, RatelimitOptions{
		Region: "de", XDSAddr: x.addr, RedisAddr: redis.Addr(),
		ExtraEnv: []string{"FORCE_START_WITHOUT_INITIAL_CONFIG=false"},
	})
	x.waitRequest(t, "ratelimit-de")
	if c, err := net.DialTimeout("tcp", rl.HTTPAddr(), time.Second); err == nil {
		c.Close()
		t.Error("HTTP listener open before the first config")
	}

	// A rejected first config still ends the wait: the listeners open with
	// no config loaded.
	bad := rlConfig("llmedge-de", 3)
	bad.Domain = ""
	x.set(t, "de", "1", bad)
	Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		rl.fatalIfExited(t)
		c, err := net.DialTimeout("tcp", rl.GRPCAddr(), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if n := len(nacksOf(x.requests())); n == 0 {
		t.Error("bad first config not NACKed")
	}
	client := rlsClient(t, rl.GRPCAddr())
	_, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
	if !strings.Contains(fmt.Sprint(err), "no rate limit configuration loaded") {
		t.Errorf("after a rejected first config: %v", err)
	}
	if rl.Healthy() {
		t.Error("healthy after a rejected first config")
	}

	x.set(t, "de", "2", rlConfig("llmedge-de", 3))
	rl.WaitHealthy(t)
	if cfg := rl.Config(t); !strings.Contains(cfg, aliceLimitLine+"3,") {
		t.Errorf("/rlconfig = %q", cfg)
	}
}

func TestRatelimitReconnectsToControlPlane(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	x := startRLXDS(t, addr)
	x.set(t, "kr", "1", rlConfig("llmedge-kr", 3))
	redis := StartRedis(t)
	rl := StartRatelimit(t, RatelimitOptions{Region: "kr", XDSAddr: addr, RedisAddr: redis.Addr()})
	rl.WaitHealthy(t)
	x.waitAck(t, "ratelimit-kr", "1")
	client := rlsClient(t, rl.GRPCAddr())

	x.stop()
	// The last config stays in force while the control plane is away.
	resp, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
	if err != nil || resp.Statuses[0].CurrentLimit.GetRequestsPerUnit() != 3 {
		t.Fatalf("control plane down: %v, %v", resp, err)
	}
	if !rl.Healthy() {
		t.Error("unhealthy while the control plane is down")
	}

	start := time.Now()
	x2 := startRLXDS(t, addr)
	x2.set(t, "kr", "2", rlConfig("llmedge-kr", 10))
	Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		if cfg := rl.Config(t); !strings.Contains(cfg, aliceLimitLine+"10,") {
			return fmt.Errorf("/rlconfig still %q", cfg)
		}
		return nil
	})
	t.Logf("new control plane's config loaded %v after it started", time.Since(start))
	reqs := x2.requests()
	t.Logf("first request to the new control plane: %+v", reqs[0])
	x2.waitAck(t, "ratelimit-kr", "2")
}

func TestRatelimitHeadersAndShadowMode(t *testing.T) {
	t.Parallel()
	x := startRLXDS(t, "")
	cfg := rlConfig("llmedge-jp", 2)
	cfg.Descriptors = append(cfg.Descriptors, &rlconfv3.RateLimitDescriptor{
		Key:        "llmedge",
		Value:      "shadow",
		ShadowMode: true,
		RateLimit:  &rlconfv3.RateLimitPolicy{Unit: rlconfv3.RateLimitUnit_HOUR, RequestsPerUnit: 1},
	})
	x.set(t, "jp", "1", cfg)
	redis := StartRedis(t)
	rl := StartRatelimit(t, RatelimitOptions{
		Region: "jp", NodeID: "rl-jp-1", XDSAddr: x.addr, RedisAddr: redis.Addr(),
		ExtraEnv: []string{"LIMIT_RESPONSE_HEADERS_ENABLED=true"},
	})
	rl.WaitHealthy(t)
	x.waitAck(t, "rl-jp-1", "1")
	client := rlsClient(t, rl.GRPCAddr())

	resp, err := shouldRateLimit(client, aliceRequest(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	headers := map[string]string{}
	for _, h := range resp.ResponseHeadersToAdd {
		headers[h.Key] = h.Value
	}
	t.Logf("response headers: %v", headers)
	if headers["RateLimit-Limit"] != "2" || headers["RateLimit-Remaining"] != "1" || headers["RateLimit-Reset"] == "" {
		t.Errorf("headers = %v", headers)
	}

	shadow := &rlsv3.RateLimitRequest{Domain: "llmedge", Descriptors: []*rlcommonv3.RateLimitDescriptor{{
		Entries: []*rlcommonv3.RateLimitDescriptor_Entry{{Key: "llmedge", Value: "shadow"}},
	}}}
	for i := 1; i <= 3; i++ {
		resp, err := shouldRateLimit(client, shadow, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("shadow call %d: %v", i, resp)
		if resp.OverallCode != rlsv3.RateLimitResponse_OK || resp.Statuses[0].Code != rlsv3.RateLimitResponse_OK {
			t.Errorf("shadow call %d: %v, want OK", i, resp)
		}
	}
	waitMetric(t, rl, `ratelimit_service_rate_limit_shadow_mode{domain="llmedge",key1="llmedge_shadow"} `)
}
