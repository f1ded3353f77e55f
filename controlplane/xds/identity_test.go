package xds

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/transport/pkitest"
)

// syncBuffer is a log sink the server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// identityFixture is a Server with hk and sg loaded, listening on a unix socket and on a
// loopback port with mutual TLS, as the control plane does.
type identityFixture struct {
	s        *Server
	reg      *prometheus.Registry
	logs     *syncBuffer
	ca       *pkitest.CA
	tlsAddr  transport.Address
	unixAddr transport.Address
}

func newIdentityFixture(t *testing.T, opts ...Option) *identityFixture {
	t.Helper()
	dir := t.TempDir()
	f := &identityFixture{reg: prometheus.NewRegistry(), logs: &syncBuffer{}, ca: pkitest.NewCA(t, dir, "internal")}
	f.s = New(t.Context(), slog.New(slog.NewJSONHandler(f.logs, nil)), f.reg, opts...)
	if _, err := f.s.Update(resources(t, testFile())); err != nil {
		t.Fatal(err)
	}
	srv := f.ca.Server(t, "cp", "127.0.0.1")
	tlsLn, err := transport.Listen(transport.Address{Host: "127.0.0.1"}, transport.Files{Cert: srv.Cert, Key: srv.Key, CA: f.ca.CertFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	f.unixAddr = transport.Address{Path: filepath.Join(run, "xds.sock")}
	unixLn, err := transport.Listen(f.unixAddr, transport.Files{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.tlsAddr, _ = transport.Parse(tlsLn.Addr().String())
	g := grpc.NewServer(append(ServerOptions(), grpc.Creds(transport.ServerCredentials()))...)
	f.s.Register(g)
	for _, ln := range []net.Listener{tlsLn, unixLn} {
		go g.Serve(ln)
	}
	t.Cleanup(g.Stop)
	return f
}

// dial connects over mutual TLS with p's certificate, or over the unix socket when p is nil.
func (f *identityFixture) dial(t *testing.T, p *pkitest.Pair) *grpc.ClientConn {
	t.Helper()
	a, files := f.unixAddr, transport.Files{}
	if p != nil {
		a, files = f.tlsAddr, transport.Files{Cert: p.Cert, Key: p.Key, CA: f.ca.CertFile}
	}
	target, creds, err := transport.GRPCClient(a, files, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// ask opens an ADS stream, sends reqs in order and returns the first response, or the
// error that ended the stream.
func ask(t *testing.T, conn *grpc.ClientConn, reqs ...*discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	var resp *discoveryv3.DiscoveryResponse
	for _, r := range reqs {
		if err := st.Send(r); err != nil {
			break // the server ended the stream; Recv says why
		}
		if resp, err = st.Recv(); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

func listenersOf(t *testing.T, region string) *discoveryv3.DiscoveryRequest {
	t.Helper()
	return &discoveryv3.DiscoveryRequest{Node: node("n-"+region, region), TypeUrl: resourcev3.ListenerType}
}

func wantDenied(t *testing.T, resp *discoveryv3.DiscoveryResponse, err error, what string) {
	t.Helper()
	if resp != nil {
		t.Errorf("%s: was sent %s version %s; want nothing", what, resp.GetTypeUrl(), resp.GetVersionInfo())
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("%s: err = %v; want PermissionDenied", what, err)
	}
}

// TestRegionIdentity: over mutual TLS a client gets the resources of the region its
// certificate names, and nothing of another region whatever its node claims.
func TestRegionIdentity(t *testing.T) {
	f := newIdentityFixture(t)
	sg := f.ca.Region(t, "sg-envoy", "sg", transport.ComponentEnvoy)

	t.Run("sg certificate claiming hk gets nothing", func(t *testing.T) {
		resp, err := ask(t, f.dial(t, &sg), listenersOf(t, "hk"))
		wantDenied(t, resp, err, "sg claiming hk")
		if err != nil && !strings.Contains(err.Error(), `node claims region "hk"`) {
			t.Errorf("refusal does not say what was claimed: %v", err)
		}
		logs := f.logs.String()
		if !strings.Contains(logs, `"msg":"xds client refused`) || !strings.Contains(logs, `"region":"hk"`) || !strings.Contains(logs, `"cert_region":"sg"`) {
			t.Errorf("no log line naming the claimed and the certified region:\n%s", logs)
		}
		if err := wantMetric(f.reg, "llmedge_xds_refused_total", map[string]string{"reason": refusedRegionMismatch}, 1); err != nil {
			t.Error(err)
		}
	})

	t.Run("sg certificate with sg's node gets sg's listeners", func(t *testing.T) {
		resp, err := ask(t, f.dial(t, &sg), listenersOf(t, "sg"))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetVersionInfo() != f.s.Versions()["sg"]["listeners"] {
			t.Errorf("sg got listeners version %s, want sg's %s", resp.GetVersionInfo(), f.s.Versions()["sg"]["listeners"])
		}
		for _, l := range unpack(t, resp, func() *listenerv3.Listener { return &listenerv3.Listener{} }) {
			if !strings.Contains(l.GetName(), "sg") {
				t.Errorf("sg was sent listener %q", l.GetName())
			}
		}
	})

	t.Run("switching region mid-stream is refused", func(t *testing.T) {
		resp, err := ask(t, f.dial(t, &sg), listenersOf(t, "sg"),
			&discoveryv3.DiscoveryRequest{Node: node("n-hk", "hk"), TypeUrl: resourcev3.ClusterType})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("second request claiming hk: resp %v, err %v; want PermissionDenied", resp.GetTypeUrl(), err)
		}
	})

	t.Run("ratelimit's node metadata is held to the certificate too", func(t *testing.T) {
		rl := f.ca.Region(t, "sg-ratelimit", "sg", transport.ComponentRatelimit)
		n := &corev3.Node{Id: "ratelimit-sg"}
		n.Metadata = mustStruct(t, map[string]any{"region": "hk"})
		resp, err := ask(t, f.dial(t, &rl), &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.RateLimitConfigType})
		wantDenied(t, resp, err, "ratelimit metadata region=hk with an sg certificate")
	})

	t.Run("a certificate without a region identity is refused", func(t *testing.T) {
		plain := f.ca.Client(t, "plain", "envoy-hk")
		resp, err := ask(t, f.dial(t, &plain), listenersOf(t, "hk"))
		wantDenied(t, resp, err, "no identity")
		if err := wantMetric(f.reg, "llmedge_xds_refused_total", map[string]string{"reason": refusedNoIdentity}, 1); err != nil {
			t.Error(err)
		}
	})

	t.Run("incremental xDS is held to the same rule", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), waitFor)
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t, &sg)).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node("n-hk", "hk"), TypeUrl: resourcev3.ListenerType}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if resp != nil || status.Code(err) != codes.PermissionDenied {
			t.Errorf("delta sg claiming hk: resp %v, err %v; want PermissionDenied", resp, err)
		}
	})

	t.Run("a unary fetch is held to the same rule", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), waitFor)
		defer cancel()
		resp, err := listenerservice.NewListenerDiscoveryServiceClient(f.dial(t, &sg)).FetchListeners(ctx, listenersOf(t, "hk"))
		wantDenied(t, resp, err, "fetch sg claiming hk")
	})

	t.Run("unix-socket clients are trusted as co-located", func(t *testing.T) {
		resp, err := ask(t, f.dial(t, nil), listenersOf(t, "hk"))
		if err != nil || resp.GetVersionInfo() != f.s.Versions()["hk"]["listeners"] {
			t.Errorf("unix client for hk: %v, %v", resp.GetVersionInfo(), err)
		}
	})

	t.Run("status shows the certified identity", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t, &sg)).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node("status-sg", "sg"), TypeUrl: resourcev3.ListenerType}); err != nil {
			t.Fatal(err)
		}
		eventually(t, waitFor, func() error {
			n, err := findNode(f.s, "status-sg")
			if err != nil {
				return err
			}
			if n.Region != "sg" || n.Identity != "spiffe://llmedge/region/sg/envoy" {
				t.Fatalf("status node = %+v", n)
			}
			return nil
		})
	})
}

// TestRegionIdentityRolloutHatch: with AllowCertificatesWithoutRegion a certificate that
// names no region is trusted as before, but one that names a region is still held to it.
func TestRegionIdentityRolloutHatch(t *testing.T) {
	f := newIdentityFixture(t, AllowCertificatesWithoutRegion())
	plain := f.ca.Client(t, "plain", "envoy-hk")
	if resp, err := ask(t, f.dial(t, &plain), listenersOf(t, "hk")); err != nil || resp == nil {
		t.Errorf("certificate without a region under the rollout option: %v", err)
	}
	sg := f.ca.Region(t, "sg-envoy", "sg", transport.ComponentEnvoy)
	resp, err := ask(t, f.dial(t, &sg), listenersOf(t, "hk"))
	wantDenied(t, resp, err, "sg claiming hk under the rollout option")
}

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
