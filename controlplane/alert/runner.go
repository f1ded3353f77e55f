package alert

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/model"
)

// DefaultInterval is how often the rules are evaluated.
const DefaultInterval = 15 * time.Second

// Alerter evaluates the rules over its sources and hands the messages to the dispatcher.
// The control plane steps it from its own goroutine: a slow source or webhook delays
// alerts, never the control plane.
type Alerter struct {
	Engine     *Engine
	Dispatcher *Dispatcher
	Metrics    *Metrics
	sources    []Source
	log        *slog.Logger
	firing     *prometheus.GaugeVec

	// mu serialises evaluations: the engine and the metric windows assume one at a time.
	mu     sync.Mutex
	origin any // what the config in force was taken from (see Follow)
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

// Follow applies cfg unless it was already taken from origin (the control plane passes
// its serving *model.Config, so an unchanged config costs a pointer comparison).
func (a *Alerter) Follow(origin any, cfg model.Alerts) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if origin == a.origin {
		return
	}
	a.origin = origin
	a.SetConfig(cfg)
}

// Step runs one evaluation at now and queues its messages; Run calls it on a ticker,
// tests call it with their own clock.
func (a *Alerter) Step(ctx context.Context, now time.Time) []Message {
	a.mu.Lock()
	defer a.mu.Unlock()
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

// Status is the alerts section of /status.
type Status struct {
	Active    []Active         `json:"active"`
	Silences  []model.Silence  `json:"silences"`
	Notifiers []NotifierHealth `json:"notifiers"`
	Scrapes   []ScrapeStatus   `json:"scrapes"`
	Rules     []RuleStatus     `json:"rules"`
}

// RuleStatus is one enabled rule with its thresholds.
type RuleStatus struct {
	Name        string  `json:"name"`
	Percent     float64 `json:"percent,omitempty"`
	Days        int     `json:"days,omitempty"`
	MinRequests int     `json:"min_requests,omitempty"`
	For         string  `json:"for,omitempty"`
}

// Status reports active alerts, silences in force or to come, and notifier health.
func (a *Alerter) Status(now time.Time) Status {
	cfg := a.Engine.Config()
	st := Status{Active: a.Engine.Active(now), Silences: []model.Silence{}, Notifiers: a.Dispatcher.Health(),
		Scrapes: a.Metrics.Status(), Rules: []RuleStatus{}}
	for _, r := range cfg.Rules {
		rs := RuleStatus{Name: r.Name, Percent: r.Percent, Days: r.Days, MinRequests: r.MinRequests}
		if r.For > 0 {
			rs.For = r.For.String()
		}
		st.Rules = append(st.Rules, rs)
	}
	for _, s := range cfg.Silences {
		if now.Before(s.End) {
			st.Silences = append(st.Silences, s)
		}
	}
	return st
}
