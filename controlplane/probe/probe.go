// Package probe runs the control plane's synthetic probes: at every interval, for each
// region and each upstream the region serves, one minimal real request through that
// region's edge as the probe caller (so ext_authz, quotas and the usage ledger see it like
// any other call), plus what the edge cannot tell the control plane: the upstream
// certificate's expiry (a direct TLS handshake, no request) and the DNS answer for its
// host. The targets come from config (model.Probes); results feed /status, metrics, the
// status page and the alert rules through Results.
package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Result is the latest probe of one upstream through one region's edge.
type Result struct {
	Region, Upstream string
	At               time.Time // when the probe started
	// OK is true when the edge answered 2xx; Status is the HTTP status (0 when none came).
	OK      bool
	Status  int
	Latency time.Duration // until the whole answer was read
	TTFB    time.Duration // until the first byte of the answer
	// CertNotAfter is the upstream certificate's expiry, read by a direct handshake; zero
	// for plain-http upstreams or when the handshake failed.
	CertNotAfter time.Time
	// DNS is the answer for the upstream's connect host, sorted; nil for IP literals.
	DNS []string
	// Error says what failed: the call, then any certificate or DNS problem; "" when
	// nothing did. It never carries the probe token.
	Error string
}

// resultJSON is Result as /status carries it: snake-case names, durations in
// milliseconds.
type resultJSON struct {
	Region       string     `json:"region"`
	Upstream     string     `json:"upstream"`
	At           time.Time  `json:"at"`
	OK           bool       `json:"ok"`
	Status       int        `json:"status"`
	LatencyMS    float64    `json:"latency_ms"`
	TTFBMS       float64    `json:"ttfb_ms"`
	CertNotAfter *time.Time `json:"cert_not_after,omitempty"`
	DNS          []string   `json:"dns"`
	Error        string     `json:"error,omitempty"`
}

// MarshalJSON writes the /status form.
func (r Result) MarshalJSON() ([]byte, error) {
	var cert *time.Time
	if !r.CertNotAfter.IsZero() {
		cert = &r.CertNotAfter
	}
	dns := r.DNS
	if dns == nil {
		dns = []string{}
	}
	return json.Marshal(resultJSON{r.Region, r.Upstream, r.At, r.OK, r.Status, ms(r.Latency), ms(r.TTFB), cert, dns, r.Error})
}

// UnmarshalJSON reads the /status form (for clients such as `llmedge` tools and tests).
func (r *Result) UnmarshalJSON(b []byte) error {
	var j resultJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Result{
		Region: j.Region, Upstream: j.Upstream, At: j.At, OK: j.OK, Status: j.Status,
		Latency: fromMS(j.LatencyMS), TTFB: fromMS(j.TTFBMS),
		DNS: j.DNS, Error: j.Error,
	}
	if j.CertNotAfter != nil {
		r.CertNotAfter = *j.CertNotAfter
	}
	if len(r.DNS) == 0 {
		r.DNS = nil
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// fromMS is ms's inverse: the JSON holds whole microseconds, which a float64 of
// milliseconds carries only approximately (1.005 is 1.00499999…), so it rounds to the
// nearest microsecond instead of truncating one away.
func fromMS(v float64) time.Duration {
	return time.Duration(math.Round(v*1000)) * time.Microsecond
}

// Options configure a Prober; every field is optional.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Resolver looks up upstream hosts; default net.DefaultResolver.
	Resolver *net.Resolver
}

// Prober probes the targets of the serving config. Update hands it a new config; Run
// probes until its context ends.
type Prober struct {
	log    *slog.Logger
	res    *net.Resolver
	client *http.Client
	m      *metrics
	kick   chan struct{}

	mu        sync.Mutex
	cfg       *model.Probes
	upstreams map[string]model.Upstream
	results   map[key]Result
}

type key struct{ region, upstream string }

// New builds a Prober with no targets.
func New(o Options) *Prober {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	return &Prober{
		log: o.Logger, res: o.Resolver, client: newClient(), m: newMetrics(o.Registerer),
		kick: make(chan struct{}, 1), results: map[key]Result{},
	}
}

// Update takes the serving config's probes (nil: none). Results of targets that are gone
// are dropped; changed targets are probed at once rather than at the next interval.
func (p *Prober) Update(cfg *model.Config) {
	p.mu.Lock()
	old := p.cfg
	p.cfg = cfg.Probes
	p.upstreams = map[string]model.Upstream{}
	for _, u := range cfg.Upstreams {
		p.upstreams[u.Name] = u
	}
	keep := map[key]bool{}
	if p.cfg != nil {
		for _, t := range p.cfg.Targets {
			keep[key{t.Region, t.Upstream}] = true
		}
	}
	for k := range p.results {
		if !keep[k] {
			delete(p.results, k)
			p.m.forget(k)
		}
	}
	for k := range keep {
		if r, ok := p.results[k]; ok {
			p.m.record(r) // an expiry forgotten with another region's target comes back
		}
	}
	changed := !probesEqual(old, p.cfg)
	p.mu.Unlock()
	if changed {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

func probesEqual(a, b *model.Probes) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Caller == b.Caller && a.TokenFile == b.TokenFile && a.Interval == b.Interval &&
		a.Timeout == b.Timeout && slices.Equal(a.Targets, b.Targets)
}

// Results returns the latest result per region and upstream, sorted by region, upstream.
func (p *Prober) Results() []Result {
	p.mu.Lock()
	out := make([]Result, 0, len(p.results))
	for _, r := range p.results {
		r.DNS = slices.Clone(r.DNS)
		out = append(out, r)
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Result) int {
		if c := strings.Compare(a.Region, b.Region); c != 0 {
			return c
		}
		return strings.Compare(a.Upstream, b.Upstream)
	})
	return out
}

// Config is the probes section in force (nil: none).
func (p *Prober) Config() *model.Probes {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Run probes every interval, and at once after an Update that changed the targets, until
// ctx ends. A round in progress is waited for, so results are never half-written.
func (p *Prober) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-timer.C:
		}
		p.Round(ctx)
		if cfg := p.Config(); cfg != nil {
			timer.Reset(cfg.Interval)
		}
	}
}

// Round probes every target once, concurrently, and records the results.
func (p *Prober) Round(ctx context.Context) {
	p.mu.Lock()
	cfg, ups := p.cfg, p.upstreams
	p.mu.Unlock()
	if cfg == nil || len(cfg.Targets) == 0 {
		return
	}
	tok, tokErr := readToken(cfg.TokenFile)

	// The certificate and the DNS answer belong to the upstream, not to the region: read
	// them once per round.
	facts := map[string]*upstreamFacts{}
	for _, t := range cfg.Targets {
		if _, ok := facts[t.Upstream]; !ok {
			facts[t.Upstream] = &upstreamFacts{}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for name, f := range facts {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			*f = p.inspect(ctx, ups[name], cfg.Timeout)
		})
	}
	results := make([]Result, len(cfg.Targets))
	for i, t := range cfg.Targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if tokErr != nil {
				results[i] = Result{Region: t.Region, Upstream: t.Upstream, At: time.Now().UTC(), Error: tokErr.Error()}
				return
			}
			results[i] = p.call(ctx, t, tok, cfg.Timeout)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // shutting down: a cancelled probe says nothing about the upstream
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !probesEqual(cfg, p.cfg) {
		return // the config changed meanwhile; the next round probes the new targets
	}
	for _, r := range results {
		f := facts[r.Upstream]
		r.CertNotAfter, r.DNS = f.notAfter, f.dns
		var notes []string
		if r.Error != "" {
			notes = append(notes, r.Error)
		}
		notes = append(notes, f.problems...)
		r.Error = strings.Join(notes, "; ")
		p.results[key{r.Region, r.Upstream}] = r
		p.m.record(r)
		if !r.OK {
			p.log.Warn("probe failed", "region", r.Region, "upstream", r.Upstream, "status", r.Status, "err", r.Error)
		} else {
			p.log.Debug("probe ok", "region", r.Region, "upstream", r.Upstream, "status", r.Status, "latency", r.Latency.String())
		}
	}
}

// readToken reads the probe caller's plain token; the error names the file only.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("probes.token_file %s: %v", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("probes.token_file %s: must hold one token", path)
	}
	return tok, nil
}

// call makes one probe request through the edge.
func (p *Prober) call(ctx context.Context, t model.ProbeTarget, tok string, timeout time.Duration) (r Result) {
	r = Result{Region: t.Region, Upstream: t.Upstream, At: time.Now().UTC()}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var ttfb atomic.Int64 // set on the transport's goroutine
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotFirstResponseByte: func() { ttfb.Store(int64(time.Since(start))) },
	})
	defer func() { r.TTFB = time.Duration(ttfb.Load()) }()
	var body io.Reader
	if t.Body != "" {
		body = strings.NewReader(t.Body)
	}
	req, err := http.NewRequestWithContext(ctx, t.Method, t.Edge+t.Path, body)
	if err != nil {
		r.Error = fmt.Sprintf("build request: %v", err)
		return r
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("User-Agent", "llmedge-probe")
	if t.Body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.API == model.APIAnthropic {
		req.Header.Set("Anthropic-Version", "2023-06-01")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		r.Latency = time.Since(start)
		r.Error = callError(ctx, err, timeout, tok)
		return r
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	r.Latency = time.Since(start)
	r.Status = resp.StatusCode
	switch {
	case resp.StatusCode/100 != 2:
		// The answer's body is not quoted: an upstream could echo what it was sent.
		r.Error = fmt.Sprintf("%s %s answered %s", t.Method, t.Path, resp.Status)
	case err != nil:
		r.Error = callError(ctx, err, timeout, tok)
	default:
		r.OK = true
	}
	return r
}

func callError(ctx context.Context, err error, timeout time.Duration, tok string) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("no complete answer within the %s timeout", timeout)
	}
	msg := err.Error()
	if tok != "" {
		msg = strings.ReplaceAll(msg, tok, "[redacted]")
	}
	return msg
}

// newClient never uses a proxy from the environment (the probe must reach the edge
// itself) and never reuses connections, so every probe includes the connect as a
// caller's would.
func newClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// upstreamFacts is what the control plane reads about an upstream directly.
type upstreamFacts struct {
	notAfter time.Time
	dns      []string
	problems []string
}

// inspect resolves the upstream's connect host and, for https, reads its certificate's
// expiry with a bare handshake: the SNI and CA bundle are the routes YAML's, no request is
// sent and no key is used.
func (p *Prober) inspect(ctx context.Context, u model.Upstream, timeout time.Duration) upstreamFacts {
	var f upstreamFacts
	if u.Name == "" {
		return f
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if net.ParseIP(u.ConnectHost) == nil {
		addrs, err := p.res.LookupHost(ctx, u.ConnectHost)
		if err != nil {
			f.problems = append(f.problems, fmt.Sprintf("dns %s: %v", u.ConnectHost, err))
		} else {
			slices.Sort(addrs)
			f.dns = slices.Compact(addrs)
		}
	}
	if u.Scheme != "https" || u.TLS == nil {
		return f
	}
	na, err := certNotAfter(ctx, u)
	if err != nil {
		f.problems = append(f.problems, "certificate: "+err.Error())
	}
	f.notAfter = na
	return f
}

// certNotAfter returns the expiry of the upstream's leaf certificate. An expired or
// untrusted certificate still reports its expiry, with the verification error.
func certNotAfter(ctx context.Context, u model.Upstream) (time.Time, error) {
	addr := net.JoinHostPort(u.ConnectHost, fmt.Sprint(u.ConnectPort))
	d := tls.Dialer{Config: &tls.Config{
		ServerName: u.TLS.SNI,
		// Verified below, after the expiry is read, so that a bad certificate still says
		// when it expires.
		InsecureSkipVerify: true, //nolint:gosec
		MinVersion:         tls.VersionTLS12,
	}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return time.Time{}, fmt.Errorf("%s sent no certificate", addr)
	}
	leaf := certs[0]
	if !u.TLS.Verify {
		return leaf.NotAfter, nil
	}
	roots, err := loadCAs(u.TLS.CAFile)
	if err != nil {
		return leaf.NotAfter, err
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: u.TLS.SNI, Roots: roots, Intermediates: inter}); err != nil {
		return leaf.NotAfter, fmt.Errorf("%s: %v", addr, err)
	}
	return leaf.NotAfter, nil
}

func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", path)
	}
	return pool, nil
}

type metrics struct {
	success *prometheus.GaugeVec
	latency *prometheus.GaugeVec
	ttfb    *prometheus.GaugeVec
	expiry  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmedge_probe_success", Help: "1 when the last synthetic probe of the upstream through the region's edge got a 2xx answer, else 0.",
		}, []string{"region", "upstream"}),
		latency: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmedge_probe_latency_seconds", Help: "How long the last synthetic probe took, until its whole answer was read.",
		}, []string{"region", "upstream"}),
		ttfb: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmedge_probe_ttfb_seconds", Help: "Time to the first byte of the last synthetic probe's answer.",
		}, []string{"region", "upstream"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmedge_upstream_cert_expiry_timestamp_seconds", Help: "When the upstream's TLS certificate expires (Unix time), as read by the probes' direct handshake.",
		}, []string{"upstream"}),
	}
	if reg != nil {
		reg.MustRegister(m.success, m.latency, m.ttfb, m.expiry)
	}
	return m
}

func (m *metrics) record(r Result) {
	ok := 0.0
	if r.OK {
		ok = 1
	}
	m.success.WithLabelValues(r.Region, r.Upstream).Set(ok)
	m.latency.WithLabelValues(r.Region, r.Upstream).Set(r.Latency.Seconds())
	m.ttfb.WithLabelValues(r.Region, r.Upstream).Set(r.TTFB.Seconds())
	if !r.CertNotAfter.IsZero() {
		m.expiry.WithLabelValues(r.Upstream).Set(float64(r.CertNotAfter.Unix()))
	} else {
		m.expiry.DeleteLabelValues(r.Upstream)
	}
}

func (m *metrics) forget(k key) {
	m.success.DeleteLabelValues(k.region, k.upstream)
	m.latency.DeleteLabelValues(k.region, k.upstream)
	m.ttfb.DeleteLabelValues(k.region, k.upstream)
	m.expiry.DeleteLabelValues(k.upstream)
}
