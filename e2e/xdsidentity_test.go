package e2e

// The control plane across the internet: xDS over mutual TLS where each client's
// certificate (issued by llmedge certs) names its region, with the real binaries, the real
// Envoy and the real envoyproxy/ratelimit. A client only ever receives its own region's
// resources, whatever its node claims.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/transport"
)

const idKey = "sk-xdsidentity-openai-key"

// idCPName is the DNS name in the control plane's certificate, besides 127.0.0.1.
const idCPName = "xds.llmedge.test"

// idEdge is a control plane serving regions hk and sg, on a unix socket and on a loopback
// port with mutual TLS, with every certificate issued by `llmedge certs`.
type idEdge struct {
	t           *testing.T
	dir, run    string
	pki         string // llmedge certs --dir
	routes      string
	xdsTLS      string // 127.0.0.1:port of the mutual-TLS listener
	httpAddr    string
	hkPort      int    // hk's Envoy listener
	hkRatelimit string // hk's ratelimit gRPC address in the routes
	upstream    *rotatingUpstream
	token       string
	cp          *testenv.Process
}

// certs runs llmedge certs with args against e.pki and returns its output.
func (e *idEdge) certs(args ...string) string {
	e.t.Helper()
	out, err := exec.Command(llmedgeBin, append(append([]string{"certs"}, args...), "--dir", e.pki)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("llmedge certs %v: %v\n%s", args, err, out)
	}
	if strings.Contains(string(out), "PRIVATE KEY") {
		e.t.Fatalf("llmedge certs %v printed a private key", args)
	}
	return string(out)
}

// issue gives region's component a certificate and returns its files with the CA.
func (e *idEdge) issue(region, component string) transport.Files {
	e.t.Helper()
	e.certs("issue", "--region", region, "--component", component)
	base := filepath.Join(e.pki, region+"-"+component)
	return transport.Files{Cert: base + ".pem", Key: base + "-key.pem", CA: filepath.Join(e.pki, "ca.pem")}
}

func newIDEdge(t *testing.T) *idEdge {
	t.Helper()
	e := &idEdge{t: t, dir: t.TempDir(), hkPort: testenv.FreePort(t)}
	e.run = filepath.Join(e.dir, "run")
	e.pki = filepath.Join(e.dir, "pki")
	if err := os.Mkdir(e.run, 0o700); err != nil {
		t.Fatal(err)
	}
	e.certs("init")
	e.certs("issue", "--component", "controlplane", "--dns", idCPName, "--ip", "127.0.0.1")

	var caFile string
	e.upstream, caFile = startTrustedUpstream(t, e.dir)
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	e.token = tok
	writeKey(t, filepath.Join(e.dir, "keys"), "openai", "k1", idKey)
	e.hkRatelimit = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// alice may use openai (hk only) and bob gemini (sg only), each with a limit, so each
	// region's caller policy and quotas name a different caller.
	doc := fmt.Sprintf(`version: 1
regions:
  hk:
    listen: 127.0.0.1:%d
    extauthz: unix:%s
    ratelimit: %s
    upstreams: [openai]
  sg:
    listen: 127.0.0.1:%d
    extauthz: unix:%s
    ratelimit: 127.0.0.1:%d
    upstreams: [gemini]
upstreams:
  openai:
    url: https://api.openai.test
    endpoint: %s
    protocol: http1
    tls: {ca_file: %s}
    allowed_regions: [hk]
  gemini:
    url: https://api.gemini.test
    endpoint: %s
    protocol: http1
    tls: {ca_file: %s}
    allowed_regions: [sg]
routes:
  openai: {match: {prefix: /openai}, upstream: openai, prefix_rewrite: /}
  gemini: {match: {prefix: /gemini}, upstream: gemini, prefix_rewrite: /}
callers:
  alice:
    tokens: [%s]
    upstreams: [openai]
    limits:
      - {requests: 1000, per: hour}
  bob:
    tokens: [%s]
    upstreams: [gemini]
    limits:
      - {requests: 7, per: minute}
`, e.hkPort, filepath.Join(e.run, "extauthz-hk.sock"), e.hkRatelimit,
		testenv.FreePort(t), filepath.Join(e.run, "extauthz-sg.sock"), testenv.FreePort(t),
		e.upstream.addr, caFile, e.upstream.addr, caFile,
		token.DigestRef(tok), token.DigestRef("bob-"+tok))
	e.routes = filepath.Join(e.dir, "routes.yaml")
	if err := os.WriteFile(e.routes, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}

	e.xdsTLS = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	e.httpAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	e.cp = testenv.Start(t, "controlplane", exec.Command(llmedgeBin, "controlplane",
		"--config", e.routes,
		"--xds-listen", "unix:"+filepath.Join(e.run, "xds.sock")+","+e.xdsTLS,
		"--tls-cert", filepath.Join(e.pki, "controlplane.pem"),
		"--tls-key", filepath.Join(e.pki, "controlplane-key.pem"),
		"--tls-client-ca", filepath.Join(e.pki, "ca.pem"),
		"--http-listen", e.httpAddr,
		"--log-level", "debug"))
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		c, err := net.Dial("tcp", e.xdsTLS)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return e
}

// refusals is the control plane's llmedge_xds_refused_total for reason.
func (e *idEdge) refusals(reason string) int {
	e.t.Helper()
	resp, err := http.Get("http://" + e.httpAddr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var n int
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, `llmedge_xds_refused_total{reason="`+reason+`"}`) {
			fmt.Sscanf(strings.Fields(line)[1], "%d", &n)
		}
	}
	return n
}

// waitRefusals waits until the control plane has refused at least n streams for reason
// since before was read.
func (e *idEdge) waitRefusals(reason string, before, n int) {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := e.refusals(reason) - before; got < n {
			return fmt.Errorf("%d %s refusals, want %d", got, reason, n)
		}
		return nil
	})
}

// startExtAuthz runs llmedge extauthz for region over mutual TLS with files.
func (e *idEdge) startExtAuthz(name, region string, files transport.Files, sock string) (*testenv.Process, string) {
	e.t.Helper()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(e.t))
	p := testenv.Start(e.t, name, exec.Command(llmedgeBin, "extauthz",
		"--region", region,
		"--xds", e.xdsTLS,
		"--xds-tls-cert", files.Cert, "--xds-tls-key", files.Key, "--xds-tls-ca", files.CA,
		"--grpc-listen", "unix:"+sock,
		"--http-listen", httpAddr,
		"--keys-dir", filepath.Join(e.dir, "keys"),
		"--log-level", "debug"))
	return p, "http://" + httpAddr + "/readyz"
}

func readyCode(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// adsFirst opens an ADS stream to the TLS port with creds, asks for typeURL as n, and
// returns the first response or the error that ended the stream.
func adsFirst(t *testing.T, addr string, creds grpc.DialOption, n *corev3.Node, typeURL string) (*discoveryv3.DiscoveryResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: typeURL}); err != nil {
		_, err = st.Recv()
		return nil, err
	}
	return st.Recv()
}

func tlsCreds(t *testing.T, f transport.Files) grpc.DialOption {
	t.Helper()
	cfg, err := transport.ClientConfig(f, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

func envoyNode(id, region string) *corev3.Node {
	return &corev3.Node{Id: id, Locality: &corev3.Locality{Region: region}}
}

// TestXDSIdentityClients: raw xDS clients against the real control plane.
func TestXDSIdentityClients(t *testing.T) {
	e := newIDEdge(t)
	sg := e.issue("sg", "envoy")

	t.Run("sg certificate claiming hk gets nothing of hk", func(t *testing.T) {
		before := e.refusals("region_mismatch")
		resp, err := adsFirst(t, e.xdsTLS, tlsCreds(t, sg), envoyNode("spy", "hk"), resourcev3.ListenerType)
		if resp != nil {
			t.Fatalf("sg's certificate was sent %s for hk: %v", resp.GetTypeUrl(), resp.GetResources())
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("err = %v; want PermissionDenied", err)
		}
		e.waitRefusals("region_mismatch", before, 1)
		if log := e.cp.Log(); !strings.Contains(log, `"node_id":"spy","region":"hk"`) || !strings.Contains(log, `"cert_region":"sg"`) {
			t.Errorf("no refusal log naming the claimed (hk) and certified (sg) region:\n%s", log)
		}
	})

	t.Run("sg certificate with sg's node gets sg's listener", func(t *testing.T) {
		resp, err := adsFirst(t, e.xdsTLS, tlsCreds(t, sg), envoyNode("envoy-sg", "sg"), resourcev3.ListenerType)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) == 0 {
			t.Fatal("no listener for sg")
		}
		for _, a := range resp.GetResources() {
			var l listenerv3.Listener
			if err := a.UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(l.GetName(), "hk") {
				t.Errorf("sg was sent hk's listener %q", l.GetName())
			}
		}
	})

	t.Run("no client certificate gets no connection", func(t *testing.T) {
		cfg, err := transport.ClientConfig(sg, "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.GetClientCertificate = nil
		resp, err := adsFirst(t, e.xdsTLS, grpc.WithTransportCredentials(credentials.NewTLS(cfg)), envoyNode("anon", "hk"), resourcev3.ListenerType)
		if resp != nil || err == nil || status.Code(err) == codes.PermissionDenied {
			t.Errorf("no certificate: resp %v, err %v; want the connection refused", resp, err)
		}
	})

	t.Run("a certificate from another CA is refused", func(t *testing.T) {
		other := &idEdge{t: t, pki: filepath.Join(t.TempDir(), "other")}
		other.certs("init")
		stranger := other.issue("hk", "envoy")
		stranger.CA = sg.CA // it still trusts the control plane
		resp, err := adsFirst(t, e.xdsTLS, tlsCreds(t, stranger), envoyNode("stranger", "hk"), resourcev3.ListenerType)
		if resp != nil || err == nil {
			t.Errorf("another CA's hk certificate: resp %v, err %v; want no answer", resp, err)
		}
	})

	t.Run("server certificate rotation is picked up", func(t *testing.T) {
		serial := func() string {
			c, err := tls.Dial("tcp", e.xdsTLS, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"},
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					pair, err := tls.LoadX509KeyPair(sg.Cert, sg.Key)
					return &pair, err
				}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
		}
		fileSerial := func() string {
			b, err := os.ReadFile(filepath.Join(e.pki, "controlplane.pem"))
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(b)
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return c.SerialNumber.String()
		}
		if got, want := serial(), fileSerial(); got != want {
			t.Fatalf("served serial %s, file %s", got, want)
		}
		// --renew with another name reissues at once (a rename over the old files).
		e.certs("issue", "--component", "controlplane", "--dns", idCPName, "--dns", "xds2.llmedge.test", "--ip", "127.0.0.1", "--renew")
		want := fileSerial()
		testenv.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
			if got := serial(); got != want {
				return fmt.Errorf("served serial %s, want the renewed %s", got, want)
			}
			return nil
		})
		// And the renewed certificate is still accepted by a verifying client.
		if _, err := adsFirst(t, e.xdsTLS, tlsCreds(t, sg), envoyNode("envoy-sg", "sg"), resourcev3.ListenerType); err != nil {
			t.Errorf("after rotation: %v", err)
		}
	})
}

// TestXDSIdentityEnvoyAndExtAuthz: hk's extauthz and the real Envoy, each with hk's
// certificate over mutual TLS, get their config and serve a request; an extauthz holding
// sg's certificate but asking for hk gets nothing.
func TestXDSIdentityEnvoyAndExtAuthz(t *testing.T) {
	e := newIDEdge(t)

	t.Run("extauthz with the wrong region's certificate gets nothing", func(t *testing.T) {
		before := e.refusals("region_mismatch")
		spy, ready := e.startExtAuthz("extauthz-spy", "hk", e.issue("sg", "extauthz"), filepath.Join(e.run, "spy.sock"))
		// It reconnects after each refusal: two refusals prove it kept asking.
		e.waitRefusals("region_mismatch", before, 2)
		if code := readyCode(ready); code != http.StatusServiceUnavailable {
			t.Errorf("extauthz with sg's certificate asking for hk: /readyz %d, want 503 (no policy)", code)
		}
		if strings.Contains(spy.Log(), "policy applied") || strings.Contains(spy.Log(), `"policy_version"`) {
			t.Errorf("the spy logged a policy:\n%s", spy.Log())
		}
		spy.Stop()
	})

	_, ready := e.startExtAuthz("extauthz-hk", "hk", e.issue("hk", "extauthz"), filepath.Join(e.run, "extauthz-hk.sock"))
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		if code := readyCode(ready); code != http.StatusOK {
			return fmt.Errorf("extauthz hk /readyz %d", code)
		}
		return nil
	})

	envoyCert := e.issue("hk", "envoy")
	sdsDir := filepath.Join(e.dir, "sds")
	if err := os.Mkdir(sdsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(llmedgeBin, "bootstrap", "--region", "hk", "--admin-port", "0", "--xds", e.xdsTLS,
		"--xds-tls-cert", envoyCert.Cert, "--xds-tls-key", envoyCert.Key, "--xds-tls-ca", envoyCert.CA,
		"--xds-tls-sds-dir", sdsDir).Output()
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	bootstrap := filepath.Join(e.dir, "envoy.yaml")
	if err := os.WriteFile(bootstrap, out, 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.StartEnvoy(t, "envoy-hk", bootstrap)
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/openai/v1/chat/completions", e.hkPort),
			strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+e.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("edge answered %d: %s", resp.StatusCode, b)
		}
		return nil
	})
	if reqs := e.upstream.Requests(); len(reqs) == 0 || reqs[len(reqs)-1].Header.Get("Authorization") != "Bearer "+idKey {
		t.Error("the upstream did not see the provider key injected")
	}
	if st := e.status(t); !strings.Contains(st, `"identity": "spiffe://llmedge/region/hk/envoy"`) {
		t.Errorf("/status does not show Envoy's certified identity:\n%s", st)
	}
}

func (e *idEdge) status(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + e.httpAddr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestXDSIdentityRatelimit: envoyproxy/ratelimit's own xDS client over mutual TLS
// (CONFIG_GRPC_XDS_SERVER_USE_TLS and friends) with hk's certificate receives hk's
// RateLimitConfig only; with sg's certificate while claiming hk it receives nothing.
func TestXDSIdentityRatelimit(t *testing.T) {
	e := newIDEdge(t)
	redis := testenv.StartRedis(t)
	tlsEnv := func(f transport.Files) []string {
		return []string{
			"CONFIG_GRPC_XDS_SERVER_USE_TLS=true",
			"CONFIG_GRPC_XDS_CLIENT_TLS_CERT=" + f.Cert,
			"CONFIG_GRPC_XDS_CLIENT_TLS_KEY=" + f.Key,
			"CONFIG_GRPC_XDS_SERVER_TLS_CACERT=" + f.CA,
			// The name the control plane's certificate is checked against.
			"CONFIG_GRPC_XDS_SERVER_TLS_SAN=" + idCPName,
		}
	}

	before := e.refusals("region_mismatch")
	spy := testenv.StartRatelimit(t, testenv.RatelimitOptions{
		Region: "hk", NodeID: "ratelimit-spy", XDSAddr: e.xdsTLS, RedisAddr: redis.Addr(),
		ExtraEnv: tlsEnv(e.issue("sg", "ratelimit")),
	})
	e.waitRefusals("region_mismatch", before, 1)
	if cfg := spy.Config(t); strings.TrimSpace(cfg) != "" {
		t.Errorf("ratelimit with sg's certificate claiming hk loaded:\n%s", cfg)
	}
	if spy.Healthy() {
		t.Error("ratelimit with sg's certificate claiming hk is healthy (has a config)")
	}
	spy.Stop()

	_, port, _ := net.SplitHostPort(e.hkRatelimit)
	var grpcPort int
	fmt.Sscanf(port, "%d", &grpcPort)
	rl := testenv.StartRatelimit(t, testenv.RatelimitOptions{
		Region: "hk", XDSAddr: e.xdsTLS, RedisAddr: redis.Addr(), GRPCPort: grpcPort,
		ExtraEnv: tlsEnv(e.issue("hk", "ratelimit")),
	})
	rl.WaitHealthy(t)
	cfg := rl.Config(t)
	t.Logf("hk's ratelimit loaded over mutual TLS:\n%s", cfg)
	if !strings.Contains(cfg, "caller_alice") || !strings.Contains(cfg, "requests_per_unit=1000") {
		t.Errorf("hk's ratelimit lacks alice's hk limit:\n%s", cfg)
	}
	if strings.Contains(cfg, "caller_bob") || strings.Contains(cfg, "requests_per_unit=7") {
		t.Errorf("hk's ratelimit was sent sg's limits:\n%s", cfg)
	}
	if !strings.Contains(rl.Log(), idCPName) {
		t.Errorf("ratelimit did not log the server name it verified:\n%s", rl.LogTail(30))
	}
}
