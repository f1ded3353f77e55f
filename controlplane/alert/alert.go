// Package alert turns what the control plane knows (its config state, its xDS nodes,
// the metrics of every region's Envoy and ratelimit, probe results) into notifications:
// an Engine decides when an alert fires, repeats and resolves; a Dispatcher delivers the
// messages to Slack, Feishu, DingTalk or a JSON webhook in its own goroutines, so neither
// traffic nor the reload loop ever waits for a webhook. Rules and thresholds come from
// the routes YAML's alerts section (model.Alerts).
package alert

import (
	"sort"
	"sync"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Condition is one thing wrong right now, found by a source. Rule and Key identify it
// across evaluations: the same Rule+Key in two evaluations is the same alert.
type Condition struct {
	Rule    string            `json:"rule"`
	Key     string            `json:"key"` // the subject: region, region/node, region/upstream...
	Summary string            `json:"summary"`
	Labels  map[string]string `json:"labels,omitempty"`
}

func (c Condition) id() string { return c.Rule + "\x00" + c.Key }

// Status of a message.
const (
	Firing   = "firing"
	Resolved = "resolved"
)

// Message is one notification: an alert firing (first time or a repeat) or resolved.
type Message struct {
	Status   string            `json:"status"`
	Rule     string            `json:"rule"`
	Key      string            `json:"key"`
	Summary  string            `json:"summary"`
	Labels   map[string]string `json:"labels,omitempty"`
	StartsAt time.Time         `json:"starts_at"`
	EndsAt   *time.Time        `json:"ends_at,omitempty"`
	Repeat   bool              `json:"repeat,omitempty"`
}

// Active is an alert as /status shows it.
type Active struct {
	Condition
	State    string     `json:"state"` // pending (waiting out the rule's "for") or firing
	Since    time.Time  `json:"since"`
	FiredAt  *time.Time `json:"fired_at,omitempty"`
	LastSent *time.Time `json:"last_sent,omitempty"`
	Silenced bool       `json:"silenced"`
}

type tracked struct {
	cond     Condition
	since    time.Time
	firedAt  time.Time // zero while pending
	lastSent time.Time // zero when never sent (pending or silenced)
}

// Engine holds the alerts between evaluations. It is safe for concurrent use: Evaluate
// runs in the evaluator goroutine, Active and SetConfig from elsewhere.
type Engine struct {
	mu     sync.Mutex
	cfg    model.Alerts
	rules  map[string]model.AlertRule
	active map[string]*tracked
}

// NewEngine returns an engine with no rules until SetConfig.
func NewEngine() *Engine {
	return &Engine{rules: map[string]model.AlertRule{}, active: map[string]*tracked{}}
}

// SetConfig applies a new alerts section. Alerts of rules now disabled resolve at the
// next evaluation, like any condition that is gone.
func (e *Engine) SetConfig(cfg model.Alerts) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cfg = cfg
	e.rules = map[string]model.AlertRule{}
	for _, r := range cfg.Rules {
		e.rules[r.Name] = r
	}
}

// Rule returns the enabled rule named name.
func (e *Engine) Rule(name string) (model.AlertRule, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rules[name]
	return r, ok
}

// Config is the alerts section in force.
func (e *Engine) Config() model.Alerts {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

// Silenced reports whether rule is muted at now.
func Silenced(silences []model.Silence, rule string, now time.Time) bool {
	for _, s := range silences {
		if (s.Rule == "" || s.Rule == rule) && !now.Before(s.Start) && now.Before(s.End) {
			return true
		}
	}
	return false
}

// Evaluate compares the conditions found now with the alerts held and returns the
// messages to send: a firing message once a condition has held for its rule's "for",
// again every repeat interval while it holds, and one resolved message when it is gone.
// A silenced alert sends nothing; if it fired before the silence, its resolution is
// still sent so no chat is left with a dangling alert.
func (e *Engine) Evaluate(now time.Time, conds []Condition) []Message {
	e.mu.Lock()
	defer e.mu.Unlock()
	seen := map[string]bool{}
	var out []Message
	sort.SliceStable(conds, func(i, j int) bool { return conds[i].id() < conds[j].id() })
	for _, c := range conds {
		rule, ok := e.rules[c.Rule]
		if !ok || seen[c.id()] {
			continue
		}
		seen[c.id()] = true
		a := e.active[c.id()]
		if a == nil {
			a = &tracked{since: now}
			e.active[c.id()] = a
		}
		a.cond = c
		if now.Sub(a.since) < rule.For {
			continue
		}
		if a.firedAt.IsZero() {
			a.firedAt = now
		}
		if Silenced(e.cfg.Silences, c.Rule, now) {
			continue
		}
		repeat := !a.lastSent.IsZero()
		if repeat && (e.cfg.Repeat <= 0 || now.Sub(a.lastSent) < e.cfg.Repeat) {
			continue
		}
		a.lastSent = now
		out = append(out, Message{Status: Firing, Rule: c.Rule, Key: c.Key, Summary: c.Summary, Labels: c.Labels, StartsAt: a.firedAt, Repeat: repeat})
	}
	ids := make([]string, 0, len(e.active))
	for id := range e.active {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if seen[id] {
			continue
		}
		a := e.active[id]
		delete(e.active, id)
		if a.lastSent.IsZero() {
			continue // never announced: nothing to resolve
		}
		end := now
		out = append(out, Message{Status: Resolved, Rule: a.cond.Rule, Key: a.cond.Key, Summary: a.cond.Summary, Labels: a.cond.Labels, StartsAt: a.firedAt, EndsAt: &end})
	}
	return out
}

// Active lists the alerts held, sorted by rule and key.
func (e *Engine) Active(now time.Time) []Active {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := []Active{}
	for _, a := range e.active {
		st := Active{Condition: a.cond, State: "pending", Since: a.since, Silenced: Silenced(e.cfg.Silences, a.cond.Rule, now)}
		if !a.firedAt.IsZero() {
			st.State = Firing
			t := a.firedAt
			st.FiredAt = &t
		}
		if !a.lastSent.IsZero() {
			t := a.lastSent
			st.LastSent = &t
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id() < out[j].id() })
	return out
}
