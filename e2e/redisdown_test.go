package e2e

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// redisDownRegion fails open; "steady" has a limit it never reaches (so every request is
// a Redis round trip), "capped" one it reaches at once.
const redisDownRegion = quotaRegionHK + `callers:
  steady:
    tokens: [{{.Digest "steady"}}]
    upstreams: [openai]
    limits:
      - {requests: 1000000, per: hour}
  capped:
    tokens: [{{.Digest "capped"}}]
    upstreams: [openai]
    limits:
      - {requests: 3, per: hour}
`

// rateLimitTimeout is the region's rate-limit timeout (controlplane/translate).
const rateLimitTimeout = 100 * time.Millisecond

// timedLoad sends one request after another and keeps every outcome and duration.
type timedLoad struct {
	mu        sync.Mutex
	durations []time.Duration
	failures  []string
	stop      chan struct{}
	done      chan struct{}
}

func startTimedLoad(t *testing.T, url, token string) *timedLoad {
	l := &timedLoad{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 10 * time.Second}
	go func() {
		defer close(l.done)
		for n := 0; n < 100000; n++ {
			select {
			case <-l.stop:
				return
			default:
			}
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("authorization", "Bearer "+token)
			start := time.Now()
			resp, err := client.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			d := time.Since(start)
			l.mu.Lock()
			switch {
			case err != nil:
				l.failures = append(l.failures, err.Error())
			case resp.StatusCode != http.StatusOK:
				l.failures = append(l.failures, "status "+strconv.Itoa(resp.StatusCode))
			default:
				l.durations = append(l.durations, d)
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.halt)
	return l
}

func (l *timedLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// count returns how many requests succeeded so far.
func (l *timedLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.durations)
}

// p50 returns the median of the last n successful requests (0 if fewer were made).
func (l *timedLoad) p50(n int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.durations) < n {
		return 0
	}
	last := slices.Clone(l.durations[len(l.durations)-n:])
	slices.Sort(last)
	return last[n/2]
}

func (l *timedLoad) failed() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.failures)
}

// waitMore waits for n more successful requests after the call.
func (l *timedLoad) waitMore(t *testing.T, n int) {
	t.Helper()
	target := l.count() + n
	testenv.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		if got := l.count(); got < target {
			return fmt.Errorf("%d of %d requests done; failures %v", got, target, l.failed())
		}
		return nil
	})
}

// envoyStat returns the value of one admin counter or gauge.
func envoyStat(t *testing.T, e *testenv.EnvoyProcess, name string) int {
	t.Helper()
	_, body := e.AdminGet(t, "/stats?filter=^"+strings.ReplaceAll(name, ".", `\.`)+"$")
	_, v, ok := strings.Cut(strings.TrimSpace(string(body)), ": ")
	n, err := strconv.Atoi(v)
	if !ok || err != nil {
		t.Fatalf("envoy stat %s: %q", name, body)
	}
	return n
}

// TestRedisDownFailsFast: with Redis killed under load, a fail-open region keeps serving
// and, once Envoy's health check of ratelimit has seen it report NOT_SERVING, stops paying
// the rate-limit timeout on every request; with Redis back the limits hold again.
func TestRedisDownFailsFast(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), redisDownRegion, "hk")
	hk := s.envoys["hk"]
	const healthy = "cluster.llmedge_ratelimit.membership_healthy"
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		if n := envoyStat(t, hk, healthy); n != 1 {
			return fmt.Errorf("%s = %d, want 1 before the fault", healthy, n)
		}
		return nil
	})

	l := startTimedLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.tokens["steady"])
	l.waitMore(t, 50)
	before := l.p50(50)

	killed := time.Now()
	s.redis.Kill()
	// ratelimit reports NOT_SERVING once its last Redis connection is gone; Envoy takes
	// the host out after two failed probes.
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := envoyStat(t, hk, healthy); n != 0 {
			return fmt.Errorf("%s = %d, want 0 with Redis down", healthy, n)
		}
		return nil
	})
	t.Logf("ratelimit marked unhealthy %v after Redis was killed", time.Since(killed).Round(time.Millisecond))
	var down time.Duration
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		l.waitMore(t, 50)
		if down = l.p50(50); down >= rateLimitTimeout/2 {
			return fmt.Errorf("p50 of the last 50 requests %v with Redis down (before: %v)", down, before)
		}
		return nil
	})
	t.Logf("p50 of 50 requests: %v with Redis up, %v with Redis down and ratelimit marked unhealthy", before, down)

	s.redis.Restart(t)
	restarted := time.Now()
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := envoyStat(t, hk, healthy); n != 1 {
			return fmt.Errorf("%s = %d, want 1 with Redis back", healthy, n)
		}
		return nil
	})
	t.Logf("ratelimit healthy again %v after Redis answered PING", time.Since(restarted).Round(time.Millisecond))
	l.waitMore(t, 50)
	l.halt()
	if f := l.failed(); len(f) > 0 {
		t.Errorf("%d of %d requests failed in a fail-open region: %v", len(f), len(f)+l.count(), f[:min(len(f), 10)])
	}
	t.Logf("%d requests, none failed; p50 of the last 50 with Redis back: %v", l.count(), l.p50(50))

	// Limits are enforced again: the capped caller's fourth request this hour is refused
	// (a window edge only resets the count, so polling reaches a 429 either way).
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		resp := s.models(t, "hk", "capped")
		readAll(resp)
		if resp.StatusCode != http.StatusTooManyRequests {
			return fmt.Errorf("capped caller: status %d, want 429 once past 3 an hour", resp.StatusCode)
		}
		return nil
	})
}
