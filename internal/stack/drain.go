package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Envoy 1.40 closes its listeners and every connection at once on SIGTERM: a stream in
// flight is cut. Draining first is the admin API's job, so an Envoy is stopped in steps
// (EnvoyProcess.Drain, run by its Stop):
//
//  1. POST /healthcheck/fail: /ready answers 503, so a load balancer that checks it stops
//     sending new connections; every response now carries Connection: close (HTTP/2:
//     GOAWAY), so clients move off after the request they are making.
//  2. POST /drain_listeners?graceful: the listeners keep accepting for --drain-time-s
//     (DrainTime: the load balancer's time to notice), then close.
//  3. Wait until the listeners are closed and no request is active, at most DrainTimeout.
//  4. SIGTERM.
const (
	// DefaultDrainTime is how long a draining Envoy keeps accepting connections before it
	// closes its listeners.
	DefaultDrainTime = 5 * time.Second
	// DefaultDrainTimeout bounds the wait for the requests in flight (streams included).
	DefaultDrainTimeout = 30 * time.Second
)

// drainPoll is how often the admin stats are read while draining.
const drainPoll = 100 * time.Millisecond

// drainSeconds returns e's DrainTime in whole seconds (Envoy's flag), at least one.
func (e Envoy) drainSeconds() int {
	d := e.DrainTime
	if d <= 0 {
		d = DefaultDrainTime
	}
	return max(1, int((d+time.Second-1)/time.Second))
}

func (e Envoy) drainTimeout() time.Duration {
	if e.DrainTimeout <= 0 {
		return DefaultDrainTimeout
	}
	return e.DrainTimeout
}

// Drain runs steps 1–3 above (DrainEnvoy) and returns once Envoy has closed its
// listeners and holds no request, or with an error when DrainTime plus DrainTimeout (or
// ctx) ended first or Envoy exited; the caller then stops Envoy anyway.
func (ep *EnvoyProcess) Drain(ctx context.Context) error {
	timeout := time.Duration(ep.settings.drainSeconds())*time.Second + ep.settings.drainTimeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-ep.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := DrainEnvoy(ctx, ep.adminURL); err != nil {
		if ep.Exited() {
			return fmt.Errorf("stack: drain %s: %w", ep.Name, ep.ExitError())
		}
		return fmt.Errorf("stack: drain %s (within %v): %w", ep.Name, timeout, err)
	}
	return nil
}

// DrainEnvoy runs steps 1–3 above against the admin API at adminURL
// (http://host:port) and returns nil once the listeners are closed and no request is
// active, or ctx's end with the last thing still waited for. Calling it again does no
// harm (Envoy ignores a second graceful drain).
func DrainEnvoy(ctx context.Context, adminURL string) error {
	adminURL = strings.TrimSuffix(adminURL, "/")
	// An Envoy without listeners (no config yet) has none to close.
	before, err := adminStats(ctx, adminURL, `^listener_manager\.total_listeners_active$`)
	if err != nil {
		return err
	}
	listeners := before["listener_manager.total_listeners_active"]
	for _, path := range []string{"/healthcheck/fail", "/drain_listeners?graceful"} {
		if err := adminPost(ctx, adminURL, path); err != nil {
			return err
		}
	}
	for {
		last := drained(ctx, adminURL, listeners)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), last)
		case <-time.After(drainPoll):
		}
	}
}

// drained reports (nil) whether the listeners are closed and no request is active.
func drained(ctx context.Context, adminURL string, listeners int) error {
	stats, err := adminStats(ctx, adminURL, `^(listener_manager\.listener_stopped|http\..*\.downstream_rq_active)$`)
	if err != nil {
		return err
	}
	// The gauge of active listeners does not drop when the drain closes them; this
	// counter rises, once per listener.
	if stats["listener_manager.listener_stopped"] < listeners {
		return errors.New("listeners still open")
	}
	active := 0
	for name, v := range stats {
		// The admin listener's own count includes this very request.
		if strings.HasPrefix(name, "http.") && name != "http.admin.downstream_rq_active" {
			active += v
		}
	}
	if active > 0 {
		return fmt.Errorf("%d requests active", active)
	}
	return nil
}

// adminStats returns the admin counters and gauges whose names match the regular
// expression.
func adminStats(ctx context.Context, adminURL, filter string) (map[string]int, error) {
	status, body, err := Get(ctx, adminURL+"/stats?filter="+url.QueryEscape(filter))
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("/stats: HTTP %d", status)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(body), "\n") {
		name, v, ok := strings.Cut(line, ": ")
		if n, err := strconv.Atoi(v); ok && err == nil {
			out[name] = n
		}
	}
	return out, nil
}

func adminPost(ctx context.Context, adminURL, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, adminURL+path, nil)
	if err != nil {
		return err
	}
	resp, err := localClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: HTTP %d", path, resp.StatusCode)
	}
	return nil
}
