// Package controlplane is the llmedge control plane program: it loads the routes YAML,
// translates it for every region, serves the result over ADS, watches the file for edits and
// exposes status, health and metrics over HTTP. Main is the whole program, so tests run the
// real thing in-process; cmd/llmedge only parses flags.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/probe"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/controlplane/watch"
	"github.com/llmedge/llmedge/controlplane/xds"
	"github.com/llmedge/llmedge/internal/statefile"
	"github.com/llmedge/llmedge/internal/transport"
)

// Options configure the control plane.
type Options struct {
	// Provider is where the routes YAML comes from. When nil, ConfigPath (a file or a
	// directory) is read with config.NewProvider.
	Provider   config.Provider
	ConfigPath string
	// XDSAddress is the gRPC ADS listen address, default 127.0.0.1:18000: one or more
	// comma-separated unix:/path or host:port. The stream carries each region's caller
	// policy, so plain TCP is refused on anything but loopback; XDSTLS makes TCP
	// addresses mutual TLS (unix sockets are guarded by their directory).
	XDSAddress string
	XDSTLS     transport.Files
	// XDSAllowCertsWithoutRegion admits mutual-TLS clients whose certificate names no
	// region (see transport.Identity), trusting their node's claim: a rollout aid only.
	// By default such a client is refused, and a certificate naming a region is always
	// held to it.
	XDSAllowCertsWithoutRegion bool
	HTTPAddress                string // status/health/metrics listen address, default 127.0.0.1:18080
	Watch                      watch.Options
	Limits                     config.Limits
	// Settle is how long the routes YAML must stay unchanged before a destructive edit
	// (see config.Removal) is applied; ordinary edits apply at once. Default DefaultSettle.
	Settle time.Duration
	// StateDir, when set, keeps the last applied routes YAML (one file, mode 0600, in a
	// directory created 0700), served at start-up when the routes YAML is missing or invalid
	// until a valid edit replaces it, and holds the usage ledger (SQLite file, spool) unless
	// the routes YAML's usage section names absolute paths. Empty keeps nothing and turns
	// the ledger off.
	StateDir string
	Logger   *slog.Logger
	// Probes are the synthetic probes' latest results for the probe_failed and
	// cert_expiry alert rules; nil evaluates neither.
	Probes alert.ProbeSource
	// AlertInterval is how often alert rules are evaluated (default alert.DefaultInterval);
	// negative leaves evaluation to AlertStep. AlertHTTPClient and AlertWait replace the
	// webhook/scrape client and the retry backoff's sleep (tests).
	AlertInterval   time.Duration
	AlertHTTPClient *http.Client
	AlertWait       func(ctx context.Context, d time.Duration) error
}

// DefaultSettle covers a generator or a copy over a network file system that writes the
// routes YAML in more than one step, and is short enough for a deliberate removal.
const DefaultSettle = 5 * time.Second

// Main is one running control plane.
type Main struct {
	opts    Options
	src     config.Provider
	log     *slog.Logger
	reg     *prometheus.Registry
	xds     *xds.Server
	metrics *reloadMetrics
	prober  *probe.Prober
	// translator keeps each reload's Envoy routes for the next, which re-translates only
	// the routes an edit changed.
	translator *translate.Cache

	xdsAddrs []transport.Address
	xdsLns   []net.Listener
	httpLn   net.Listener
	ready    chan struct{}
	// ledger and its settings are set once, before serving; nil when StateDir is empty.
	ledger      *usage.Ledger
	ledgerUsage model.Usage
	usageHTTP   http.Handler
	// alerts evaluates the serving config's alerts section; set once, before serving.
	alerts *alert.Alerter

	mu    sync.Mutex
	state state
}

// state is what the last load attempts left behind.
type state struct {
	applied     *model.Config // last good config, being served
	appliedHash string
	appliedAt   time.Time
	files       []string
	checkedAt   time.Time
	checkedHash string        // content hash of the files the last attempt read
	errors      config.Errors // of the last attempt; nil when it was good
	// reloadingSince is when the reload now running started; zero when none runs.
	reloadingSince time.Time
	// pending is a destructive edit waiting for the file to stay unchanged.
	pending *pendingEdit
	// source is where the serving config came from: SourceRoutes or SourceSaved; savedAt
	// is when a served saved copy was written.
	source  string
	savedAt time.Time
	// savedHash is the hash of the copy in the state dir; saveError the last failure to
	// write it.
	savedHash string
	saveError string
}

// pendingEdit is a valid, translated, destructive edit held back for the settle period.
type pendingEdit struct {
	hash    string
	files   []string
	since   time.Time
	removal config.Removal
	cfg     *model.Config
	all     map[string]*translate.Resources
	snap    *config.Snapshot
}

// New validates the options; Run starts everything.
func New(o Options) (*Main, error) {
	if o.Provider == nil && o.ConfigPath == "" {
		return nil, errors.New("controlplane: a routes YAML path is required (--config)")
	}
	if o.XDSAddress == "" {
		o.XDSAddress = "127.0.0.1:18000"
	}
	if o.HTTPAddress == "" {
		o.HTTPAddress = "127.0.0.1:18080"
	}
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	addrs, err := transport.ParseListen(o.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("controlplane: --xds-listen %q: %w", o.XDSAddress, err)
	}
	if o.StateDir != "" {
		if err := statefile.Dir(o.StateDir); err != nil {
			return nil, fmt.Errorf("controlplane: --state-dir: %w", err)
		}
	}
	src := o.Provider
	if src == nil {
		src = config.NewProvider(o.ConfigPath, o.Limits, o.Watch, o.Logger)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Main{opts: o, src: src, log: o.Logger, reg: reg, xdsAddrs: addrs, ready: make(chan struct{}), translator: translate.NewCache()}
	m.metrics = newReloadMetrics(reg, m.configSource)
	m.prober = probe.New(probe.Options{Logger: o.Logger.With("component", "probe"), Registerer: reg})
	return m, nil
}

// Ready is closed once both listeners are bound.
func (m *Main) Ready() <-chan struct{} { return m.ready }

// XDSAddr and HTTPAddr are the bound addresses (useful with port 0); valid after Ready.
// XDSAddr is the first xDS address, in internal/transport's syntax.
func (m *Main) XDSAddr() string { return m.XDSAddrs()[0] }

// XDSAddrs are all bound xDS addresses.
func (m *Main) XDSAddrs() []string {
	out := make([]string, len(m.xdsLns))
	for i, ln := range m.xdsLns {
		if m.xdsAddrs[i].IsUnix() {
			out[i] = m.xdsAddrs[i].String()
		} else {
			out[i] = ln.Addr().String()
		}
	}
	return out
}

func (m *Main) HTTPAddr() string { return m.httpLn.Addr().String() }

// Run serves until ctx ends, then stops gracefully. It returns promptly even in the middle
// of a long reload: reloads run beside the loop and are abandoned, not awaited.
func (m *Main) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var xdsOpts []xds.Option
	if m.opts.XDSAllowCertsWithoutRegion {
		xdsOpts = append(xdsOpts, xds.AllowCertificatesWithoutRegion())
		m.log.Warn("xds clients whose certificate names no region are trusted with the region their node claims (--xds-allow-certs-without-region); issue region certificates and drop the flag")
	}
	m.xds = xds.New(ctx, m.log, m.reg, xdsOpts...)
	m.startAlerts(ctx)

	closeAll := func() {
		for _, ln := range m.xdsLns {
			ln.Close()
		}
	}
	for _, a := range m.xdsAddrs {
		ln, err := transport.Listen(a, m.opts.XDSTLS, m.log.With("component", "xds"))
		if err != nil {
			closeAll()
			return fmt.Errorf("listen xds: %w", err)
		}
		m.xdsLns = append(m.xdsLns, ln)
	}
	var err error
	if m.httpLn, err = net.Listen("tcp", m.opts.HTTPAddress); err != nil {
		closeAll()
		return fmt.Errorf("listen http %s: %w", m.opts.HTTPAddress, err)
	}
	g := grpc.NewServer(append(xds.ServerOptions(),
		// The listeners do the TLS; these hand the client certificate to the xDS server,
		// which holds each client to the region it certifies.
		grpc.Creds(transport.ServerCredentials()),
		grpc.MaxConcurrentStreams(100000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)...)
	m.xds.Register(g)
	hs := &http.Server{Handler: m.handler(), ReadHeaderTimeout: 5 * time.Second}

	r := &reloader{m: m, ctx: ctx, results: make(chan reloadResult)}
	// Load before serving, so the first Envoy to connect gets config at once; but a stop
	// request during that first load is honoured at once too.
	r.start()
	select {
	case res := <-r.results:
		r.finish(res)
		m.mu.Lock()
		none := m.state.applied == nil
		m.mu.Unlock()
		if none && m.opts.StateDir != "" {
			m.serveSaved(ctx)
		}
	case <-ctx.Done():
		r.abandon()
		for _, ln := range m.xdsLns {
			ln.Close()
		}
		m.httpLn.Close()
		m.log.Info("control plane stopped during its first load")
		return nil
	}

	ledgerDone := make(chan error, 1)
	ledgerCtx, stopLedger := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLedger()
	if err := m.startLedger(ledgerCtx, g, ledgerDone); err != nil {
		for _, ln := range m.xdsLns {
			ln.Close()
		}
		m.httpLn.Close()
		return err
	}
	errc := make(chan error, 2+len(m.xdsLns))
	for _, ln := range m.xdsLns {
		go func() { errc <- g.Serve(ln) }()
	}
	go func() {
		if err := hs.Serve(m.httpLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	changed := make(chan struct{}, 1)
	go func() { errc <- m.src.Watch(ctx, changed) }()
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		_ = m.prober.Run(ctx)
	}()
	m.log.Info("control plane serving", "xds", m.XDSAddrs(), "http", m.HTTPAddr(), "config", m.src.String(), "settle", m.opts.Settle.String())
	close(m.ready)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-changed:
			r.start() // abandons a reload still running: its files are out of date
		case <-r.settleC:
			r.settleC = nil
			r.start()
		case res := <-r.results:
			r.finish(res)
		case err := <-errc:
			if err != nil {
				runErr = err
				break loop
			}
		}
	}
	r.abandon()
	cancel()
	<-probeDone // a probe in flight is cancelled with ctx
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = hs.Shutdown(shutdownCtx)
	// GracefulStop would wait for every Envoy to hang up its never-ending ADS stream.
	g.Stop()
	stopLedger()
	if m.ledger != nil {
		if err := <-ledgerDone; err != nil {
			m.log.Error("usage ledger stopped with an error", "err", err.Error())
		}
	}
	m.log.Info("control plane stopped")
	return runErr
}

// reloader runs one reload at a time beside Run's loop. Only the loop touches it.
type reloader struct {
	m       *Main
	ctx     context.Context
	results chan reloadResult
	gen     int
	cancel  context.CancelFunc
	settle  *time.Timer
	settleC <-chan time.Time
}

// reloadResult is what one reload found; apply decisions are taken by finish, in the loop.
type reloadResult struct {
	gen       int
	start     time.Time
	unchanged bool
	hash      string
	src       *config.Source
	cfg       *model.Config
	all       map[string]*translate.Resources
	snap      *config.Snapshot
	err       error
}

// start begins a reload of the current files, abandoning the one running.
func (r *reloader) start() {
	if r.cancel != nil {
		r.cancel()
		r.m.metrics.reloads.WithLabelValues("abandoned").Inc()
	}
	r.gen++
	ctx, cancel := context.WithCancel(r.ctx)
	r.cancel = cancel
	gen, now := r.gen, time.Now()
	r.m.mu.Lock()
	r.m.state.reloadingSince = now.UTC()
	checked := r.m.state.checkedHash
	r.m.mu.Unlock()
	go func() {
		res := r.m.load(ctx, checked)
		res.gen, res.start = gen, now
		select {
		case r.results <- res:
		case <-r.ctx.Done():
		}
	}()
}

// abandon cancels the running reload, if any.
func (r *reloader) abandon() {
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
	if r.settle != nil {
		r.settle.Stop()
	}
}

// load reads, decodes, validates and translates the routes; it never touches the state
// that is served. checked is the hash of the last files checked: the same bytes again
// need no parsing.
func (m *Main) load(ctx context.Context, checked string) reloadResult {
	snap, err := m.src.Load(ctx)
	if err != nil {
		return reloadResult{err: err}
	}
	if snap.Hash == checked {
		return reloadResult{unchanged: true, hash: snap.Hash}
	}
	src, cfg, err := config.Build(ctx, snap, m.opts.Limits)
	var all map[string]*translate.Resources
	if err == nil {
		all, err = m.translator.All(cfg)
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return reloadResult{hash: snap.Hash, src: src, cfg: cfg, all: all, snap: snap, err: err}
}

// finish takes a reload's result: nothing for the same bytes, reject a bad edit, hold a
// destructive one back until the files have stayed unchanged for the settle period, apply
// anything else. Any failure rejects the whole edit: the last good config keeps serving.
func (r *reloader) finish(res reloadResult) {
	if res.gen != r.gen {
		return // abandoned
	}
	m := r.m
	r.cancel() // releases the reload's context; it has finished
	r.cancel = nil
	now := time.Now().UTC()
	m.mu.Lock()
	m.state.reloadingSince = time.Time{}
	m.mu.Unlock()
	if errors.Is(res.err, context.Canceled) {
		return // shutting down
	}
	if res.unchanged {
		m.mu.Lock()
		m.state.checkedAt = now
		p := m.state.pending
		m.mu.Unlock()
		if p != nil && p.hash == res.hash {
			if wait := p.since.Add(m.opts.Settle).Sub(now); wait > 0 {
				r.armSettle(wait)
				return
			}
			r.apply(res.start, p.hash, p.files, p.cfg, p.all, p.snap, p.removal)
			return
		}
		// The same bytes were applied or rejected already: nothing to push, nothing new to
		// report, and no need to parse them again.
		m.metrics.reloads.WithLabelValues("unchanged").Inc()
		return
	}
	err := res.err
	if err == nil {
		m.mu.Lock()
		applied, appliedHash := m.state.applied, m.state.appliedHash
		prev := m.state.pending
		if res.hash == appliedHash {
			// Back to the bytes that are serving (the second half of a torn write landed, or
			// a bad edit was undone): nothing to push, and the serving config keeps its
			// applied_at.
			m.state.pending, m.state.errors = nil, nil
			m.state.checkedAt, m.state.checkedHash = now, res.hash
			m.fromRoutesLocked()
			m.mu.Unlock()
			m.metrics.valid.Set(1)
			m.metrics.errors.Set(0)
			m.metrics.reloads.WithLabelValues("unchanged").Inc()
			if prev != nil {
				m.log.Info("held destructive edit withdrawn: the files are back to the serving config", "config", m.src.String(), "hash", res.hash[:16])
			}
			return
		}
		m.mu.Unlock()
		if removal := config.Compare(applied, res.cfg); removal.Destructive() {
			p := &pendingEdit{hash: res.hash, files: res.src.Files, since: now, removal: removal, cfg: res.cfg, all: res.all, snap: res.snap}
			if prev != nil && prev.hash == res.hash {
				p.since = prev.since
			}
			m.mu.Lock()
			m.state.pending = p
			m.state.checkedAt, m.state.checkedHash = now, res.hash
			m.mu.Unlock()
			m.metrics.reloads.WithLabelValues("pending").Inc()
			m.log.Warn("destructive routes edit held back until the files stay unchanged for the settle period",
				"config", m.src.String(), "hash", res.hash[:16], "settle", m.opts.Settle.String(),
				"applies_at", p.since.Add(m.opts.Settle), "removes", removal.Reasons())
			r.armSettle(p.since.Add(m.opts.Settle).Sub(now))
			return
		}
		r.apply(res.start, res.hash, res.src.Files, res.cfg, res.all, res.snap, config.Removal{})
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state.pending = nil // the files changed: whatever was pending is gone
	m.state.checkedAt = now
	m.state.checkedHash = res.hash
	m.state.errors = config.AsErrors(err)
	m.metrics.reloads.WithLabelValues("error").Inc()
	m.metrics.valid.Set(0)
	m.metrics.errors.Set(float64(len(m.state.errors)))
	msgs := make([]string, len(m.state.errors))
	for i, e := range m.state.errors {
		msgs[i] = e.Error()
	}
	m.log.Error("routes config rejected; the last good config keeps serving", "config", m.src.String(), "errors", msgs)
}

func (r *reloader) armSettle(d time.Duration) {
	if r.settle == nil {
		r.settle = time.NewTimer(d)
	} else {
		r.settle.Reset(d)
	}
	r.settleC = r.settle.C
}

// apply pushes a translated config to every region and records it as serving.
func (r *reloader) apply(start time.Time, hash string, files []string, cfg *model.Config, all map[string]*translate.Resources, snap *config.Snapshot, removal config.Removal) {
	m := r.m
	changed, err := m.xds.Update(all)
	now := time.Now().UTC()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state.pending = nil
	m.state.checkedAt, m.state.checkedHash = now, hash
	if err != nil {
		m.state.errors = config.AsErrors(err)
		m.metrics.reloads.WithLabelValues("error").Inc()
		m.metrics.valid.Set(0)
		m.metrics.errors.Set(float64(len(m.state.errors)))
		m.log.Error("routes config rejected; the last good config keeps serving", "config", m.src.String(), "errors", []string{err.Error()})
		return
	}
	m.state.errors = nil
	m.updateLedger(cfg.Usage)
	m.prober.Update(cfg)
	m.state.applied, m.state.appliedHash, m.state.appliedAt, m.state.files = cfg, hash, now, files
	m.fromRoutesLocked()
	m.saveLocked(snap)
	m.metrics.reloads.WithLabelValues("applied").Inc()
	m.metrics.valid.Set(1)
	m.metrics.errors.Set(0)
	m.metrics.appliedAt.Set(float64(now.Unix()))
	for _, w := range cfg.Warnings {
		m.log.Warn("routes config warning", "warning", w)
	}
	attrs := []any{"config", m.src.String(), "hash", hash[:16], "regions", cfg.RegionNames(), "changed_regions", changed, "took", time.Since(start).String()}
	if removal.Destructive() {
		attrs = append(attrs, "removed", removal.Reasons())
	}
	m.log.Info("routes config applied", attrs...)
}

type reloadMetrics struct {
	reloads   *prometheus.CounterVec
	valid     prometheus.Gauge
	errors    prometheus.Gauge
	appliedAt prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer, source func() string) *reloadMetrics {
	m := &reloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_config_reloads_total", Help: "Routes YAML load attempts by result (applied, unchanged, error, pending: a destructive edit held for the settle period, abandoned: superseded by a newer edit).",
		}, []string{"result"}),
		valid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmedge_config_valid", Help: "1 when the last routes YAML load succeeded, 0 when it was rejected.",
		}),
		errors: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmedge_config_errors", Help: "Number of problems in the last rejected routes YAML (0 when valid).",
		}),
		appliedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmedge_config_last_applied_timestamp_seconds", Help: "When the serving config was applied.",
		}),
	}
	reg.MustRegister(m.reloads, m.valid, m.errors, m.appliedAt)
	for _, s := range []string{SourceRoutes, SourceSaved} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "llmedge_config_source",
			Help:        "1 for where the serving config came from: routes (the routes YAML), or saved (the last good copy in --state-dir, served because the routes YAML was missing or invalid at start-up).",
			ConstLabels: prometheus.Labels{"source": s},
		}, func() float64 {
			if source() == s {
				return 1
			}
			return 0
		}))
	}
	return m
}

func joinHostPort(host string, port uint32) string {
	return net.JoinHostPort(host, fmt.Sprint(port))
}
