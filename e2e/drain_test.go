package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

const drainRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
upstreams:
{{.Provider "openai" "hk"}}
routes:
{{.Route "openai"}}
`

// streamLoad keeps workers sending streaming chat completions and checks that each
// stream arrives whole (every chunk, then [DONE]).
type streamLoad struct {
	ok       atomic.Int64
	mu       sync.Mutex
	failures []string
	failed   int
	stop     chan struct{}
	done     chan struct{}
}

func startStreamLoad(t *testing.T, url, token string, workers, chunks int) *streamLoad {
	l := &streamLoad{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	body := `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 10000; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("authorization", "Bearer "+token)
				req.Header.Set("content-type", "application/json")
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					l.fail(err.Error())
					continue
				}
				evs, err := readSSE(resp.Body, start)
				resp.Body.Close()
				switch {
				case err != nil:
					l.fail(fmt.Sprintf("stream cut after %d events: %v", len(evs), err))
				case resp.StatusCode != http.StatusOK:
					l.fail(fmt.Sprintf("status %d", resp.StatusCode))
				case len(evs) < chunks+1 || evs[len(evs)-1].data != "[DONE]":
					l.fail(fmt.Sprintf("incomplete stream: %d events", len(evs)))
				default:
					l.ok.Add(1)
				}
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	t.Cleanup(l.halt)
	return l
}

func (l *streamLoad) fail(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed++
	if len(l.failures) < 10 {
		l.failures = append(l.failures, msg)
	}
}

func (l *streamLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

func (l *streamLoad) waitMore(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	testenv.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		if got := l.ok.Load(); got < target {
			return fmt.Errorf("%d of %d streams done", got, target)
		}
		return nil
	})
}

// TestRollingRestartLosesNoStream: two Envoys of a region share its listen address
// (Envoy binds listeners with SO_REUSEPORT, so the kernel spreads connections over both).
// Under steady streaming load, A is drained and stopped, started again, then B: every
// request succeeds and every stream arrives whole.
func TestRollingRestartLosesNoStream(t *testing.T) {
	t.Parallel()
	const chunks = 10 // 10 × 50 ms: each stream lasts about half a second
	s := newStack(t, startUpstream(t, fakellm.Options{Chunks: chunks, ChunkInterval: 50 * time.Millisecond}), drainRegion, "hk")
	start := func(name, node string) *testenv.EnvoyProcess {
		e := testenv.StartRegionEnvoy(t, llmedgeBin, name, s.withAuthz(stk.Envoy{Region: "hk", NodeID: node, XDSAddr: stk.Unix(s.sock.XDS())}, true))
		testenv.Eventually(t, testenv.EnvoyStartTimeout, 20*time.Millisecond, func() error {
			if st, _ := e.AdminGet(t, "/ready"); st != http.StatusOK {
				return fmt.Errorf("%s: /ready %d", name, st)
			}
			if n := envoyStat(t, e, "listener_manager.total_listeners_active"); n != 1 {
				return fmt.Errorf("%s: %d listeners active", name, n)
			}
			return nil
		})
		return e
	}
	served := func(e *testenv.EnvoyProcess) int { return envoyStat(t, e, "http.ingress_hk.downstream_rq_total") }
	stop := func(e *testenv.EnvoyProcess) {
		t.Helper()
		if n := served(e); n == 0 {
			t.Fatalf("%s served no request before its stop: the kernel did not share the port", e.Name)
		}
		began := time.Now()
		e.Stop()
		if err := e.DrainErr(); err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
		t.Logf("%s drained and stopped in %v", e.Name, time.Since(began).Round(time.Millisecond))
	}

	a := s.envoys["hk"]
	b := start("envoy-hk-b", "envoy-hk-2")
	// The load's keep-alive connections are spread over A and B by the kernel when they
	// open; with 12 of them all land on one Envoy once in 2,048 runs (6 left it at 1 in 32).
	l := startStreamLoad(t, s.edgeURL("hk", "/openai/v1/chat/completions"), s.token, 12, chunks)
	l.waitMore(t, 30)

	stop(a)
	l.waitMore(t, 20)
	a = start("envoy-hk-a2", "envoy-hk-1")
	l.waitMore(t, 30)
	stop(b)
	l.waitMore(t, 20)
	if served(a) == 0 {
		t.Errorf("the restarted A served nothing")
	}
	l.halt()

	t.Logf("%d streams complete, %d failed", l.ok.Load(), l.failed)
	if l.failed > 0 {
		t.Errorf("%d requests failed during the rolling restart: %v", l.failed, l.failures)
	}
}
