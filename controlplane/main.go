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

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/watch"
	"github.com/llmedge/llmedge/controlplane/xds"
	"github.com/llmedge/llmedge/internal/transport"
)

// Options configure the control plane.
type Options struct {
	ConfigPath string // routes YAML file or directory
	// XDSAddress is the gRPC ADS listen address, default 127.0.0.1:18000: one or more
	// comma-separated unix:/path or host:port. The stream carries each region's caller
	// policy, so plain TCP is refused on anything but loopback; XDSTLS makes TCP
	// addresses mutual TLS (unix sockets are guarded by their directory).
	XDSAddress  string
	XDSTLS      transport.Files
	HTTPAddress string // status/health/metrics listen address, default 127.0.0.1:18080
	Watch       watch.Options
	Logger      *slog.Logger
}

// Main is one running control plane.
type Main struct {
	opts    Options
	log     *slog.Logger
	reg     *prometheus.Registry
	xds     *xds.Server
	metrics *reloadMetrics

	xdsAddrs []transport.Address
	xdsLns   []net.Listener
	httpLn   net.Listener
	ready    chan struct{}

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
}

// New validates the options; Run starts everything.
func New(o Options) (*Main, error) {
	if o.ConfigPath == "" {
		return nil, errors.New("controlplane: a routes YAML path is required (--config)")
	}
	if o.XDSAddress == "" {
		o.XDSAddress = "127.0.0.1:18000"
	}
	if o.HTTPAddress == "" {
		o.HTTPAddress = "127.0.0.1:18080"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	addrs, err := transport.ParseListen(o.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("controlplane: --xds-listen %q: %w", o.XDSAddress, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Main{opts: o, log: o.Logger, reg: reg, metrics: newReloadMetrics(reg), xdsAddrs: addrs, ready: make(chan struct{})}, nil
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

// Run serves until ctx ends, then stops gracefully.
func (m *Main) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.xds = xds.New(ctx, m.log, m.reg)

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
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(100000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	m.xds.Register(g)
	hs := &http.Server{Handler: m.handler(), ReadHeaderTimeout: 5 * time.Second}

	// Load before serving, so the first Envoy to connect gets config at once.
	m.reload()

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
	go func() { errc <- watch.Run(ctx, m.opts.ConfigPath, m.opts.Watch, m.log, changed) }()
	m.log.Info("control plane serving", "xds", m.XDSAddrs(), "http", m.HTTPAddr(), "config", m.opts.ConfigPath)
	close(m.ready)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-changed:
			m.reload()
		case err := <-errc:
			if err != nil {
				runErr = err
				break loop
			}
		}
	}
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = hs.Shutdown(shutdownCtx)
	// GracefulStop would wait for every Envoy to hang up its never-ending ADS stream.
	g.Stop()
	m.log.Info("control plane stopped")
	return runErr
}

// reload loads, validates, translates and pushes the routes YAML. Any failure rejects the
// whole edit: nothing is pushed and the last good config keeps serving.
func (m *Main) reload() {
	start := time.Now()
	if hash, err := config.Hash(m.opts.ConfigPath); err == nil {
		m.mu.Lock()
		same := hash == m.state.checkedHash
		if same {
			m.state.checkedAt = time.Now().UTC()
		}
		m.mu.Unlock()
		if same {
			// The same bytes were applied or rejected already: nothing to push, nothing
			// new to report, and no need to parse them again.
			m.metrics.reloads.WithLabelValues("unchanged").Inc()
			return
		}
	}
	src, cfg, err := config.LoadConfig(m.opts.ConfigPath)
	var all map[string]*translate.Resources
	if err == nil {
		all, err = translate.All(cfg)
	}
	var changed []string
	if err == nil {
		changed, err = m.xds.Update(all)
	}
	now := time.Now().UTC()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state.checkedAt = now
	m.state.checkedHash = ""
	if src != nil {
		m.state.checkedHash = src.Hash
	}
	if err != nil {
		m.state.errors = config.AsErrors(err)
		m.metrics.reloads.WithLabelValues("error").Inc()
		m.metrics.valid.Set(0)
		m.metrics.errors.Set(float64(len(m.state.errors)))
		msgs := make([]string, len(m.state.errors))
		for i, e := range m.state.errors {
			msgs[i] = e.Error()
		}
		m.log.Error("routes config rejected; the last good config keeps serving", "config", m.opts.ConfigPath, "errors", msgs)
		return
	}
	m.state.errors = nil
	m.state.applied, m.state.appliedHash, m.state.appliedAt, m.state.files = cfg, src.Hash, now, src.Files
	m.metrics.reloads.WithLabelValues("applied").Inc()
	m.metrics.valid.Set(1)
	m.metrics.errors.Set(0)
	m.metrics.appliedAt.Set(float64(now.Unix()))
	for _, w := range cfg.Warnings {
		m.log.Warn("routes config warning", "warning", w)
	}
	m.log.Info("routes config applied", "config", m.opts.ConfigPath, "hash", src.Hash[:16], "regions", cfg.RegionNames(), "changed_regions", changed, "took", time.Since(start).String())
}

type reloadMetrics struct {
	reloads   *prometheus.CounterVec
	valid     prometheus.Gauge
	errors    prometheus.Gauge
	appliedAt prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) *reloadMetrics {
	m := &reloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_config_reloads_total", Help: "Routes YAML load attempts by result (applied, unchanged, error).",
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
	return m
}

func joinHostPort(host string, port uint32) string {
	return net.JoinHostPort(host, fmt.Sprint(port))
}
