package alert_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmedge/llmedge/controlplane/alert"
)

func msg(rule string) alert.Message {
	return alert.Message{Status: alert.Firing, Rule: rule, Key: "eu", Summary: "s", StartsAt: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
}

// syncBuffer is a log sink safe for the dispatcher's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestDeliveryRetriedWithBackoffAndFailureVisible(t *testing.T) {
	e := newEnv(t)
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	var waits []time.Duration
	var mu sync.Mutex
	d := alert.NewDispatcher(t.Context(), slog.New(slog.NewJSONHandler(&logs, nil)), reg, alert.DispatchOptions{
		Now: e.clk.Now,
		Wait: func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			waits = append(waits, d)
			mu.Unlock()
			return nil
		},
	})
	d.SetNotifiers(notifiers(t, e.srv.URL))
	e.rv.mu.Lock()
	e.rv.down = true
	e.rv.mu.Unlock()
	d.Send(msg("quota"))
	eventually(t, func() error {
		for _, h := range d.Health() {
			if h.Failed != 1 {
				return fmt.Errorf("%s: failed %d", h.Name, h.Failed)
			}
		}
		return nil
	})
	for _, h := range d.Health() {
		if h.Healthy || h.Retries != alert.DefaultMaxAttempts-1 || h.LastError == "" || h.LastErrorAt == nil {
			t.Errorf("health after a dead endpoint: %+v", h)
		}
		if !strings.Contains(h.LastError, "answered 500") {
			t.Errorf("%s last error %q does not say what failed", h.Name, h.LastError)
		}
	}
	mu.Lock()
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	if len(waits) != len(want)*len(kinds) {
		t.Errorf("waited %v; want %v per notifier", waits, want)
	}
	mu.Unlock()
	if n := testutil.ToFloat64(mustCounter(t, reg, "llmedge_alert_notifications_total", "n-slack", "failed")); n != 1 {
		t.Errorf("failed deliveries metric %v; want 1", n)
	}
	e.rv.mu.Lock()
	e.rv.down = false
	e.rv.mu.Unlock()
	d.Send(msg("quota"))
	eventually(t, func() error {
		for _, h := range d.Health() {
			if h.Delivered != 1 || !h.Healthy {
				return fmt.Errorf("%s: %+v", h.Name, h)
			}
		}
		return nil
	})
	if l := logs.String(); strings.Contains(l, e.srv.URL) || strings.Contains(l, secret) || strings.Contains(l, "access_token") {
		t.Errorf("logs carry a webhook URL or secret:\n%s", l)
	}
}

func TestSlowEndpointNeverBlocksSend(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	entered := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	d := alert.NewDispatcher(t.Context(), slog.New(slog.DiscardHandler), reg, alert.DispatchOptions{QueueSize: 4, Client: srv.Client()})
	ns := notifiers(t, srv.URL)[3:] // the generic webhook
	d.SetNotifiers(ns)
	d.Send(msg("first"))
	<-entered // the worker is stuck in the first delivery
	for i := range 100 {
		d.Send(msg(fmt.Sprint("r", i))) // must return although nothing drains the queue
	}
	h := d.Health()[0]
	if h.Queued != 4 || h.Dropped != 96 {
		t.Errorf("queued %d dropped %d; want a bounded queue of 4 and 96 dropped", h.Queued, h.Dropped)
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "llmedge_alert_notifications_total", "n-webhook", "dropped")); n != 96 {
		t.Errorf("dropped metric %v; want 96", n)
	}
	once.Do(func() { close(release) })
	eventually(t, func() error {
		if h := d.Health()[0]; h.Delivered != 5 {
			return fmt.Errorf("delivered %d of 5", h.Delivered)
		}
		return nil
	})
}

func TestSendErrorsNeverCarryTheWebhookToken(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // connection refused
	for _, n := range notifiers(t, url) {
		err := alert.NewSender(n, nil, nil).Send(t.Context(), msg("quota"))
		if err == nil {
			t.Fatalf("%s: send to a closed port succeeded", n.Kind)
		}
		// The host may show (hooks.slack.com is no secret); the path and query carry the
		// webhook's token and must not.
		if strings.Contains(err.Error(), "/hook/") || strings.Contains(err.Error(), "access_token") {
			t.Errorf("%s: error %q carries the webhook URL's path or query", n.Kind, err)
		}
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) prometheus.Collector {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for i, l := range m.GetLabel() {
				if i >= len(labels) || l.GetValue() != labels[i] {
					continue metrics
				}
			}
			v := m.GetCounter().GetValue()
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return v })
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return nil
}

// TestInBandRefusalIsAFailure: Feishu and DingTalk answer 200 with a non-zero code when
// they refuse a message; that is a failed delivery, not a success.
func TestInBandRefusalIsAFailure(t *testing.T) {
	replies := map[string]string{
		"feishu":   `{"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"}`,
		"dingtalk": `{"errcode": 310000, "errmsg": "keywords not in content"}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := strings.TrimPrefix(r.URL.Path, "/hook/")
		fmt.Fprint(w, replies[kind])
	}))
	defer srv.Close()
	for _, n := range notifiers(t, srv.URL) {
		err := alert.NewSender(n, srv.Client(), nil).Send(t.Context(), msg("quota"))
		if _, refuses := replies[n.Kind]; refuses != (err != nil) {
			t.Errorf("%s: Send = %v", n.Kind, err)
		}
		if err != nil && !strings.Contains(err.Error(), "refused the message") {
			t.Errorf("%s: error %q does not say the platform refused the message", n.Kind, err)
		}
	}
}
