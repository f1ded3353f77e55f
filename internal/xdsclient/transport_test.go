package xdsclient

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/transport/pkitest"
)

func policyCache() cachev3.Cache {
	return cachev3.NewLinearCache(policyType, cachev3.WithInitialResources(map[string]types.Resource{"hk": policy("hk", "alice")}))
}

// TestUnixSocket: a co-located control plane is reached at unix:/path.
func TestUnixSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	a := transport.Address{Path: filepath.Join(dir, "xds.sock")}
	ln, err := transport.Listen(a, transport.Files{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServerOn(t, ln, a.String(), policyCache())
	c := startClient(t, srv.addr, []string{"hk"}, nil)
	eventually(t, "policy over the unix socket", func() bool { return !c.Status().Updated.IsZero() })
}

// TestMutualTLS: over TCP the client presents its certificate and checks the server's;
// a client without the right certificate never gets the policy.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, dir, "internal")
	other := pkitest.NewCA(t, dir, "other")
	srvCert := ca.Server(t, "cp", "127.0.0.1")
	ln, err := transport.Listen(transport.Address{Host: "127.0.0.1"}, transport.Files{Cert: srvCert.Cert, Key: srvCert.Key, CA: ca.CertFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServerOn(t, ln, ln.Addr().String(), policyCache())

	good := ca.Client(t, "extauthz", "extauthz-hk")
	c := startClient(t, srv.addr, []string{"hk"}, func(o *Options) {
		o.TLS = transport.Files{Cert: good.Cert, Key: good.Key, CA: ca.CertFile}
	})
	eventually(t, "policy over mutual TLS", func() bool { return !c.Status().Updated.IsZero() })

	// Strangers: a certificate from another CA, and no TLS at all. They start before a
	// second good client, so by the time that one has its policy they had the same
	// chance; the server must never have seen a request from them.
	bad := other.Client(t, "stranger", "extauthz-hk")
	stranger := func(o *Options) { o.Node.Id = "stranger" }
	s := startClient(t, srv.addr, []string{"hk"}, func(o *Options) {
		stranger(o)
		o.TLS = transport.Files{Cert: bad.Cert, Key: bad.Key, CA: ca.CertFile}
	})
	plain := startClient(t, srv.addr, []string{"hk"}, stranger)
	second := startClient(t, srv.addr, []string{"hk"}, func(o *Options) {
		o.TLS = transport.Files{Cert: good.Cert, Key: good.Key, CA: ca.CertFile}
	})
	eventually(t, "a second good client", func() bool { return !second.Status().Updated.IsZero() })
	for name, rc := range map[string]*runningClient{"other CA": s, "no certificate": plain} {
		if st := rc.Status(); !st.Updated.IsZero() || st.Connected {
			t.Errorf("client with %s: status %+v; want nothing applied", name, st)
		}
	}
	for _, r := range srv.requests() {
		if r.req.GetNode().GetId() == "stranger" {
			t.Fatalf("the server answered a stranger's stream: %v", r.req)
		}
	}
}
