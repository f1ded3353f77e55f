package stack

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAdmin answers the admin calls a drain makes; the test moves its stats.
type fakeAdmin struct {
	mu                         sync.Mutex
	posts                      []string
	listeners, stopped, active int
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Method == http.MethodPost {
		f.posts = append(f.posts, r.URL.RequestURI())
		return
	}
	if r.URL.Path != "/stats" {
		http.NotFound(w, r)
		return
	}
	re := regexp.MustCompile(r.URL.Query().Get("filter"))
	for name, v := range map[string]int{
		"listener_manager.total_listeners_active": f.listeners,
		"listener_manager.listener_stopped":       f.stopped,
		"http.ingress_hk.downstream_rq_active":    f.active,
		"http.admin.downstream_rq_active":         1, // this very request
	} {
		if re.MatchString(name) {
			fmt.Fprintf(w, "%s: %d\n", name, v)
		}
	}
}

func (f *fakeAdmin) set(fn func(*fakeAdmin)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func TestDrainEnvoyWaitsForListenersAndRequests(t *testing.T) {
	f := &fakeAdmin{listeners: 1, active: 2}
	srv := httptest.NewServer(f)
	defer srv.Close()

	done := make(chan error, 1)
	go func() { done <- DrainEnvoy(t.Context(), srv.URL) }()
	// Neither closed listeners nor finished requests: still draining.
	steps := []func(*fakeAdmin){
		func(f *fakeAdmin) { f.stopped = 1 },
		func(f *fakeAdmin) { f.active = 0 },
	}
	for i, step := range steps {
		select {
		case err := <-done:
			t.Fatalf("drain returned (%v) before step %d", err, i)
		case <-time.After(3 * drainPoll):
		}
		f.set(step)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not return once drained")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if want := []string{"/healthcheck/fail", "/drain_listeners?graceful"}; !slices.Equal(f.posts, want) {
		t.Errorf("admin POSTs %v, want %v", f.posts, want)
	}
}

func TestDrainEnvoyWithoutListenersWaitsForRequestsOnly(t *testing.T) {
	srv := httptest.NewServer(&fakeAdmin{})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := DrainEnvoy(ctx, srv.URL); err != nil {
		t.Fatal(err)
	}
}

func TestDrainEnvoyTimeoutSaysWhatItWaitedFor(t *testing.T) {
	srv := httptest.NewServer(&fakeAdmin{listeners: 1, stopped: 1, active: 3})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err := DrainEnvoy(ctx, srv.URL)
	if err == nil || !strings.Contains(err.Error(), "3 requests active") {
		t.Fatalf("err = %v, want a timeout naming the 3 active requests", err)
	}
}

func TestEnvoyDrainFlags(t *testing.T) {
	for _, c := range []struct {
		drain time.Duration
		want  string
	}{{0, "5"}, {time.Second, "1"}, {1500 * time.Millisecond, "2"}, {time.Millisecond, "1"}} {
		args := Envoy{DrainTime: c.drain}.Cmd("envoy", "b.yaml", "a").Args
		i := slices.Index(args, "--drain-time-s")
		if i < 0 || args[i+1] != c.want || !slices.Contains(args, "immediate") {
			t.Errorf("DrainTime %v: args %v, want --drain-time-s %s and --drain-strategy immediate", c.drain, args, c.want)
		}
	}
}
