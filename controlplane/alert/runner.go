package alert

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/model"
)

// DefaultInterval is how often the rules are evaluated.
const DefaultInterval = 15 * time.Second

// Alerter evaluates the rules over its sources every interval and hands the messages to
// the dispatcher. It runs in its own goroutine: a slow source or webhook delays alerts,
// never the control plane.
type Alerter struct {
	Engine     *Engine
	Dispatcher *Dispatcher
	Metrics    *Metrics
	sources    []Source
	log        *slog.Logger
	firing     *prometheus.GaugeVec
}

// NewAlerter wires an engine, a dispatcher and the sources; Metrics is always a source.
func NewAlerter(log *slog.Logger, reg prometheus.Registerer, d *Dispatcher, m *Metrics, sources ...Source) *Alerter {
	a := &Alerter{Engine: NewEngine(), Dispatcher: d, Metrics: m, sources: append([]Source{m}, sources...), log: log,
		firing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmedge_alerts_firing", Help: "Alerts firing now, by rule (silenced ones included).",
		}, []string{"rule"})}
	if reg != nil {
		reg.MustRegister(a.firing)
	}
	return a
}

// SetConfig applies a new alerts section (called when a routes YAML edit is applied).
func (a *Alerter) SetConfig(cfg model.Alerts) {
	a.Engine.SetConfig(cfg)
	a.Dispatcher.SetNotifiers(cfg.Notifiers)
	a.Metrics.SetTargets(cfg.Scrape)
}

// Step runs one evaluation at now and queues its messages; Run calls it on a ticker,
// tests call it with their own clock.
func (a *Alerter) Step(ctx context.Context, now time.Time) []Message {
	var conds []Condition
	for _, s := range a.sources {
		conds = append(conds, s.Conditions(ctx, now, a.Engine.Rule)...)
	}
	msgs := a.Engine.Evaluate(now, conds)
	for _, m := range msgs {
		a.log.Info("alert "+m.Status, "rule", m.Rule, "key", m.Key, "summary", m.Summary, "repeat", m.Repeat)
	}
	a.Dispatcher.Send(msgs...)
	counts := map[string]float64{}
	for _, r := range a.Engine.Config().Rules {
		counts[r.Name] = 0
	}
	for _, act := range a.Engine.Active(now) {
		if act.State == Firing {
			counts[act.Rule]++
		}
	}
	a.firing.Reset()
	for r, n := range counts {
		a.firing.WithLabelValues(r).Set(n)
	}
	return msgs
}

// Run evaluates every interval until ctx ends.
func (a *Alerter) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			a.Step(ctx, now)
		}
	}
}

// Status is the alerts section of /status.
type Status struct {
	Active    []Active          `json:"active"`
	Silences  []model.Silence   `json:"silences"`
	Notifiers []NotifierHealth  `json:"notifiers"`
	Scrapes   []ScrapeStatus    `json:"scrapes"`
	Rules     []model.AlertRule `json:"rules"`
}

// Status reports active alerts, silences in force or to come, and notifier health.
func (a *Alerter) Status(now time.Time) Status {
	cfg := a.Engine.Config()
	st := Status{Active: a.Engine.Active(now), Silences: []model.Silence{}, Notifiers: a.Dispatcher.Health(),
		Scrapes: a.Metrics.Status(), Rules: append([]model.AlertRule{}, cfg.Rules...)}
	for _, s := range cfg.Silences {
		if now.Before(s.End) {
			st.Silences = append(st.Silences, s)
		}
	}
	return st
}
