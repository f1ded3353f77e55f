package e2e

// The internal hops that carry or guard secrets, with the real binaries and the real
// Envoy: extauthz (which answers with provider keys) and the control plane's xDS stream
// (which carries the caller policy) on unix sockets in a directory only the edge's user
// can open, or on TCP with mutual TLS; upstream CA bundles reloaded from disk.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/transport/pkitest"
	"github.com/llmedge/llmedge/internal/wire"
)

const sockKey = "sk-sockets-openai-key"

// rotatingUpstream is the fake provider over TLS with a certificate the test can swap. It
// speaks HTTP/1.1 and closes every connection after one answer, so each request makes a
// new TLS handshake and sees the certificate and trust in force at that moment.
type rotatingUpstream struct {
	*fakellm.Server
	addr string
	cert atomic.Pointer[tls.Certificate]
}

func startRotatingUpstream(t *testing.T, pki *fakellm.PKI) *rotatingUpstream {
	t.Helper()
	u := &rotatingUpstream{Server: fakellm.New(fakellm.Options{})}
	u.use(t, pki)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	hs := &http.Server{Handler: u.Server, ReadHeaderTimeout: 5 * time.Second, TLSConfig: &tls.Config{
		MinVersion: tls.VersionTLS12,
		// A resumed session skips certificate verification: every handshake must be full.
		SessionTicketsDisabled: true,
		NextProtos:             []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return u.cert.Load(), nil
		},
	}}
	hs.SetKeepAlivesEnabled(false)
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })
	return u
}

// startTrustedUpstream starts a rotating upstream for api.openai.test with a fresh PKI and
// writes that PKI's CA to dir/upstream-ca.pem, the ca_file the edge trusts it by.
func startTrustedUpstream(t *testing.T, dir string) (up *rotatingUpstream, caFile string) {
	t.Helper()
	pki, err := fakellm.NewPKI([]string{"api.openai.test"})
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(caFile, pki.CACertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return startRotatingUpstream(t, pki), caFile
}

// use makes the upstream present pki's server certificate from the next handshake on.
func (u *rotatingUpstream) use(t *testing.T, pki *fakellm.PKI) {
	t.Helper()
	cfg, err := pki.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	u.cert.Store(&cfg.Certificates[0])
}

// sockEdge is one region (hk) wired over unix sockets: a control plane on
// <run>/xds.sock, an extauthz on <run>/extauthz.sock (or as the options say), and a real
// Envoy bootstrapped over the xDS socket. run is mode 0700.
type sockEdge struct {
	t                 *testing.T
	dir, run          string
	routes            string
	cpSock, authzSock string
	authzHTTP         int
	port              int
	token             string
	cp, authz         *testenv.Process
	cpArgs            []string
	envoy             *testenv.EnvoyProcess
}

type sockOptions struct {
	upstream, caFile string
	// authzAddr is regions.hk.extauthz and --grpc-listen; default the unix socket.
	authzAddr string
	authzArgs []string // more llmedge extauthz flags (TLS files)
	region    string   // more YAML lines under regions.hk (indented 4)
	caller    string   // more YAML lines under callers.alice (indented 4)
	// xdsTLS, when set, makes the control plane also listen on a loopback TCP port with
	// mutual TLS (server certificate, key, client CA), and Envoy connect there with
	// envoyTLS (its certificate, key, and the CA of the control plane's certificate).
	xdsTLS, envoyTLS *transport.Files
	// envoySDSDir has Envoy take envoyTLS through SDS documents in this directory
	// (llmedge bootstrap --xds-tls-sds-dir), so it picks up replaced files.
	envoySDSDir string
}

func newSockEdge(t *testing.T, o sockOptions) *sockEdge {
	t.Helper()
	e := &sockEdge{t: t, dir: t.TempDir(), port: testenv.FreePort(t), authzHTTP: testenv.FreePort(t)}
	e.run = filepath.Join(e.dir, "run")
	if err := os.Mkdir(e.run, 0o700); err != nil {
		t.Fatal(err)
	}
	e.cpSock = filepath.Join(e.run, "xds.sock")
	e.authzSock = filepath.Join(e.run, "extauthz.sock")
	if o.authzAddr == "" {
		o.authzAddr = "unix:" + e.authzSock
	}
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	e.token = tok
	writeKey(t, filepath.Join(e.dir, "keys"), "openai", "k1", sockKey)
	e.routes = filepath.Join(e.dir, "routes.yaml")
	doc := fmt.Sprintf(`version: 1
regions:
  hk:
    listen: 127.0.0.1:%d
    extauthz: %s
    upstreams: [openai]
%s
upstreams:
  openai:
    url: https://api.openai.test
    endpoint: %s
    protocol: http1
    tls: {ca_file: %s}
    allowed_regions: [hk]
routes:
  openai: {match: {prefix: /openai}, upstream: openai, prefix_rewrite: /}
callers:
  alice:
    tokens: [%s]
    upstreams: [openai]
%s
`, e.port, o.authzAddr, o.region, o.upstream, o.caFile, token.DigestRef(tok), o.caller)
	if err := os.WriteFile(e.routes, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}

	cpArgs := []string{"controlplane",
		"--config", e.routes,
		"--xds-listen", "unix:" + e.cpSock,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--log-level", "debug",
	}
	bootstrapArgs := []string{"bootstrap", "--region", "hk", "--admin-port", "0", "--xds", "unix:" + e.cpSock}
	if o.xdsTLS != nil {
		tcp := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		cpArgs[4] += "," + tcp
		cpArgs = append(cpArgs, "--tls-cert", o.xdsTLS.Cert, "--tls-key", o.xdsTLS.Key, "--tls-client-ca", o.xdsTLS.CA)
		bootstrapArgs = []string{"bootstrap", "--region", "hk", "--admin-port", "0", "--xds", tcp,
			"--xds-tls-cert", o.envoyTLS.Cert, "--xds-tls-key", o.envoyTLS.Key, "--xds-tls-ca", o.envoyTLS.CA}
		if o.envoySDSDir != "" {
			bootstrapArgs = append(bootstrapArgs, "--xds-tls-sds-dir", o.envoySDSDir)
		}
	}
	e.cpArgs = cpArgs
	e.cp = testenv.Start(t, "controlplane", exec.Command(llmedgeBin, cpArgs...))
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		_, err := os.Stat(e.cpSock)
		return err
	})
	args := append([]string{"extauthz",
		"--region", "hk",
		"--xds", "unix:" + e.cpSock,
		"--grpc-listen", o.authzAddr,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", e.authzHTTP),
		"--keys-dir", filepath.Join(e.dir, "keys"),
		"--log-level", "debug",
	}, o.authzArgs...)
	e.authz = testenv.Start(t, "extauthz", exec.Command(llmedgeBin, args...))
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", e.authzHTTP))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("extauthz /readyz %d", resp.StatusCode)
		}
		return nil
	})

	out, err := exec.Command(llmedgeBin, bootstrapArgs...).Output()
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if o.xdsTLS == nil && !strings.Contains(string(out), "pipe:") {
		t.Fatalf("bootstrap for a unix xDS address has no pipe cluster:\n%s", out)
	}
	bootstrap := filepath.Join(e.dir, "envoy.yaml")
	if err := os.WriteFile(bootstrap, out, 0o644); err != nil {
		t.Fatal(err)
	}
	e.envoy = testenv.StartEnvoy(t, "envoy-hk", bootstrap)
	return e
}

// chat sends one chat completion through the edge.
func (e *sockEdge) chat() (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/openai/v1/chat/completions", e.port),
		strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitChatOK polls until a request through the edge succeeds.
func (e *sockEdge) waitChatOK() {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, 50*time.Millisecond, func() error {
		code, body, err := e.chat()
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("edge answered %d: %s", code, body)
		}
		return nil
	})
}

// systemPython is a python3 that any user may run (a per-user install under /root is
// not), or "" when there is none.
func systemPython() string {
	for _, p := range []string{"/usr/bin/python3", "/usr/local/bin/python3"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 != 0 {
			return p
		}
	}
	return ""
}

// connectAs tries to connect to a unix socket from a child process running as uid (and
// gid) and returns its combined output and error.
func connectAs(t *testing.T, python, sock string, uid uint32) (string, error) {
	t.Helper()
	probe := `import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected")`
	cmd := exec.Command(python, "-c", probe, sock)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestSocketsEdge(t *testing.T) {
	up, caFile := startTrustedUpstream(t, t.TempDir())
	e := newSockEdge(t, sockOptions{upstream: up.addr, caFile: caFile})

	t.Run("request through the edge gets the key injected", func(t *testing.T) {
		e.waitChatOK()
		reqs := up.Requests()
		if len(reqs) == 0 {
			t.Fatal("the fake upstream recorded no request")
		}
		if got := reqs[len(reqs)-1].Header.Get("Authorization"); got != "Bearer "+sockKey {
			t.Errorf("upstream saw Authorization %q, want the provider key", got)
		}
	})

	t.Run("sockets are private to the edge's user", func(t *testing.T) {
		for _, sock := range []string{e.authzSock, e.cpSock} {
			fi, err := os.Stat(sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode %#o, want 0600", sock, fi.Mode().Perm())
			}
		}
		if os.Geteuid() != 0 {
			t.Skip("needs root to start a process as another user")
		}
		python := systemPython()
		if python == "" {
			t.Skip("no system python3 to probe the sockets with")
		}
		for _, sock := range []string{e.authzSock, e.cpSock} {
			// The control: the same probe as the edge's own user connects.
			if out, err := connectAs(t, python, sock, uint32(os.Geteuid())); err != nil || !strings.Contains(out, "connected") {
				t.Fatalf("the probe cannot connect to %s even as the edge's user: %v\n%s", sock, err, out)
			}
			out, err := connectAs(t, python, sock, 65534)
			if err == nil || strings.Contains(out, "connected") {
				t.Errorf("uid 65534 connected to %s:\n%s", sock, out)
			}
			if !strings.Contains(out, "PermissionError") {
				t.Errorf("uid 65534 on %s: want a permission error, got:\n%s", sock, out)
			}
		}
	})

	t.Run("plain TCP extauthz off loopback is refused at start-up", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, llmedgeBin, "extauthz", "--region", "hk",
			"--xds", "unix:"+e.cpSock,
			"--grpc-listen", fmt.Sprintf("0.0.0.0:%d", testenv.FreePort(t)),
			"--http-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			"--keys-dir", filepath.Join(e.dir, "keys"))
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("extauthz kept running on plain TCP 0.0.0.0:\n%s", out)
		}
		if err == nil || !strings.Contains(string(out), "plain TCP on a non-loopback address") {
			t.Errorf("extauthz --grpc-listen 0.0.0.0: err %v, output:\n%s", err, out)
		}
	})

	t.Run("plain TCP xDS off loopback is refused at start-up", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, llmedgeBin, "controlplane", "--config", e.routes,
			"--xds-listen", fmt.Sprintf("0.0.0.0:%d", testenv.FreePort(t)),
			"--http-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))).CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("the control plane kept running on plain TCP 0.0.0.0:\n%s", out)
		}
		if err == nil || !strings.Contains(string(out), "plain TCP on a non-loopback address") {
			t.Errorf("controlplane --xds-listen 0.0.0.0: err %v, output:\n%s", err, out)
		}
	})
}

// TestSocketsRatelimitOverPipe: Envoy reaches envoyproxy/ratelimit on a unix socket
// (GRPC_UDS; its health check, and token limits, go there), ratelimit reads
// its config from the control plane's unix socket, and extauthz checks request quotas
// against the same Redis over its unix socket.
func TestSocketsRatelimitOverPipe(t *testing.T) {
	up, caFile := startTrustedUpstream(t, t.TempDir())
	rlDir := filepath.Join(t.TempDir(), "rl")
	if err := os.Mkdir(rlDir, 0o700); err != nil {
		t.Fatal(err)
	}
	rlSock := filepath.Join(rlDir, "ratelimit.sock")
	redis := testenv.StartRedis(t)
	e := newSockEdge(t, sockOptions{
		upstream: up.addr, caFile: caFile,
		region:    "    ratelimit: unix:" + rlSock + "\n    ratelimit_failure: deny",
		caller:    "    limits:\n      - {requests: 2, per: hour}",
		authzArgs: []string{"--redis", redis.Addr()},
	})
	rl := testenv.StartRatelimit(t, testenv.RatelimitOptions{
		Region: "hk", XDSAddr: "unix:" + e.cpSock, RedisAddr: redis.Addr(),
		// No TCP listener to wait for: gRPC is on the socket.
		ExtraEnv: []string{"GRPC_UDS=" + rlSock, "FORCE_START_WITHOUT_INITIAL_CONFIG=false"},
	})
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !rl.Healthy() {
			return fmt.Errorf("ratelimit has no config yet")
		}
		_, err := os.Stat(rlSock)
		return err
	})

	// Envoy's health check of ratelimit passes over the pipe.
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		if n := envoyStat(t, e.envoy, "cluster.llmedge_ratelimit.membership_healthy"); n != 1 {
			return fmt.Errorf("Envoy's ratelimit cluster has %d healthy hosts over the pipe", n)
		}
		return nil
	})
	// Fail closed: until extauthz reaches Redis every request is refused, so two
	// successes prove the quota path works, and the third is over the quota.
	e.waitChatOK()
	code, body, err := e.chat()
	if err != nil || code != http.StatusOK {
		t.Fatalf("second request: %d %v %s", code, err, body)
	}
	code, body, err = e.chat()
	if err != nil || code != http.StatusTooManyRequests {
		t.Fatalf("third request: %d %v, want 429: %s", code, err, body)
	}
}

// TestMTLSExtAuthz: extauthz and the control plane across the network: TCP with mutual
// TLS. Envoy presents the client certificate from regions.hk.internal_tls to extauthz and
// the one from its bootstrap to the control plane, and works; a client without a
// certificate, or with one from another CA, gets no answer.
func TestMTLSExtAuthz(t *testing.T) {
	tlsDir := t.TempDir()
	up, caFile := startTrustedUpstream(t, tlsDir)

	ca := pkitest.NewCA(t, tlsDir, "internal")
	other := pkitest.NewCA(t, tlsDir, "other")
	srv := ca.Server(t, "extauthz", "127.0.0.1")
	envoyCert := ca.Region(t, "envoy", "hk", transport.ComponentEnvoy)
	cpCert := ca.Server(t, "controlplane", "127.0.0.1")
	authzAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	e := newSockEdge(t, sockOptions{
		upstream: up.addr, caFile: caFile, authzAddr: authzAddr,
		xdsTLS:    &transport.Files{Cert: cpCert.Cert, Key: cpCert.Key, CA: ca.CertFile},
		envoyTLS:  &transport.Files{Cert: envoyCert.Cert, Key: envoyCert.Key, CA: ca.CertFile},
		authzArgs: []string{"--tls-cert", srv.Cert, "--tls-key", srv.Key, "--tls-client-ca", ca.CertFile},
		region: fmt.Sprintf("    internal_tls: {cert_file: %s, key_file: %s, ca_file: %s}",
			envoyCert.Cert, envoyCert.Key, ca.CertFile),
	})
	e.waitChatOK()
	for _, p := range []*testenv.Process{e.authz, e.cp} {
		if !strings.Contains(p.Log(), "listening with mutual TLS") {
			t.Errorf("%s did not log a mutual-TLS listener:\n%s", p.Name, p.Log())
		}
	}
	if !strings.Contains(e.cp.Log(), `"node_id":"envoy-hk-1"`) {
		t.Errorf("Envoy's xDS stream did not reach the control plane over mutual TLS")
	}

	checkWith := func(creds grpc.DialOption) error {
		conn, err := grpc.NewClient(authzAddr, creds)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			ContextExtensions: map[string]string{wire.ContextRegion: "hk", wire.ContextUpstream: "openai", wire.ContextRoute: "openai"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Path: "/v1/chat/completions", Headers: map[string]string{"authorization": "Bearer " + e.token},
			}},
		}})
		if err != nil {
			return err
		}
		if strings.Contains(resp.String(), sockKey) {
			return fmt.Errorf("answered with the provider key")
		}
		return fmt.Errorf("answered: %v", resp.GetStatus())
	}
	tlsCreds := func(p pkitest.Pair) grpc.DialOption {
		cfg, err := transport.ClientConfig(transport.Files{Cert: p.Cert, Key: p.Key, CA: ca.CertFile}, "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	}
	// The control: a client holding the right certificate gets the key (as Envoy does).
	if err := checkWith(tlsCreds(ca.Client(t, "tester", "tester"))); err == nil || !strings.Contains(err.Error(), "provider key") {
		t.Fatalf("a client with the right certificate: %v; want the provider key", err)
	}
	if err := checkWith(grpc.WithTransportCredentials(insecure.NewCredentials())); err == nil || strings.Contains(err.Error(), "answered") {
		t.Errorf("plain TCP client: %v; want no answer", err)
	}
	noCert, err := transport.ClientConfig(transport.Files{Cert: srv.Cert, Key: srv.Key, CA: ca.CertFile}, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	noCert.GetClientCertificate = nil
	if err := checkWith(grpc.WithTransportCredentials(credentials.NewTLS(noCert))); err == nil || strings.Contains(err.Error(), "answered") {
		t.Errorf("TLS client without a certificate: %v; want no answer", err)
	}
	if err := checkWith(tlsCreds(other.Client(t, "stranger", "envoy-hk"))); err == nil || strings.Contains(err.Error(), "answered") {
		t.Errorf("client certificate from another CA: %v; want no answer", err)
	}
}

// TestCAFileRotationIsPickedUp: the upstream moves to a certificate from a new CA; once
// the operator replaces tls.ca_file on disk, the running Envoy trusts the new bundle with
// no other config change.
func TestCAFileRotationIsPickedUp(t *testing.T) {
	oldPKI, err := fakellm.NewPKI([]string{"api.openai.test"})
	if err != nil {
		t.Fatal(err)
	}
	newPKI, err := fakellm.NewPKI([]string{"api.openai.test"})
	if err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := os.Mkdir(caDir, 0o755); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(caDir, "upstream-ca.pem")
	replace := func(pem []byte) {
		t.Helper()
		if err := os.WriteFile(caFile+".tmp", pem, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(caFile+".tmp", caFile); err != nil {
			t.Fatal(err)
		}
	}
	replace(oldPKI.CACertPEM)
	up := startRotatingUpstream(t, oldPKI)
	e := newSockEdge(t, sockOptions{upstream: up.addr, caFile: caFile})
	e.waitChatOK()

	// The provider rotates first: Envoy must refuse the certificate it cannot verify.
	up.use(t, newPKI)
	code, body, err := e.chat()
	if err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("with an untrusted upstream certificate: %d %v, want 503: %s", code, err, body)
	}
	// The operator replaces the bundle; nothing else changes.
	replace(newPKI.CACertPEM)
	e.waitChatOK()
	if n := strings.Count(e.cp.Log(), "routes config applied"); n != 1 {
		t.Errorf("the control plane applied %d configs; want the first only (no config change)", n)
	}
}

// TestMTLSXDSClientCertRotation: Envoy's own certificate for the control plane, taken
// through SDS documents, is replaced on disk together with the control plane's client CA;
// after the control plane restarts (so Envoy must connect afresh) only the new
// certificate is accepted, and Envoy comes back with it, without a restart of its own.
func TestMTLSXDSClientCertRotation(t *testing.T) {
	tlsDir := t.TempDir()
	up, caFile := startTrustedUpstream(t, tlsDir)

	ca := pkitest.NewCA(t, tlsDir, "internal")
	cpCert := ca.Server(t, "controlplane", "127.0.0.1")
	envoyCert := ca.Region(t, "envoy", "hk", transport.ComponentEnvoy)
	clientCA := filepath.Join(tlsDir, "clients-ca.pem")
	replaceFile(t, ca.CertFile, clientCA)
	sdsDir := filepath.Join(t.TempDir(), "sds")
	if err := os.Mkdir(sdsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	e := newSockEdge(t, sockOptions{
		upstream: up.addr, caFile: caFile,
		xdsTLS:      &transport.Files{Cert: cpCert.Cert, Key: cpCert.Key, CA: clientCA},
		envoyTLS:    &transport.Files{Cert: envoyCert.Cert, Key: envoyCert.Key, CA: ca.CertFile},
		envoySDSDir: sdsDir,
	})
	e.waitChatOK()

	// Rotate to a new client CA: Envoy's certificate files and the control plane's client
	// CA are replaced (by renames), then the control plane restarts.
	next := pkitest.NewCA(t, t.TempDir(), "clients-2")
	newEnvoy := next.Region(t, "envoy-2", "hk", transport.ComponentEnvoy)
	replaceFile(t, newEnvoy.Key, envoyCert.Key)
	replaceFile(t, newEnvoy.Cert, envoyCert.Cert)
	replaceFile(t, next.CertFile, clientCA)
	e.cp.Stop()
	e.cp = testenv.Start(t, "controlplane-2", exec.Command(llmedgeBin, e.cpArgs...))
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(e.cp.Log(), `"node_id":"envoy-hk-1"`) {
			return fmt.Errorf("Envoy has not reconnected to the restarted control plane")
		}
		return nil
	})
	e.waitChatOK()
}

// replaceFile copies src over dst by a rename, as certificate tooling does.
func replaceFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		t.Fatal(err)
	}
}
