package alert

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
)

// Window is how far back the metric rules look.
const Window = 5 * time.Minute

// sample is one scrape of one region: counters keyed by a series name.
type sample struct {
	at  time.Time
	val map[string]float64
}

// ScrapeStatus is one endpoint's last scrape, shown in /status.
type ScrapeStatus struct {
	Region    string     `json:"region"`
	URL       string     `json:"url"`
	LastOK    *time.Time `json:"last_ok,omitempty"`
	LastError string     `json:"last_error,omitempty"`
}

// Metrics reads every region's Envoy and ratelimit Prometheus endpoints and keeps the
// last Window of counters, from which the quota, upstream_errors, retries_exhausted and
// overloaded rules take their increases.
type Metrics struct {
	client *http.Client
	// upstream maps an Envoy cluster name back to its upstream (translate.ClusterName).
	upstream func(cluster string) (string, bool)

	mu      sync.Mutex
	targets []model.ScrapeTarget
	history map[string][]sample // region/kind -> oldest first
	status  map[string]*ScrapeStatus
}

// NewMetrics returns a scraper; upstream resolves Envoy cluster names.
func NewMetrics(client *http.Client, upstream func(cluster string) (string, bool)) *Metrics {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	return &Metrics{client: client, upstream: upstream, history: map[string][]sample{}, status: map[string]*ScrapeStatus{}}
}

// SetTargets replaces the endpoints; history of regions kept is preserved.
func (s *Metrics) SetTargets(ts []model.ScrapeTarget) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets = ts
}

// Status lists the endpoints' last scrape results, sorted.
func (s *Metrics) Status() []ScrapeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []ScrapeStatus{}
	for _, st := range s.status {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Region+out[i].URL < out[j].Region+out[j].URL })
	return out
}

// Conditions scrapes every endpoint and evaluates the metric rules.
func (s *Metrics) Conditions(ctx context.Context, now time.Time, rule RuleFunc) []Condition {
	s.mu.Lock()
	targets := s.targets
	s.mu.Unlock()
	var out []Condition
	for _, t := range targets {
		if t.EnvoyAdmin != "" {
			if d, ok := s.scrape(ctx, now, t.Region, "envoy", t.EnvoyAdmin+"/stats/prometheus", envoySeries); ok {
				out = append(out, s.envoyConditions(t.Region, d, rule)...)
			}
		}
		if t.RatelimitMetrics != "" {
			if d, ok := s.scrape(ctx, now, t.Region, "ratelimit", t.RatelimitMetrics, ratelimitSeries); ok {
				out = append(out, quotaConditions(t.Region, d, rule)...)
			}
		}
	}
	return out
}

// scrape fetches one endpoint and returns each series' increase over the window (counter
// resets counted from zero). ok is false when the endpoint could not be read.
func (s *Metrics) scrape(ctx context.Context, now time.Time, region, kind, url string, pick func(map[string]*dto.MetricFamily) map[string]float64) (map[string]float64, bool) {
	key := region + "/" + kind
	s.mu.Lock()
	st := s.status[key]
	if st == nil {
		st = &ScrapeStatus{Region: region, URL: url}
		s.status[key] = st
	}
	s.mu.Unlock()
	fams, err := s.fetch(ctx, url)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		st.LastError = err.Error()
		return nil, false
	}
	t := now.UTC()
	st.LastOK, st.LastError = &t, ""
	cur := sample{at: now, val: pick(fams)}
	h := append(s.history[key], cur)
	// Keep one sample at or before the window start, so the increase covers the window.
	for len(h) > 2 && !h[1].at.After(now.Add(-Window)) {
		h = h[1:]
	}
	s.history[key] = h
	base := h[0]
	delta := map[string]float64{}
	for k, v := range cur.val {
		old, ok := base.val[k]
		switch {
		case len(h) == 1:
			// The first scrape has no baseline; counters since process start could be
			// days old, so nothing is attributed to this window yet.
		case !ok || v < old:
			delta[k] = v
		default:
			delta[k] = v - old
		}
	}
	return delta, true
}

func (s *Metrics) fetch(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(pmodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return fams, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetUntyped().GetValue()
}

// Envoy's counters per cluster: every attempt's response class, timeouts, connect
// failures, and the requests that ran out of retries.
func envoySeries(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	add := func(fam, series string, keep func(*dto.Metric) bool) {
		for _, m := range fams[fam].GetMetric() {
			if keep != nil && !keep(m) {
				continue
			}
			out[label(m, "envoy_cluster_name")+"\x00"+series] += value(m)
		}
	}
	add("envoy_cluster_upstream_rq_total", "total", nil)
	add("envoy_cluster_upstream_rq_xx", "5xx", func(m *dto.Metric) bool { return label(m, "envoy_response_code_class") == "5" })
	add("envoy_cluster_upstream_rq_timeout", "timeout", nil)
	add("envoy_cluster_upstream_cx_connect_fail", "connect_fail", nil)
	add("envoy_cluster_upstream_rq_retry_limit_exceeded", "retry_limit", nil)
	// Requests shed for load: by an upstream's circuit breaker (per cluster), and by the
	// region's admission ceiling out of all the requests its listener received (no cluster).
	add("envoy_cluster_upstream_rq_pending_overflow", "overflow", nil)
	add("envoy_http_local_rate_limit_rate_limited", "shed", func(m *dto.Metric) bool {
		return label(m, "envoy_local_http_ratelimit_prefix") == translate.OverloadStatPrefix
	})
	add("envoy_http_downstream_rq_total", "requests", func(m *dto.Metric) bool {
		return strings.HasPrefix(label(m, "envoy_http_conn_manager_prefix"), "ingress_")
	})
	return out
}

func (s *Metrics) envoyConditions(region string, d map[string]float64, rule RuleFunc) []Condition {
	clusters := map[string]bool{}
	for k := range d {
		c, _, _ := strings.Cut(k, "\x00")
		clusters[c] = true
	}
	out := overloadConditions(region, d, s.upstream, rule)
	for _, c := range slices.Sorted(maps.Keys(clusters)) {
		up, ok := s.upstream(c)
		if !ok {
			continue // the ext_authz, ratelimit and xds clusters are not upstreams
		}
		get := func(series string) float64 { return d[c+"\x00"+series] }
		labels := map[string]string{"region": region, "upstream": up}
		if r, ok := rule("upstream_errors"); ok {
			total := get("total") + get("connect_fail")
			failed := get("5xx") + get("timeout") + get("connect_fail")
			if total >= float64(r.MinRequests) && total > 0 {
				pct := min(100, 100*failed/total)
				if pct >= r.Percent {
					out = append(out, Condition{Rule: "upstream_errors", Key: region + "/" + up, Labels: labels,
						Summary: fmt.Sprintf("upstream %s in region %s: %.0f%% of %.0f attempts failed (5xx, timeout or connect failure) in the last %s", up, region, pct, total, Window)})
				}
			}
		}
		if _, ok := rule("retries_exhausted"); ok {
			if n := get("retry_limit"); n > 0 {
				out = append(out, Condition{Rule: "retries_exhausted", Key: region + "/" + up, Labels: labels,
					Summary: fmt.Sprintf("%.0f request(s) to upstream %s in region %s failed after all retries in the last %s", n, up, region, Window)})
			}
		}
	}
	return out
}

// overloadConditions fires the overloaded rule for a region whose Envoy shed at least
// percent of the requests it received in the window: refused at its admission ceiling, or
// at an upstream's circuit breaker.
func overloadConditions(region string, d map[string]float64, upstream func(string) (string, bool), rule RuleFunc) []Condition {
	r, ok := rule("overloaded")
	if !ok {
		return nil
	}
	total, ceiling, breakers := d["\x00requests"], d["\x00shed"], 0.0
	var full []string
	for k, v := range d {
		c, series, _ := strings.Cut(k, "\x00")
		if up, ok := upstream(c); ok && series == "overflow" && v > 0 {
			breakers += v
			full = append(full, fmt.Sprintf("%s %.0f", up, v))
		}
	}
	shed := ceiling + breakers
	if total < float64(r.MinRequests) || total == 0 || 100*shed/total < r.Percent {
		return nil
	}
	sort.Strings(full)
	var detail []string
	if ceiling > 0 {
		detail = append(detail, fmt.Sprintf("%.0f at the admission ceiling (regions.%s.overload)", ceiling, region))
	}
	if len(full) > 0 {
		detail = append(detail, fmt.Sprintf("%.0f at upstream circuit breakers (%s)", breakers, strings.Join(full, ", ")))
	}
	return []Condition{{Rule: "overloaded", Key: region, Labels: map[string]string{"region": region},
		Summary: fmt.Sprintf("region %s shed %.0f%% of %.0f requests in the last %s with 503 overloaded: %s", region, min(100, 100*shed/total), total, Window, strings.Join(detail, ", "))}}
}

// envoyproxy/ratelimit with USE_PROMETHEUS maps its stats with its default mapper to
// ratelimit_service_rate_limit_{near,over}_limit{domain,key1[,key2]}: near_limit counts
// hits past NEAR_LIMIT_RATIO (0.8 by default) of a limit, over_limit those refused.
func ratelimitSeries(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, fam := range []string{"ratelimit_service_rate_limit_near_limit", "ratelimit_service_rate_limit_over_limit"} {
		for _, m := range fams[fam].GetMetric() {
			key := label(m, "key1")
			if k2 := label(m, "key2"); k2 != "" {
				key += "." + k2
			}
			out[key] += value(m)
		}
	}
	return out
}

func quotaConditions(region string, d map[string]float64, rule RuleFunc) []Condition {
	r, ok := rule("quota")
	if !ok {
		return nil
	}
	keys := make([]string, 0, len(d))
	for k, v := range d {
		if v > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []Condition
	for _, k := range keys {
		out = append(out, Condition{Rule: "quota", Key: region + "/" + k,
			Labels: map[string]string{"region": region, "limit": k},
			Summary: fmt.Sprintf("quota %s in region %s: %.0f request(s) in the last %s found the window at least %.0f%% used",
				k, region, d[k], Window, r.Percent)})
	}
	return out
}
