package usage

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// maxModelLabels bounds the model label's values: the requested model comes from the
// caller's request body, and each new name would otherwise be a new series forever.
const maxModelLabels = 256

type metrics struct {
	modelsMu   sync.Mutex
	models     map[string]struct{}
	requests   *prometheus.CounterVec
	tokens     *prometheus.CounterVec
	cost       *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	ttfb       *prometheus.HistogramVec
	noPrice    *prometheus.CounterVec
	storeUp    prometheus.Gauge
	alarm      prometheus.Gauge
	written    prometheus.Counter
	spooled    prometheus.Counter
	replayed   prometheus.Counter
	dropped    prometheus.Counter
	duplicates prometheus.Counter
}

var labels = []string{"region", "caller", "upstream", "model"}

func newMetrics(reg prometheus.Registerer, spool *Spool) *metrics {
	buckets := []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320}
	m := &metrics{
		models: map[string]struct{}{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmedge_usage_requests_total",
			Help: "Requests recorded in the usage ledger, by status class (2xx, 4xx, 5xx, other)."}, append(labels, "status_class")),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmedge_usage_tokens_total",
			Help: "Tokens the providers reported, by kind (input, output, cached, reasoning)."}, append(labels, "kind")),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmedge_usage_cost_total",
			Help: "Cost of the recorded requests from the price table, by currency."}, append(labels, "currency")),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llmedge_usage_request_duration_seconds",
			Help: "Request duration as Envoy logged it.", Buckets: buckets}, labels),
		ttfb: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llmedge_usage_time_to_first_byte_seconds",
			Help: "Time to the first response byte sent to the caller (time to first token for streams).", Buckets: buckets}, labels),
		noPrice: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmedge_usage_price_missing_total",
			Help: "Records whose upstream and model have no price in usage.prices (cost left empty)."}, []string{"upstream", "model"}),
		storeUp: gauge("llmedge_usage_store_up",
			"1 when the last usage store operation succeeded."),
		alarm: gauge("llmedge_usage_spool_alarm",
			"1 when the usage spool holds 80% or more of its bound: records will soon be dropped."),
		written: counter("llmedge_usage_records_written_total",
			"Records inserted into the store directly."),
		spooled: counter("llmedge_usage_records_spooled_total",
			"Records written to the disk spool because the store was slow or down."),
		replayed: counter("llmedge_usage_records_replayed_total",
			"Spooled records written to the store after it returned."),
		dropped: counter("llmedge_usage_records_dropped_total",
			"Records lost because the spool was full or unreadable."),
		duplicates: counter("llmedge_usage_duplicates_total",
			"Records received again with a request id seen recently (ignored)."),
	}
	spoolBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmedge_usage_spool_bytes",
		Help: "Bytes in the usage spool waiting for the store."}, func() float64 { return float64(spool.Bytes()) })
	spoolMax := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmedge_usage_spool_max_bytes",
		Help: "The usage spool's bound (usage.spool.max_bytes)."}, func() float64 { return float64(spool.MaxBytes()) })
	reg.MustRegister(m.requests, m.tokens, m.cost, m.duration, m.ttfb, m.noPrice, m.storeUp, m.alarm,
		m.written, m.spooled, m.replayed, m.dropped, m.duplicates, spoolBytes, spoolMax)
	return m
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

// modelLabel is the model, or "other" once maxModelLabels names have been seen. Priced
// models always keep their name: the operator listed them.
func (m *metrics) modelLabel(r Record) string {
	name := r.Model()
	if r.Cost != nil || name == "" {
		return name
	}
	m.modelsMu.Lock()
	defer m.modelsMu.Unlock()
	if _, ok := m.models[name]; ok {
		return name
	}
	if len(m.models) >= maxModelLabels {
		return "other"
	}
	m.models[name] = struct{}{}
	return name
}

func (m *metrics) observe(r Record) {
	model := m.modelLabel(r)
	l := []string{r.Region, r.Caller, r.Upstream, model}
	m.requests.WithLabelValues(append(l, statusClass(r.Status))...).Inc()
	for _, t := range [...]struct {
		kind string
		n    int64
	}{{"input", r.InputTokens}, {"output", r.OutputTokens}, {"cached", r.CachedTokens}, {"reasoning", r.ReasoningTok}} {
		if t.n > 0 {
			m.tokens.WithLabelValues(append(l, t.kind)...).Add(float64(t.n))
		}
	}
	if r.Cost != nil {
		m.cost.WithLabelValues(append(l, r.Currency)...).Add(*r.Cost)
	}
	if r.PriceMissing {
		m.noPrice.WithLabelValues(r.Upstream, model).Inc()
	}
	m.duration.WithLabelValues(l...).Observe(r.Duration.Seconds())
	if r.TTFB > 0 {
		m.ttfb.WithLabelValues(l...).Observe(r.TTFB.Seconds())
	}
}

func statusClass(code int) string {
	if code >= 100 && code < 600 {
		return strconv.Itoa(code/100) + "xx"
	}
	return "other"
}
