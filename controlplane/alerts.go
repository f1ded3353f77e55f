package controlplane

import (
	"context"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
)

// startAlerts builds the alerter and runs it beside the control plane until ctx ends. It
// reads state the way /status does and never holds the state lock while it evaluates or
// delivers, so neither the reload loop nor xDS waits for it.
func (m *Main) startAlerts(ctx context.Context) {
	d := alert.NewDispatcher(ctx, m.log.With("component", "alerts"), m.reg, alert.DispatchOptions{
		Client: m.opts.AlertHTTPClient, Wait: m.opts.AlertWait,
	})
	metrics := alert.NewMetrics(m.opts.AlertHTTPClient, upstreamOfCluster)
	sources := []alert.Source{alert.SourceFunc(m.stateConditions)}
	probes := m.opts.Probes
	if probes == nil && m.prober != nil {
		// The control plane's own prober: its Result has alert.ProbeResult's fields.
		probes = ProbeSourceFunc(func() []alert.ProbeResult {
			rs := m.prober.Results()
			out := make([]alert.ProbeResult, len(rs))
			for i, r := range rs {
				out[i] = alert.ProbeResult(r)
			}
			return out
		})
	}
	if probes != nil {
		sources = append(sources, alert.SourceFunc(func(_ context.Context, now time.Time, rule alert.RuleFunc) []alert.Condition {
			return alert.ProbeConditions(probes.Results(), now, rule)
		}))
	}
	m.alerts = alert.NewAlerter(m.log.With("component", "alerts"), m.reg, d, metrics, sources...)
	if m.opts.AlertInterval < 0 {
		return // evaluated only by AlertStep (tests)
	}
	go func() {
		t := time.NewTicker(orDefault(m.opts.AlertInterval, alert.DefaultInterval))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.AlertStep(ctx, time.Now())
			}
		}
	}()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// AlertStep evaluates the alert rules once at now: the serving config's alerts section
// first, then every source. The ticker calls it; tests call it with their own clock.
func (m *Main) AlertStep(ctx context.Context, now time.Time) []alert.Message {
	m.mu.Lock()
	cfg := m.state.applied
	m.mu.Unlock()
	var a model.Alerts
	if cfg != nil {
		a = cfg.Alerts
	}
	m.alerts.Follow(cfg, a)
	return m.alerts.Step(ctx, now)
}

// upstreamOfCluster inverts translate.ClusterName for the metric rules.
func upstreamOfCluster(cluster string) (string, bool) {
	name, ok := strings.CutPrefix(cluster, "upstream_")
	return name, ok && translate.ClusterName(name) == cluster
}

// stateConditions evaluates the config and node rules over what /status reports, so
// "in sync" has one definition.
func (m *Main) stateConditions(_ context.Context, _ time.Time, rule alert.RuleFunc) []alert.Condition {
	st := m.status(false)
	m.mu.Lock()
	applied := m.state.applied
	m.mu.Unlock()
	return alert.StateConditions(AlertState(st, func(region string) bool {
		if applied == nil {
			return false
		}
		for _, r := range applied.Regions {
			if r.Name == region {
				return !r.RateLimit.IsZero()
			}
		}
		return false
	}), rule)
}

// AlertState is what the state alert rules read from a /status document; rateLimited
// says whether a region has a ratelimit service that should be connected.
func AlertState(st Status, rateLimited func(region string) bool) alert.State {
	as := alert.State{ConfigHash: st.Config.Hash}
	if !st.Config.Valid {
		for _, e := range st.Config.Errors {
			as.ConfigErrors = append(as.ConfigErrors, e.Error())
		}
	}
	for _, r := range st.Regions {
		rs := alert.RegionState{Name: r.Name, RateLimit: rateLimited(r.Name)}
		for _, n := range r.Nodes {
			ns := alert.NodeState{ID: n.ID, Kind: alert.NodeKind(n.Subscribed), InSync: n.InSync}
			if n.LastNack != nil {
				ns.LastNack = n.LastNack.Error
			}
			rs.Nodes = append(rs.Nodes, ns)
		}
		as.Regions = append(as.Regions, rs)
	}
	return as
}

// ProbeSourceFunc adapts a function returning probe results to alert.ProbeSource. The
// prober's Result has alert.ProbeResult's fields in the same order, so each converts
// directly: alert.ProbeResult(r).
type ProbeSourceFunc func() []alert.ProbeResult

func (f ProbeSourceFunc) Results() []alert.ProbeResult { return f() }
