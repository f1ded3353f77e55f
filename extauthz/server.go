package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/extauthz/decide"
	"github.com/llmedge/llmedge/extauthz/keystore"
	"github.com/llmedge/llmedge/internal/statefile"
	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/wire"
	"github.com/llmedge/llmedge/internal/xdsclient"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Options configure one extauthz.
type Options struct {
	Region    string // the region whose policy to enforce (node.locality.region)
	NodeID    string // default "extauthz-<region>"
	XDSServer string // control plane ADS address: host:port or unix:/path
	// XDSTLS are the client certificate and CA for a control plane reached over TCP with
	// mutual TLS.
	XDSTLS transport.Files
	// GRPCAddress is where Envoy's ext_authz filter connects: unix:/path (a directory only
	// this user can open) or host:port. Its answers carry provider keys, so plain TCP is
	// refused on anything but loopback; TLS makes it mutual TLS.
	GRPCAddress string
	// NoGRPC serves no gRPC at all: extauthz inside Envoy, where the module checks each
	// request and sets each retry's key itself, so nothing would call it (GRPCAddress and
	// TLS are then unused).
	NoGRPC      bool
	TLS         transport.Files
	HTTPAddress string // /healthz, /readyz, /metrics
	KeysDir     string // <dir>/<upstream>/<key name>
	// RedisAddress is the region's Redis (unix:/path or host:port), the one its ratelimit
	// uses: extauthz checks request-time quotas against it in process.
	RedisAddress string
	KeysPoll     time.Duration
	// StateDir, when set, keeps the last caller policy the control plane sent (token
	// digests, never keys) so a restart while the control plane is away starts on it.
	StateDir string
	Logger   *slog.Logger
}

// Main is a running extauthz.
type Main struct {
	authv3.UnimplementedAuthorizationServer

	opts   Options
	log    *slog.Logger
	reg    *prometheus.Registry
	keys   *keystore.Store
	xds    *xdsclient.Client
	policy atomic.Pointer[decide.Compiled]
	quotas atomic.Pointer[quotas]
	// applied counts the policies applied, for a Replay to tell its policy is current
	// without keeping the policy alive.
	applied atomic.Uint64
	// limiter checks quotas in process against the region's Redis; nil without --redis.
	limiter rateLimiter

	grpcAddr       transport.Address
	grpcLn, httpLn net.Listener
	ready          chan struct{}
	// policyIn is closed once a caller policy is in force (saved or from the control plane).
	policyIn    chan struct{}
	policyOnce  sync.Once
	checks      *prometheus.CounterVec
	retryKeys   *prometheus.CounterVec
	quotaChecks *prometheus.CounterVec
	replays     prometheus.Counter
	lentReplays prometheus.Counter
	// onChange and beforeScrape are SetReplayHooks'.
	onChange, beforeScrape atomic.Pointer[func()]
}

// SetReplayHooks is for whoever keeps Replays' answers to give them without asking
// (the module's fast path, with ReplayLend): onChange is called after anything a Replay
// depends on changed — a policy applied (with its limits), the keys reloaded — once the
// change is in force, so that an answer kept from before it can be seen to be stale;
// beforeScrape before /metrics is answered, to count what was answered meanwhile.
func (m *Main) SetReplayHooks(onChange, beforeScrape func()) {
	m.onChange.Store(&onChange)
	m.beforeScrape.Store(&beforeScrape)
	if m.keys != nil {
		m.keys.OnChange(m.changed)
	}
}

func (m *Main) changed() {
	if f := m.onChange.Load(); f != nil && *f != nil {
		(*f)()
	}
}

// New checks the options and loads the keys once.
func New(o Options) (*Main, error) {
	if o.Region == "" || o.XDSServer == "" || o.KeysDir == "" {
		return nil, errors.New("extauthz: --region, --xds and --keys-dir are required")
	}
	if o.NodeID == "" {
		o.NodeID = "extauthz-" + o.Region
	}
	if o.GRPCAddress == "" && !o.NoGRPC {
		o.GRPCAddress = "127.0.0.1:10100"
	}
	if o.HTTPAddress == "" {
		o.HTTPAddress = "127.0.0.1:10200"
	}
	var grpcAddr transport.Address
	if !o.NoGRPC {
		a, err := transport.ParseListenAddress(o.GRPCAddress)
		if err != nil {
			return nil, fmt.Errorf("extauthz: --grpc-listen %q: %w", o.GRPCAddress, err)
		}
		grpcAddr = a
	}
	if o.StateDir != "" {
		if err := statefile.Dir(o.StateDir); err != nil {
			return nil, fmt.Errorf("extauthz: --state-dir: %w", err)
		}
	}
	if o.KeysPoll <= 0 {
		o.KeysPoll = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger.With("region", o.Region)
	keys, err := keystore.New(o.KeysDir, log)
	if err != nil {
		return nil, fmt.Errorf("extauthz: keys: %w", err)
	}
	m := &Main{opts: o, log: log, reg: prometheus.NewRegistry(), keys: keys, grpcAddr: grpcAddr, ready: make(chan struct{}), policyIn: make(chan struct{})}
	if o.RedisAddress != "" {
		redis, err := transport.Parse(o.RedisAddress)
		if err != nil {
			return nil, fmt.Errorf("extauthz: --redis %q: %w", o.RedisAddress, err)
		}
		m.limiter = newLimiter(redis, m.reg, log)
	}
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmedge_extauthz_checks_total",
		Help: "Requests checked, by upstream and outcome (ok, missing_token, unknown_token, ...).",
	}, []string{"upstream", "result"})
	m.retryKeys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmedge_extauthz_retry_keys_total",
		Help: "Retries of requests Envoy asked a key for, by upstream and outcome: next (the next key was set), kept (the first try's key stays: one key, or a caller's own).",
	}, []string{"upstream", "result"})
	m.quotaChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmedge_extauthz_quota_checks_total",
		Help: "Allowed requests whose quotas extauthz asked the region's rate-limit service about, by upstream and result (ok, over_limit, unavailable).",
	}, []string{"upstream", "result"})
	m.replays = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "llmedge_extauthz_check_replays_total",
		Help: "Checks inside Envoy answered by replaying an earlier decision on the same request inputs (the module's fast path); also counted in llmedge_extauthz_checks_total.",
	})
	m.lentReplays = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "llmedge_extauthz_check_replays_lent_total",
		Help: "Of the replayed checks, those the module's fast path answered in C from a lending, without a call into Go (counted up to a second late, and before each scrape); also counted in llmedge_extauthz_check_replays_total.",
	})
	m.reg.MustRegister(m.checks, m.retryKeys, m.quotaChecks, m.replays, m.lentReplays, keyCollector{keys}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llmedge_extauthz_policy_ready", Help: "1 once a caller policy from the control plane is in force.",
		}, func() float64 {
			if m.policy.Load() == nil {
				return 0
			}
			return 1
		}),
		policySource(m, xdsclient.SourceSaved), policySource(m, xdsclient.SourceControlPlane))
	m.xds, err = xdsclient.New(xdsclient.Options{
		Server: o.XDSServer,
		TLS:    o.XDSTLS,
		Node: &corev3.Node{
			Id:       o.NodeID,
			Cluster:  "llmedge-extauthz-" + o.Region,
			Locality: &corev3.Locality{Region: o.Region},
		},
		TypeURL:  resourcev3.ExtensionConfigType,
		Names:    []string{wire.PolicyResourceName},
		Apply:    m.apply,
		StateDir: o.StateDir,
		Logger:   log.With("component", "xds"),
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// policySource is 1 while the policy in force came from source.
func policySource(m *Main, source string) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "llmedge_extauthz_policy_source",
		Help:        "1 for where the caller policy in force came from: control_plane, or saved (the copy in --state-dir, while the control plane has not answered since start-up).",
		ConstLabels: prometheus.Labels{"source": source},
	}, func() float64 {
		if m.xds.Status().Source == source {
			return 1
		}
		return 0
	})
}

// Ready is closed once the listeners are bound; GRPCAddr/HTTPAddr are valid after it.
func (m *Main) Ready() <-chan struct{} { return m.ready }

// GRPCAddr is where extauthz serves gRPC; "" with NoGRPC.
func (m *Main) GRPCAddr() string {
	if m.opts.NoGRPC {
		return ""
	}
	if m.grpcAddr.IsUnix() {
		return m.grpcAddr.String()
	}
	return m.grpcLn.Addr().String()
}
func (m *Main) HTTPAddr() string { return m.httpLn.Addr().String() }

// PolicyIn is closed once a caller policy is in force: until then every check is refused
// with not_ready.
func (m *Main) PolicyIn() <-chan struct{} { return m.policyIn }

// GRPCServerOptions are the settings of extauthz's gRPC server, for the benchmarks'
// stand-ins to be set up the same way.
//
// Fixed flow-control windows turn off gRPC-Go's bandwidth estimator, whose BDP pings ride
// along with answers and cost Envoy and this process a read and an acknowledgement each
// (bench/hop, docs/BENCHMARKS.md). On a local socket 1 MiB per stream is never the limit;
// the connection window leaves room for many streams of ext_proc bodies at once.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxConcurrentStreams(10000),
		grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(16 << 20)}
}

// Run serves until ctx ends.
func (m *Main) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The saved policy, if any, is in force before the first check arrives: Envoy
	// reconnects as soon as the socket accepts.
	m.xds.LoadSaved()
	var err error
	var g *grpc.Server
	if !m.opts.NoGRPC {
		if m.grpcLn, err = transport.Listen(m.grpcAddr, m.opts.TLS, m.log.With("component", "grpc")); err != nil {
			return fmt.Errorf("listen grpc: %w", err)
		}
	}
	if m.httpLn, err = net.Listen("tcp", m.opts.HTTPAddress); err != nil {
		if m.grpcLn != nil {
			m.grpcLn.Close()
		}
		return fmt.Errorf("listen http %s: %w", m.opts.HTTPAddress, err)
	}
	hs := &http.Server{Handler: m.handler(), ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 4)
	if !m.opts.NoGRPC {
		g = grpc.NewServer(GRPCServerOptions()...)
		authv3.RegisterAuthorizationServer(g, m)
		extprocv3.RegisterExternalProcessorServer(g, keyFailover{m: m})
		go func() { errc <- g.Serve(m.grpcLn) }()
	}
	go func() {
		if err := hs.Serve(m.httpLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	go func() { errc <- m.keys.Run(ctx, m.opts.KeysPoll) }()
	go func() { errc <- m.xds.Run(ctx) }()
	grpcAt := m.GRPCAddr()
	if m.opts.NoGRPC {
		grpcAt = "none (inside Envoy)"
	}
	m.log.Info("extauthz serving", "grpc", grpcAt, "http", m.HTTPAddr(), "xds", m.opts.XDSServer, "keys_dir", m.opts.KeysDir)
	close(m.ready)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	shutdown, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = hs.Shutdown(shutdown)
	if g != nil {
		g.GracefulStop()
	}
	m.log.Info("extauthz stopped")
	return runErr
}

// apply installs a policy pushed by the control plane; an error NACKs it and the previous
// policy stays in force.
func (m *Main) apply(version string, resources []*anypb.Any) error {
	var found *authzv1.Policy
	for _, a := range resources {
		ext := &corev3.TypedExtensionConfig{}
		if err := a.UnmarshalTo(ext); err != nil {
			return fmt.Errorf("decode resource: %w", err)
		}
		if ext.GetName() != wire.PolicyResourceName {
			continue
		}
		p := &authzv1.Policy{}
		if err := ext.GetTypedConfig().UnmarshalTo(p); err != nil {
			return fmt.Errorf("decode %s: %w", wire.PolicyResourceName, err)
		}
		found = p
	}
	if found == nil {
		return fmt.Errorf("no %s resource in the response", wire.PolicyResourceName)
	}
	if found.GetRegion() != m.opts.Region {
		return fmt.Errorf("policy is for region %q, this extauthz serves %q", found.GetRegion(), m.opts.Region)
	}
	dp, err := fromProto(found)
	if err != nil {
		return err
	}
	c, err := decide.Compile(dp)
	if err != nil {
		return err
	}
	q, err := newQuotas(version, found.GetRateLimit(), m.limiter)
	if err != nil {
		return err
	}
	if q != nil && q.lim == nil {
		m.log.Error("the region has rate limits but extauthz has no --redis: every quota check takes the region's failure mode")
	}
	m.policy.Store(c)
	m.policyOnce.Do(func() { close(m.policyIn) })
	m.quotas.Store(q)
	m.applied.Add(1) // after both: a Replay made from either before is seen to be stale
	m.changed()
	m.log.Info("caller policy applied", "version", version, "callers", len(dp.Callers), "upstreams", len(dp.Upstreams))
	return nil
}

func fromProto(p *authzv1.Policy) (decide.Policy, error) {
	out := decide.Policy{Region: p.GetRegion()}
	for _, u := range p.GetUpstreams() {
		out.Upstreams = append(out.Upstreams, decide.Upstream{Name: u.GetName(), KeyHeader: u.GetKeyHeader(), KeyFormat: u.GetKeyFormat(), API: u.GetApi()})
	}
	for _, c := range p.GetCallers() {
		dc := decide.Caller{
			Name: c.GetName(), Tenant: c.GetTenant(), TokenSHA256: c.GetTokenSha256(),
			AllowedUpstreams: c.GetAllowedUpstreams(), Disabled: c.GetDisabled(), BYOK: c.GetBringYourOwnKey(),
		}
		if c.GetExpiresAt() != nil {
			dc.ExpiresAt = c.GetExpiresAt().AsTime()
		}
		for _, s := range c.GetAllowCidrs() {
			pf, err := netip.ParsePrefix(s)
			if err != nil {
				return out, fmt.Errorf("caller %s: allow cidr %q: %w", c.GetName(), s, err)
			}
			dc.AllowCIDRs = append(dc.AllowCIDRs, pf)
		}
		for _, s := range c.GetDenyCidrs() {
			pf, err := netip.ParsePrefix(s)
			if err != nil {
				return out, fmt.Errorf("caller %s: deny cidr %q: %w", c.GetName(), s, err)
			}
			dc.DenyCIDRs = append(dc.DenyCIDRs, pf)
		}
		out.Callers = append(out.Callers, dc)
	}
	return out, nil
}

// Check implements envoy.service.auth.v3.Authorization.
func (m *Main) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	attrs := req.GetAttributes()
	ext := attrs.GetContextExtensions()
	h := attrs.GetRequest().GetHttp()
	in := Input{
		Region:   ext[wire.ContextRegion],
		Upstream: ext[wire.ContextUpstream],
		Route:    ext[wire.ContextRoute],
		Hop:      ext[wire.ContextHop],
		Headers:  h.GetHeaders(),
		Path:     h.GetPath(),
		Model:    requestedModel(attrs.GetMetadataContext()),
	}
	in.Source, _ = netip.ParseAddr(attrs.GetSource().GetAddress().GetSocketAddress().GetAddress())
	return checkResponse(m.Authorize(ctx, in)), nil
}

type keySource struct{ s *keystore.Store }

// keyRing lists an upstream's key values in name order, for decide.Compiled.RetryKey.
type keyRing struct{ s *keystore.Store }

func (k keyRing) Keys(upstream string) []string {
	keys := k.s.Keys(upstream)
	out := make([]string, len(keys))
	for i, key := range keys {
		out[i] = key.Value()
	}
	return out
}

func (k keySource) Next(upstream string) (string, string, bool) {
	key, ok := k.s.Next(upstream)
	if !ok {
		return "", "", false
	}
	return key.Value(), key.Name, true
}

// checkResponse is an Outcome as ext_authz's answer.
func checkResponse(out Outcome) *authv3.CheckResponse {
	if out.Allow {
		ok := &authv3.OkHttpResponse{
			// Overwrite: the default appends, and the caller's own value would travel on
			// next to the real key.
			Headers:                 overwrite(out.SetHeaders),
			HeadersToRemove:         out.RemoveHeaders,
			QueryParametersToRemove: out.RemoveQueryParams,
			ResponseHeadersToAdd:    overwrite(out.ResponseHeaders),
		}
		md, _ := structpb.NewStruct(map[string]any{
			wire.MetadataCaller: out.Caller, wire.MetadataTenant: out.Tenant, wire.MetadataUpstream: out.Upstream,
		})
		return &authv3.CheckResponse{
			Status:          &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: ok},
			DynamicMetadata: md,
		}
	}
	code := codes.PermissionDenied
	switch out.Status {
	case http.StatusUnauthorized:
		code = codes.Unauthenticated
	case http.StatusTooManyRequests:
		code = codes.ResourceExhausted
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(out.Status)},
			Headers: overwrite(out.Headers),
			Body:    out.Body,
		}},
	}
}

func overwrite(hs []Header) []*corev3.HeaderValueOption {
	if len(hs) == 0 {
		return nil
	}
	out := make([]*corev3.HeaderValueOption, len(hs))
	for i, h := range hs {
		out[i] = &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.Name, Value: h.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}
	}
	return out
}

func (m *Main) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := m.xds.Status()
		// Key problems are detail, not unreadiness: a held key still serves, and an
		// upstream without keys is refused per request with no_key.
		keys := keyStatus(m.keys)
		if m.policy.Load() == nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{
				"status": "not ready", "reason": "no caller policy from the control plane yet", "xds_connected": st.Connected, "keys": keys,
			})
			return
		}
		body := map[string]any{"status": "ready", "policy_version": st.Version, "policy_source": st.Source, "xds_connected": st.Connected, "keys": keys}
		if st.Source == xdsclient.SourceSaved {
			body["policy_saved_at"] = st.SavedAt
			body["reason"] = "serving the caller policy saved in the state dir; the control plane has not answered since start-up"
		}
		if st.SaveError != "" {
			body["policy_save_error"] = st.SaveError
		}
		writeJSON(w, http.StatusOK, body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		if f := m.beforeScrape.Load(); f != nil && *f != nil {
			(*f)()
		}
		return m.reg.Gather()
	}), promhttp.HandlerOpts{}))
	return mux
}

// upstreamKeys is one upstream's keys as /readyz shows them: counts and file names, never
// a key.
type upstreamKeys struct {
	Upstream string `json:"upstream"`
	// Keys counts the keys in use, held ones included.
	Keys int `json:"keys"`
	// Problems lists files (or the directory) the store could not use as they are; a held
	// one still serves its last good key.
	Problems []keystore.Problem `json:"problems,omitempty"`
}

func keyStatus(s *keystore.Store) []upstreamKeys {
	byUp := map[string]*upstreamKeys{}
	get := func(up string) *upstreamKeys {
		if byUp[up] == nil {
			byUp[up] = &upstreamKeys{Upstream: up, Keys: s.Count(up)}
		}
		return byUp[up]
	}
	for _, up := range s.Upstreams() {
		get(up)
	}
	for _, p := range s.Problems() { // a stray entry at the root shows under its own name
		u := get(p.Upstream)
		u.Problems = append(u.Problems, p)
	}
	out := make([]upstreamKeys, 0, len(byUp))
	for _, up := range slices.Sorted(maps.Keys(byUp)) {
		out = append(out, *byUp[up])
	}
	return out
}

// keyCollector exposes the key store's state per upstream at scrape time.
type keyCollector struct{ s *keystore.Store }

var (
	keysDesc = prometheus.NewDesc("llmedge_extauthz_upstream_keys",
		"Provider keys in use per upstream, held ones included; 0 means requests get no_key.", []string{"upstream"}, nil)
	keysHeldDesc = prometheus.NewDesc("llmedge_extauthz_upstream_keys_held",
		"Keys served from their last good value because the key file (or directory) became empty, unreadable or malformed.", []string{"upstream"}, nil)
	keyProblemsDesc = prometheus.NewDesc("llmedge_extauthz_key_file_problems",
		"Key files or directories that could not be used as they are (held or skipped).", []string{"upstream"}, nil)
)

func (keyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keysDesc
	ch <- keysHeldDesc
	ch <- keyProblemsDesc
}

func (c keyCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range keyStatus(c.s) {
		held := 0
		for _, p := range u.Problems {
			if p.Held && p.Key != "" {
				held++
			} else if p.Held {
				held = u.Keys // the whole directory is held
			}
		}
		gauge(ch, keysDesc, u.Keys, u.Upstream)
		gauge(ch, keysHeldDesc, held, u.Upstream)
		gauge(ch, keyProblemsDesc, len(u.Problems), u.Upstream)
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v int, label string) {
	m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, float64(v), label)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
