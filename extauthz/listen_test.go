package extauthz

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/transport/pkitest"
)

func keysDir(t *testing.T) string {
	t.Helper()
	keys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(keys, "openai"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "openai", "k1"), []byte("sk-unit-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	return keys
}

// run starts an extauthz with o and waits until its listeners are bound.
func run(t *testing.T, o Options) *Main {
	t.Helper()
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- m.Run(t.Context()) }()
	select {
	case <-m.Ready():
	case err := <-errc:
		t.Fatalf("extauthz did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("extauthz did not start")
	}
	return m
}

// start runs an extauthz on grpcAddr with the given TLS files and a policy for one
// caller; it returns the running Main and the caller's token.
func start(t *testing.T, grpcAddr string, tls transport.Files) (*Main, string) {
	t.Helper()
	m := run(t, Options{Region: "hk", XDSServer: "127.0.0.1:1", GRPCAddress: grpcAddr, TLS: tls, HTTPAddress: "127.0.0.1:0", KeysDir: keysDir(t)})
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.apply("v1", policyResource(t, "hk", tok)); err != nil {
		t.Fatal(err)
	}
	return m, tok
}

func check(t *testing.T, target string, creds grpc.DialOption, tok string) (*authv3.CheckResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(target, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	return authv3.NewAuthorizationClient(conn).Check(ctx, checkRequest(tok), grpc.WaitForReady(false))
}

// TestPlainTCPListenerRefused: extauthz's answers carry provider keys, so it refuses to
// start in plain TCP on an address other hosts can reach.
func TestPlainTCPListenerRefused(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:10100", ":10100", "192.0.2.10:10100"} {
		m, err := New(Options{Region: "hk", XDSServer: "127.0.0.1:1", GRPCAddress: addr, HTTPAddress: "127.0.0.1:0", KeysDir: keysDir(t)})
		if err != nil {
			t.Fatal(err)
		}
		err = m.Run(t.Context())
		if !errors.Is(err, transport.ErrPlainTCP) {
			t.Errorf("--grpc-listen %s: Run = %v; want a refusal", addr, err)
		}
	}
}

func TestServesOnUnixSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := "unix:" + filepath.Join(dir, "extauthz.sock")
	m, tok := start(t, sock, transport.Files{})
	if m.GRPCAddr() != sock {
		t.Errorf("GRPCAddr = %q, want %q", m.GRPCAddr(), sock)
	}
	resp, err := check(t, "unix://"+filepath.Join(dir, "extauthz.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()), tok)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetOkResponse() == nil {
		t.Fatalf("Check over the unix socket = %v", resp)
	}

	// A directory others can open is refused at start-up.
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o755)
	m2, err := New(Options{Region: "hk", XDSServer: "127.0.0.1:1", GRPCAddress: "unix:" + open + "/e.sock", HTTPAddress: "127.0.0.1:0", KeysDir: keysDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "group and others must have no access") {
		t.Errorf("socket in a 0755 directory: Run = %v", err)
	}
}

// TestMutualTLSListener: over TCP with TLS files, only a client with a certificate from
// the configured CA gets an answer (and so a key).
func TestMutualTLSListener(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, dir, "internal")
	other := pkitest.NewCA(t, dir, "other")
	srv := ca.Server(t, "extauthz", "127.0.0.1")
	m, tok := start(t, "0.0.0.0:0", transport.Files{Cert: srv.Cert, Key: srv.Key, CA: ca.CertFile})
	port := m.GRPCAddr()[strings.LastIndex(m.GRPCAddr(), ":"):]
	target := "127.0.0.1" + port

	client := func(p pkitest.Pair, caFile string) grpc.DialOption {
		cfg, err := transport.ClientConfig(transport.Files{Cert: p.Cert, Key: p.Key, CA: caFile}, "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	}
	resp, err := check(t, target, client(ca.Client(t, "envoy", "envoy-hk"), ca.CertFile), tok)
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("client with the right certificate: %v %v", resp, err)
	}
	if resp, err := check(t, target, client(other.Client(t, "stranger", "envoy-hk"), ca.CertFile), tok); err == nil {
		t.Errorf("a certificate from another CA got an answer: %v", resp)
	}
	if resp, err := check(t, target, grpc.WithTransportCredentials(insecure.NewCredentials()), tok); err == nil {
		t.Errorf("a plain-TCP client got an answer: %v", resp)
	}
	noCert, err := transport.ClientConfig(transport.Files{Cert: srv.Cert, Key: srv.Key, CA: ca.CertFile}, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	noCert.GetClientCertificate = nil
	if resp, err := check(t, target, grpc.WithTransportCredentials(credentials.NewTLS(noCert)), tok); err == nil {
		t.Errorf("a TLS client without a certificate got an answer: %v", resp)
	}
}

// TestNoGRPC: extauthz inside Envoy (NoGRPC) listens on nothing but its HTTP port; the
// address it was given is neither parsed nor bound.
func TestNoGRPC(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "e.sock")
	m := run(t, Options{Region: "hk", XDSServer: "127.0.0.1:1", GRPCAddress: "unix:" + sock, NoGRPC: true, HTTPAddress: "127.0.0.1:0", KeysDir: keysDir(t)})
	if m.GRPCAddr() != "" {
		t.Errorf("GRPCAddr = %q, want none", m.GRPCAddr())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: %v, want no socket", sock, err)
	}
	resp, err := http.Get("http://" + m.HTTPAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
}
