package alert

import (
	"context"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Delivery defaults: a message is tried MaxAttempts times, waiting Backoff, then twice as
// long each time up to MaxBackoff; a notifier holds at most QueueSize messages, the oldest
// dropped first, so a dead webhook costs bounded memory and nothing else.
const (
	DefaultMaxAttempts = 5
	DefaultBackoff     = 2 * time.Second
	DefaultMaxBackoff  = time.Minute
	DefaultQueueSize   = 256
)

// DispatchOptions tune delivery; zero values take the defaults.
type DispatchOptions struct {
	MaxAttempts int
	Backoff     time.Duration
	MaxBackoff  time.Duration
	QueueSize   int
	Client      *http.Client
	Now         func() time.Time
	// Wait sleeps d or until ctx ends; tests replace it so retries need no real time.
	Wait func(ctx context.Context, d time.Duration) error
	// NewSender builds a notifier's sender; default NewSender.
	NewSender func(n model.Notifier) Sender
}

// NotifierHealth is one notifier's delivery record, shown in /status. It never holds the
// URL or the secret, only the files' paths.
type NotifierHealth struct {
	Name        string     `json:"name"`
	Type        string     `json:"type"`
	URLFile     string     `json:"url_file"`
	Queued      int        `json:"queued"`
	Delivered   uint64     `json:"delivered"`
	Failed      uint64     `json:"failed"`  // messages given up after every attempt
	Dropped     uint64     `json:"dropped"` // messages pushed out of a full queue
	Retries     uint64     `json:"retries"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	// Healthy is false once the last delivery attempt failed.
	Healthy bool `json:"healthy"`
}

// Dispatcher delivers messages to every notifier, each in its own goroutine with its own
// bounded queue: Send never blocks.
type Dispatcher struct {
	log  *slog.Logger
	opts DispatchOptions
	ctx  context.Context

	mu      sync.Mutex
	workers map[string]*worker

	sent    *prometheus.CounterVec
	retries *prometheus.CounterVec
}

type worker struct {
	n      model.Notifier
	sender Sender
	queue  chan Message
	cancel context.CancelFunc

	mu     sync.Mutex
	health NotifierHealth
}

// NewDispatcher returns a dispatcher whose workers live until ctx ends.
func NewDispatcher(ctx context.Context, log *slog.Logger, reg prometheus.Registerer, o DispatchOptions) *Dispatcher {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Wait == nil {
		o.Wait = sleep
	}
	if o.NewSender == nil {
		client, now := o.Client, o.Now
		o.NewSender = func(n model.Notifier) Sender { return NewSender(n, client, now) }
	}
	d := &Dispatcher{
		log: log, opts: o, ctx: ctx, workers: map[string]*worker{},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_alert_notifications_total",
			Help: "Alert notifications by notifier and result: delivered, failed (every attempt failed) or dropped (pushed out of a full queue).",
		}, []string{"notifier", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_alert_delivery_retries_total",
			Help: "Alert delivery attempts that failed and were retried, by notifier.",
		}, []string{"notifier"}),
	}
	if reg != nil {
		reg.MustRegister(d.sent, d.retries)
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetNotifiers starts a worker per new or changed notifier and stops the removed ones
// (their queued messages are dropped: they were for a destination no longer configured).
func (d *Dispatcher) SetNotifiers(ns []model.Notifier) {
	d.mu.Lock()
	defer d.mu.Unlock()
	keep := map[string]bool{}
	for _, n := range ns {
		keep[n.Name] = true
		if w, ok := d.workers[n.Name]; ok && w.n == n {
			continue
		} else if ok {
			w.cancel()
		}
		ctx, cancel := context.WithCancel(d.ctx)
		w := &worker{n: n, sender: d.opts.NewSender(n), queue: make(chan Message, d.opts.QueueSize), cancel: cancel,
			health: NotifierHealth{Name: n.Name, Type: n.Kind, URLFile: n.URLFile, Healthy: true}}
		d.workers[n.Name] = w
		go d.run(ctx, w)
	}
	for name, w := range d.workers {
		if !keep[name] {
			w.cancel()
			delete(d.workers, name)
		}
	}
}

// Send queues m for every notifier. It never blocks: a full queue drops its oldest message.
func (d *Dispatcher) Send(msgs ...Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range msgs {
		for _, w := range d.workers {
			for {
				select {
				case w.queue <- m:
				default:
					select {
					case <-w.queue:
						w.mu.Lock()
						w.health.Dropped++
						w.mu.Unlock()
						d.sent.WithLabelValues(w.n.Name, "dropped").Inc()
					default:
					}
					continue
				}
				break
			}
		}
	}
}

func (d *Dispatcher) run(ctx context.Context, w *worker) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-w.queue:
			d.deliver(ctx, w, m)
		}
	}
}

func (d *Dispatcher) deliver(ctx context.Context, w *worker, m Message) {
	wait := d.opts.Backoff
	for attempt := 1; ; attempt++ {
		err := w.sender.Send(ctx, m)
		now := d.opts.Now().UTC()
		w.mu.Lock()
		if err == nil {
			w.health.Delivered++
			w.health.LastSuccess = &now
			w.health.Healthy = true
			w.mu.Unlock()
			d.sent.WithLabelValues(w.n.Name, "delivered").Inc()
			return
		}
		w.health.LastError, w.health.LastErrorAt, w.health.Healthy = err.Error(), &now, false
		last := attempt >= d.opts.MaxAttempts || ctx.Err() != nil
		if last {
			w.health.Failed++
		} else {
			w.health.Retries++
		}
		w.mu.Unlock()
		// err never holds the URL or the secret (see webhook.Send).
		if last {
			d.sent.WithLabelValues(w.n.Name, "failed").Inc()
			d.log.Error("alert notification failed", "notifier", w.n.Name, "type", w.n.Kind, "rule", m.Rule, "status", m.Status, "attempts", attempt, "err", err.Error())
			return
		}
		d.retries.WithLabelValues(w.n.Name).Inc()
		d.log.Warn("alert notification failed; retrying", "notifier", w.n.Name, "type", w.n.Kind, "rule", m.Rule, "attempt", attempt, "retry_in", wait.String(), "err", err.Error())
		if d.opts.Wait(ctx, wait) != nil {
			return
		}
		wait = min(2*wait, d.opts.MaxBackoff)
	}
}

// Health lists every notifier's delivery record, sorted by name.
func (d *Dispatcher) Health() []NotifierHealth {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []NotifierHealth{}
	for _, w := range d.workers {
		w.mu.Lock()
		h := w.health
		w.mu.Unlock()
		h.Queued = len(w.queue)
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
