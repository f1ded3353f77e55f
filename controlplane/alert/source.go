package alert

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Source finds the conditions that hold now. rule returns an enabled rule's settings; a
// source skips the rules that are off.
type Source interface {
	Conditions(ctx context.Context, now time.Time, rule RuleFunc) []Condition
}

// RuleFunc looks up an enabled rule (Engine.Rule).
type RuleFunc = func(name string) (model.AlertRule, bool)

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, now time.Time, rule RuleFunc) []Condition

func (f SourceFunc) Conditions(ctx context.Context, now time.Time, rule RuleFunc) []Condition {
	return f(ctx, now, rule)
}

// Node kinds, told apart by what a node subscribes to over ADS.
const (
	KindEnvoy     = "envoy"
	KindExtAuthz  = "extauthz"
	KindRatelimit = "ratelimit"
)

// State is the control plane's own view the state rules read: the last config check and
// every region's connected xDS nodes.
type State struct {
	// ConfigErrors are the problems of the last rejected routes YAML edit; ConfigHash is
	// that edit's content hash. Empty when the last edit was good.
	ConfigErrors []string
	ConfigHash   string
	Regions      []RegionState
}

// RegionState is one region of the serving config.
type RegionState struct {
	Name string
	// RateLimit is true when the region has a ratelimit service to be connected.
	RateLimit bool
	Nodes     []NodeState
}

// NodeState is one connected xDS node.
type NodeState struct {
	ID       string
	Kind     string
	InSync   bool
	LastNack string // the last NACK's error, if any
}

// StateConditions evaluates config_rejected, out_of_sync and service_down over st.
func StateConditions(st State, rule RuleFunc) []Condition {
	var out []Condition
	if _, ok := rule("config_rejected"); ok && len(st.ConfigErrors) > 0 {
		n := len(st.ConfigErrors)
		first := st.ConfigErrors[0]
		summary := fmt.Sprintf("routes YAML edit rejected (%d problem(s)); the last good config keeps serving. First: %s", n, first)
		out = append(out, Condition{Rule: "config_rejected", Key: "routes", Summary: summary,
			Labels: map[string]string{"errors": strconv.Itoa(n)}})
	}
	for _, r := range st.Regions {
		if _, ok := rule("out_of_sync"); ok {
			for _, n := range r.Nodes {
				if n.InSync {
					continue
				}
				s := fmt.Sprintf("%s %s in region %s has not applied the served configuration", n.Kind, n.ID, r.Name)
				if n.LastNack != "" {
					s += "; it rejected it: " + n.LastNack
				}
				out = append(out, Condition{Rule: "out_of_sync", Key: r.Name + "/" + n.ID, Summary: s,
					Labels: map[string]string{"region": r.Name, "node": n.ID, "kind": n.Kind}})
			}
		}
		if _, ok := rule("service_down"); ok {
			count := map[string]int{}
			for _, n := range r.Nodes {
				count[n.Kind]++
			}
			kinds := []string{KindEnvoy, KindExtAuthz}
			if r.RateLimit {
				kinds = append(kinds, KindRatelimit)
			}
			for _, k := range kinds {
				if count[k] == 0 {
					out = append(out, Condition{Rule: "service_down", Key: r.Name + "/" + k,
						Summary: fmt.Sprintf("no %s of region %s is connected to the control plane", k, r.Name),
						Labels:  map[string]string{"region": r.Name, "kind": k}})
				}
			}
		}
	}
	return out
}

// ProbeResult mirrors one synthetic probe's result (the probe package's Result), so this
// package does not depend on the prober; the control plane adapts one to the other.
type ProbeResult struct {
	Region, Upstream string
	At               time.Time
	OK               bool
	Status           int
	Latency, TTFB    time.Duration
	CertNotAfter     time.Time
	DNS              []string
	Error            string
}

// ProbeSource is what the alerts read from the prober: its latest results.
type ProbeSource interface {
	Results() []ProbeResult
}

// ProbeConditions evaluates probe_failed and cert_expiry over the latest result of every
// region and upstream.
func ProbeConditions(results []ProbeResult, now time.Time, rule RuleFunc) []Condition {
	latest := map[string]ProbeResult{}
	for _, r := range results {
		k := r.Region + "/" + r.Upstream
		if prev, ok := latest[k]; !ok || r.At.After(prev.At) {
			latest[k] = r
		}
	}
	var out []Condition
	for _, k := range slices.Sorted(maps.Keys(latest)) {
		r := latest[k]
		labels := map[string]string{"region": r.Region, "upstream": r.Upstream}
		if _, ok := rule("probe_failed"); ok && !r.OK {
			s := fmt.Sprintf("probe of upstream %s through region %s failed", r.Upstream, r.Region)
			if r.Status != 0 {
				s += fmt.Sprintf(": HTTP %d", r.Status)
			}
			if r.Error != "" {
				s += ": " + r.Error
			}
			out = append(out, Condition{Rule: "probe_failed", Key: k, Summary: s, Labels: labels})
		}
		if cr, ok := rule("cert_expiry"); ok && !r.CertNotAfter.IsZero() {
			left := r.CertNotAfter.Sub(now)
			if left < time.Duration(cr.Days)*24*time.Hour {
				out = append(out, Condition{Rule: "cert_expiry", Key: k,
					Summary: fmt.Sprintf("the certificate of upstream %s (seen from region %s) expires %s, in %.1f days",
						r.Upstream, r.Region, r.CertNotAfter.UTC().Format(time.RFC3339), left.Hours()/24),
					Labels: labels})
			}
		}
	}
	return out
}

// NodeKind tells a node's kind from the short type names it subscribes to.
func NodeKind(subscribed []string) string {
	for _, t := range subscribed {
		switch t {
		case "authz_policy":
			return KindExtAuthz
		case "ratelimit_config":
			return KindRatelimit
		}
	}
	return KindEnvoy
}
