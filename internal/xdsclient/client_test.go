package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

const policyType = "type.googleapis.com/llmedge.authz.v1.Policy"

// waitTimeout bounds every poll; generous for -race on a loaded machine.
const waitTimeout = 15 * time.Second

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- in-process go-control-plane ADS server ---------------------------------------------------

type seenRequest struct {
	stream int64
	at     time.Time
	req    *discoveryv3.DiscoveryRequest
}

type xdsServer struct {
	addr     string
	g        *grpc.Server
	served   chan error
	stopOnce sync.Once

	mu    sync.Mutex
	reqs  []seenRequest
	resps []*discoveryv3.DiscoveryResponse
}

// startServer serves cache over ADS on addr ("127.0.0.1:0" for a free port). Binding a
// just-released port is retried until the deadline.
func startServer(t *testing.T, addr string, cache cachev3.Cache) *xdsServer {
	t.Helper()
	var ln net.Listener
	eventually(t, "listen on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return startServerOn(t, ln, ln.Addr().String(), cache)
}

// startServerOn serves cache over ADS on ln; addr is what clients dial.
func startServerOn(t *testing.T, ln net.Listener, addr string, cache cachev3.Cache) *xdsServer {
	t.Helper()
	s := &xdsServer{addr: addr, served: make(chan error, 1)}
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			s.mu.Lock()
			s.reqs = append(s.reqs, seenRequest{id, time.Now(), proto.Clone(req).(*discoveryv3.DiscoveryRequest)})
			s.mu.Unlock()
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			s.mu.Lock()
			s.resps = append(s.resps, proto.Clone(resp).(*discoveryv3.DiscoveryResponse))
			s.mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.g = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.g, serverv3.NewServer(ctx, cache, cb))
	go func() { s.served <- s.g.Serve(ln) }()
	t.Cleanup(func() {
		s.stop(t)
		cancel()
	})
	return s
}

// stop closes the listener and every connection, and waits for Serve to return.
func (s *xdsServer) stop(t *testing.T) {
	t.Helper()
	s.stopOnce.Do(func() {
		s.g.Stop()
		if err := <-s.served; err != nil {
			t.Errorf("grpc Serve: %v", err)
		}
	})
}

func (s *xdsServer) requests() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// response returns the last response sent with the given version, or nil.
func (s *xdsServer) response(version string) *discoveryv3.DiscoveryResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.resps) - 1; i >= 0; i-- {
		if s.resps[i].GetVersionInfo() == version {
			return s.resps[i]
		}
	}
	return nil
}

// ackOf returns the ACK (no error_detail) for the response sent with version, or nil.
func (s *xdsServer) ackOf(version string) *discoveryv3.DiscoveryRequest {
	resp := s.response(version)
	if resp == nil {
		return nil
	}
	for _, r := range s.requests() {
		if r.req.GetResponseNonce() == resp.GetNonce() && r.req.GetErrorDetail() == nil {
			return r.req
		}
	}
	return nil
}

// responseByNonce returns the response sent with nonce, or nil.
func (s *xdsServer) responseByNonce(nonce string) *discoveryv3.DiscoveryResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.resps {
		if r.GetNonce() == nonce {
			return r
		}
	}
	return nil
}

// nacks returns the requests carrying an error_detail.
func (s *xdsServer) nacks() []seenRequest {
	var out []seenRequest
	for _, r := range s.requests() {
		if r.req.GetErrorDetail() != nil {
			out = append(out, r)
		}
	}
	return out
}

// --- client harness ---------------------------------------------------------------------------

// applier is an Apply function that decodes Policies, rejects invalid ones, and remembers
// what is in force.
type applier struct {
	mu       sync.Mutex
	version  string
	policies map[string]*authzv1.Policy // region -> policy in force
	calls    int
}

func (a *applier) apply(version string, resources []*anypb.Any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if len(resources) == 0 {
		return errors.New("no policy in the response")
	}
	next := map[string]*authzv1.Policy{}
	for _, r := range resources {
		p := &authzv1.Policy{}
		if err := r.UnmarshalTo(p); err != nil {
			return fmt.Errorf("decode %s: %w", r.GetTypeUrl(), err)
		}
		for i, c := range p.GetCallers() {
			if c.GetName() == "" {
				return fmt.Errorf("policy %q: caller %d has no name", p.GetRegion(), i)
			}
		}
		next[p.GetRegion()] = p
	}
	a.version, a.policies = version, next
	return nil
}

// firstCaller returns the name of region's first caller in force ("" if none).
func (a *applier) firstCaller(region string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.policies[region].GetCallers()[0].GetName()
}

func (a *applier) regions() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for r := range a.policies {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

func policy(region, caller string) *authzv1.Policy {
	return &authzv1.Policy{
		Region:    region,
		Callers:   []*authzv1.Caller{{Name: caller, TokenSha256: []string{"00ff"}, AllowedUpstreams: []string{"openai"}}},
		Upstreams: []*authzv1.Upstream{{Name: "openai", KeyHeader: "authorization", KeyFormat: "Bearer {key}", Api: "openai"}},
	}
}

type runningClient struct {
	*Client
	a      *applier
	cancel context.CancelFunc
	done   chan error
}

func startClient(t *testing.T, addr string, names []string, tweak func(*Options)) *runningClient {
	t.Helper()
	a := &applier{}
	o := Options{
		Server:     addr,
		Node:       &corev3.Node{Id: "extauthz-hk-1", Cluster: "extauthz", Locality: &corev3.Locality{Region: "hk"}},
		TypeURL:    policyType,
		Names:      names,
		Apply:      a.apply,
		Logger:     slog.New(slog.DiscardHandler),
		BackoffMin: 20 * time.Millisecond,
		BackoffMax: 200 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc := &runningClient{Client: c, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- c.Run(ctx) }()
	t.Cleanup(func() { rc.stop(t) })
	return rc
}

// stop cancels Run and checks it returns nil promptly; it returns how long that took.
func (rc *runningClient) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	rc.cancel()
	select {
	case err, ok := <-rc.done:
		if ok {
			close(rc.done)
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Run did not return within %v of cancel", waitTimeout)
	}
	return time.Since(start)
}

// --- tests ------------------------------------------------------------------------------------

func TestInitialConfigAppliedAndACKed(t *testing.T) {
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{
		"hk": policy("hk", "alice"),
		"sg": policy("sg", "bob"),
	}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, []string{"hk"}, nil)

	eventually(t, "initial config applied", func() bool { return !c.Status().Updated.IsZero() })
	st := c.Status()
	if !st.Connected || st.Version == "" || st.NACKError != "" {
		t.Fatalf("status after initial config = %+v", st)
	}
	if got := c.a.regions(); !slices.Equal(got, []string{"hk"}) {
		t.Fatalf("applied regions = %v, want [hk] (subscribed by name)", got)
	}
	if got := c.a.firstCaller("hk"); got != "alice" {
		t.Fatalf("hk caller = %q, want alice", got)
	}

	// The first request carries the node and the names, and no version or nonce.
	first := srv.requests()[0].req
	if first.GetNode().GetId() != "extauthz-hk-1" || first.GetNode().GetLocality().GetRegion() != "hk" ||
		first.GetNode().GetUserAgentName() != "llmedge-xdsclient" {
		t.Errorf("first request node = %v", first.GetNode())
	}
	if first.GetTypeUrl() != policyType || !slices.Equal(first.GetResourceNames(), []string{"hk"}) ||
		first.GetVersionInfo() != "" || first.GetResponseNonce() != "" {
		t.Errorf("first request = %v", first)
	}

	// The ACK names the response's version and nonce.
	var ack *discoveryv3.DiscoveryRequest
	eventually(t, "ACK of the initial config", func() bool { ack = srv.ackOf(st.Version); return ack != nil })
	if ack.GetVersionInfo() != st.Version || !slices.Equal(ack.GetResourceNames(), []string{"hk"}) {
		t.Errorf("ACK = %v, want version %q", ack, st.Version)
	}
}

func TestWildcardGetsAllResources(t *testing.T) {
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{
		"hk": policy("hk", "alice"),
		"sg": policy("sg", "bob"),
	}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, nil, nil)
	eventually(t, "both regions applied", func() bool { return slices.Equal(c.a.regions(), []string{"hk", "sg"}) })
	if names := srv.requests()[0].req.GetResourceNames(); len(names) != 0 {
		t.Errorf("wildcard request names = %v, want none", names)
	}
}

func TestUpdateAppliedAndACKed(t *testing.T) {
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "alice")}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, []string{"hk"}, nil)
	eventually(t, "initial config applied", func() bool { return !c.Status().Updated.IsZero() })
	v1 := c.Status().Version

	if err := cache.UpdateResource("hk", policy("hk", "carol")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "update applied", func() bool { return c.a.firstCaller("hk") == "carol" })
	eventually(t, "status shows the new version", func() bool { return c.Status().Version != v1 })
	v2 := c.Status().Version

	var ack *discoveryv3.DiscoveryRequest
	eventually(t, "ACK of the update", func() bool { ack = srv.ackOf(v2); return ack != nil })
	if resp := srv.response(v2); ack.GetVersionInfo() != v2 || ack.GetResponseNonce() != resp.GetNonce() {
		t.Errorf("ACK = {version %q nonce %q}, want {%q %q}", ack.GetVersionInfo(), ack.GetResponseNonce(), v2, resp.GetNonce())
	}
}

func TestRejectedConfigNACKedAndPreviousKept(t *testing.T) {
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "alice")}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, []string{"hk"}, nil)
	eventually(t, "initial config applied", func() bool { return !c.Status().Updated.IsZero() })
	good := c.Status()

	if err := cache.UpdateResource("hk", policy("hk", "")); err != nil { // a caller without a name
		t.Fatal(err)
	}
	eventually(t, "NACK", func() bool { return len(srv.nacks()) > 0 })
	nack := srv.nacks()[0].req
	if d := nack.GetErrorDetail(); d.GetCode() != 3 || d.GetMessage() != `policy "hk": caller 0 has no name` {
		t.Errorf("NACK error_detail = %v, want code 3 and Apply's message", d)
	}
	if nack.GetVersionInfo() != good.Version {
		t.Errorf("NACK version_info = %q, want the last applied %q", nack.GetVersionInfo(), good.Version)
	}
	rejected := srv.responseByNonce(nack.GetResponseNonce())
	if rejected == nil || rejected.GetVersionInfo() == good.Version {
		t.Fatalf("NACK nonce %q does not name the rejected response", nack.GetResponseNonce())
	}

	eventually(t, "status shows the NACK", func() bool { return c.Status().NACKError != "" })
	st := c.Status()
	if st.Version != good.Version || !st.Updated.Equal(good.Updated) || !st.Connected {
		t.Errorf("status after NACK = %+v, want version %q kept", st, good.Version)
	}
	if st.NACKVersion != rejected.GetVersionInfo() || st.NACKError != `policy "hk": caller 0 has no name` || st.NACKed.IsZero() {
		t.Errorf("status NACK fields = %+v", st)
	}
	if got := c.a.firstCaller("hk"); got != "alice" {
		t.Errorf("config in force after NACK has caller %q, want alice", got)
	}

	// A good update is applied and clears the NACK.
	if err := cache.UpdateResource("hk", policy("hk", "dave")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "good update applied", func() bool { return c.a.firstCaller("hk") == "dave" })
	eventually(t, "NACK cleared", func() bool { st := c.Status(); return st.NACKError == "" && st.Version != good.Version })
}

// go-control-plane's linear cache answers a NACK whose version_info is empty (nothing was
// ever applied) at once with an empty response of the same version, and a snapshot cache
// re-sends a rejected snapshot at once; the client must pace such repeats, not spin.
func TestRepeatedNACKsArePaced(t *testing.T) {
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "")}))
	srv := startServer(t, "127.0.0.1:0", cache)
	const minDelay = 100 * time.Millisecond
	c := startClient(t, srv.addr, []string{"hk"}, func(o *Options) { o.BackoffMin, o.BackoffMax = minDelay, 400*time.Millisecond })

	eventually(t, "four NACKs", func() bool { return len(srv.nacks()) >= 4 })
	n := srv.nacks()
	// NACKs 2..4 repeat the same version, so each waited at least BackoffMin.
	if gap := n[3].at.Sub(n[0].at); gap < 3*minDelay {
		t.Errorf("4 NACKs of one version within %v; want them paced by >= %v each", gap, minDelay)
	}
	st := c.Status()
	if st.Version != "" || !st.Updated.IsZero() || st.NACKError == "" {
		t.Errorf("status = %+v, want nothing applied and a NACK error", st)
	}
	for _, r := range n {
		if r.req.GetVersionInfo() != "" {
			t.Errorf("NACK version_info = %q, want empty (nothing applied yet)", r.req.GetVersionInfo())
		}
	}
}

func TestReconnectsAfterServerRestart(t *testing.T) {
	cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "alice")}))
	srv := startServer(t, "127.0.0.1:0", cache)
	c := startClient(t, srv.addr, []string{"hk"}, nil)
	eventually(t, "initial config applied", func() bool { return !c.Status().Updated.IsZero() })
	v1 := c.Status().Version

	srv.stop(t)
	eventually(t, "client notices the server is gone", func() bool { return !c.Status().Connected })
	if st := c.Status(); st.Version != v1 {
		t.Errorf("version while disconnected = %q, want %q kept", st.Version, v1)
	}

	// A new control plane on the same address, with new content and versions.
	cache2 := cachev3.NewLinearCache(policyType, cachev3.WithVersionPrefix("restarted-"),
		cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "erin")}))
	srv2 := startServer(t, srv.addr, cache2)
	eventually(t, "config from the restarted server", func() bool { return c.a.firstCaller("hk") == "erin" })
	eventually(t, "connected again", func() bool { return c.Status().Connected })
	v2 := c.Status().Version
	if v2 != "restarted-0" {
		t.Errorf("version after restart = %q, want restarted-0", v2)
	}
	eventually(t, "ACK to the restarted server", func() bool { return srv2.ackOf(v2) != nil })
	if first := srv2.requests()[0].req; first.GetVersionInfo() != "" || first.GetResponseNonce() != "" || first.GetNode().GetId() == "" {
		t.Errorf("first request on the new stream = %v, want node and no version/nonce", first)
	}
}

func TestCancelReturnsNilPromptly(t *testing.T) {
	t.Run("connected", func(t *testing.T) {
		cache := cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "alice")}))
		srv := startServer(t, "127.0.0.1:0", cache)
		c := startClient(t, srv.addr, []string{"hk"}, nil)
		eventually(t, "initial config applied", func() bool { return !c.Status().Updated.IsZero() })
		if d := c.stop(t); d > 2*time.Second {
			t.Errorf("Run took %v to return after cancel", d)
		}
		if c.Status().Connected {
			t.Error("still connected after Run returned")
		}
	})
	t.Run("server down, in backoff", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		logs := &recordingHandler{}
		c := startClient(t, addr, []string{"hk"}, func(o *Options) {
			o.BackoffMin, o.BackoffMax = 10*time.Second, 10*time.Second
			o.Logger = slog.New(logs)
		})
		// Wait for the first failure, so Run is waiting out a 10s backoff.
		eventually(t, "a failed connection attempt", func() bool { return logs.has("reconnecting") })
		if d := c.stop(t); d > 2*time.Second {
			t.Errorf("Run took %v to return after cancel", d)
		}
	})
}

// recordingHandler is a slog.Handler that keeps the messages logged.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}

func (h *recordingHandler) has(substr string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.ContainsFunc(h.msgs, func(m string) bool { return strings.Contains(m, substr) })
}

func TestNewValidatesOptions(t *testing.T) {
	apply := func(string, []*anypb.Any) error { return nil }
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"no server", Options{TypeURL: policyType, Apply: apply}},
		{"no type", Options{Server: "127.0.0.1:1", Apply: apply}},
		{"no apply", Options{Server: "127.0.0.1:1", TypeURL: policyType}},
	} {
		if _, err := New(tc.o); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
		if err := Run(context.Background(), tc.o); err == nil {
			t.Errorf("%s: Run succeeded", tc.name)
		}
	}
	c, err := New(Options{Server: "127.0.0.1:1", TypeURL: policyType, Apply: apply})
	if err != nil {
		t.Fatal(err)
	}
	if c.o.BackoffMin != DefaultBackoffMin || c.o.BackoffMax != DefaultBackoffMax {
		t.Errorf("default backoff = %v..%v", c.o.BackoffMin, c.o.BackoffMax)
	}
	for n := range 20 {
		if d := c.backoff(n); d < DefaultBackoffMin || d > DefaultBackoffMax {
			t.Errorf("backoff(%d) = %v, outside [%v, %v]", n, d, DefaultBackoffMin, DefaultBackoffMax)
		}
	}
}
