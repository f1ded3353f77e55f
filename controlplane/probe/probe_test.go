package probe_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/probe"
	"github.com/llmedge/llmedge/internal/testenv"
)

const testToken = "llm_probe_secret_token_value"

func tokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "probe-token")
	if err := os.WriteFile(p, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// edge is an httptest stand-in for a region's edge; handler sees the probe's request.
func edge(t *testing.T, handler http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return srv
}

// plainUpstream is an upstream the prober inspects without DNS or TLS.
func plainUpstream(name string) model.Upstream {
	return model.Upstream{Name: name, Scheme: "http", Host: "127.0.0.1", Port: 1, ConnectHost: "127.0.0.1", ConnectPort: 1, API: model.APIOpenAI}
}

func config(edgeURL, tokFile string, timeout time.Duration, ups ...model.Upstream) *model.Config {
	cfg := &model.Config{Upstreams: ups, Probes: &model.Probes{
		Caller: "prober", TokenFile: tokFile, Interval: time.Hour, Timeout: timeout,
	}}
	for _, u := range ups {
		cfg.Probes.Targets = append(cfg.Probes.Targets, model.ProbeTarget{
			Region: "hk", Upstream: u.Name, API: u.API, Edge: edgeURL, Method: "GET", Path: "/openai/v1/models", Kind: model.ProbeModels,
		})
	}
	return cfg
}

func only(t *testing.T, p *probe.Prober) probe.Result {
	t.Helper()
	rs := p.Results()
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1: %+v", len(rs), rs)
	}
	return rs[0]
}

func TestProbeSuccess(t *testing.T) {
	var gotAuth, gotPath string
	srv := edge(t, func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotPath = r.Header.Get("Authorization"), r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"list","data":[]}`)
	})
	reg := prometheus.NewRegistry()
	p := probe.New(probe.Options{Registerer: reg})
	p.Update(config(srv.URL, tokenFile(t), 5*time.Second, plainUpstream("openai")))
	p.Round(t.Context())
	r := only(t, p)
	if !r.OK || r.Status != 200 || r.Error != "" {
		t.Errorf("result %+v; want OK, 200, no error", r)
	}
	if r.TTFB <= 0 || r.Latency < r.TTFB {
		t.Errorf("TTFB %v, latency %v; want 0 < TTFB <= latency", r.TTFB, r.Latency)
	}
	if gotAuth != "Bearer "+testToken || gotPath != "/openai/v1/models" {
		t.Errorf("edge saw %q %q; want the probe token and the target's path", gotAuth, gotPath)
	}
	if v := gauge(t, reg, "llmedge_probe_success"); v != 1 {
		t.Errorf("llmedge_probe_success = %v, want 1", v)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"ok":true`) || !strings.Contains(string(b), `"latency_ms":`) {
		t.Errorf("JSON %s lacks ok/latency_ms", b)
	}
	var back probe.Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Region != r.Region || !back.At.Equal(r.At) || !back.OK || back.Status != 200 || back.Latency.Microseconds() != r.Latency.Microseconds() {
		t.Errorf("JSON round trip %+v, want %+v", back, r)
	}
}

func TestProbeFailureNeverShowsToken(t *testing.T) {
	srv := edge(t, func(w http.ResponseWriter, r *http.Request) {
		// An answer echoing what it was sent must not leak the token into the result.
		http.Error(w, "bad gateway: "+r.Header.Get("Authorization"), http.StatusBadGateway)
	})
	reg := prometheus.NewRegistry()
	p := probe.New(probe.Options{Registerer: reg})
	p.Update(config(srv.URL, tokenFile(t), 5*time.Second, plainUpstream("openai")))
	p.Round(t.Context())
	r := only(t, p)
	if r.OK || r.Status != 502 || !strings.Contains(r.Error, "502") {
		t.Errorf("result %+v; want not OK, 502, an error naming the status", r)
	}
	b, _ := json.Marshal(p.Results())
	if strings.Contains(string(b), testToken) {
		t.Errorf("results carry the probe token: %s", b)
	}
	if v := gauge(t, reg, "llmedge_probe_success"); v != 0 {
		t.Errorf("llmedge_probe_success = %v, want 0", v)
	}

	// No edge at all: a connect error, no status.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	p.Update(config(dead, tokenFile(t), 5*time.Second, plainUpstream("openai")))
	p.Round(t.Context())
	if r := only(t, p); r.OK || r.Status != 0 || r.Error == "" {
		t.Errorf("result against a closed port %+v; want not OK, no status, an error", r)
	}
}

func TestProbeTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := edge(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select { // headers sent, body never finished
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	p := probe.New(probe.Options{})
	p.Update(config(srv.URL, tokenFile(t), 300*time.Millisecond, plainUpstream("openai")))
	p.Round(t.Context())
	r := only(t, p)
	if r.OK || !strings.Contains(r.Error, "timeout") || r.TTFB <= 0 {
		t.Errorf("result %+v; want not OK, a timeout error, a first byte seen", r)
	}
}

func TestProbeTokenFileUnreadable(t *testing.T) {
	called := false
	srv := edge(t, func(w http.ResponseWriter, r *http.Request) { called = true })
	p := probe.New(probe.Options{})
	missing := filepath.Join(t.TempDir(), "nope")
	p.Update(config(srv.URL, missing, time.Second, plainUpstream("openai")))
	p.Round(t.Context())
	r := only(t, p)
	if r.OK || !strings.Contains(r.Error, "probes.token_file") || !strings.Contains(r.Error, missing) || called {
		t.Errorf("result %+v (edge called: %v); want an error naming the token file and no call", r, called)
	}
}

// TestProbeCertExpiry reads the expiry of a certificate that runs out in 3 days with a
// direct handshake, using the SNI and CA bundle of the upstream's settings, and resolves
// a host name upstream.
func TestProbeCertExpiry(t *testing.T) {
	dir := t.TempDir()
	notAfter := time.Now().Add(72 * time.Hour).Truncate(time.Second).UTC()
	caFile, cert := shortLivedPKI(t, dir, "api.expiring.test", notAfter)
	up := httptest.NewUnstartedServer(http.NotFoundHandler())
	up.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	up.StartTLS()
	t.Cleanup(up.Close)
	host, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	var pn uint32
	fmt.Sscan(port, &pn)

	srv := edge(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "{}") })
	u := model.Upstream{
		Name: "expiring", Scheme: "https", Host: "api.expiring.test", Port: 443, ConnectHost: host, ConnectPort: pn,
		TLS: &model.TLS{SNI: "api.expiring.test", CAFile: caFile, Verify: true}, API: model.APIOpenAI,
	}
	named := model.Upstream{Name: "named", Scheme: "http", Host: "localhost", Port: 80, ConnectHost: "localhost", ConnectPort: 80, API: model.APIOpenAI}
	reg := prometheus.NewRegistry()
	p := probe.New(probe.Options{Registerer: reg})
	p.Update(config(srv.URL, tokenFile(t), 5*time.Second, u, named))
	p.Round(t.Context())
	rs := p.Results()
	if len(rs) != 2 || rs[0].Upstream != "expiring" || rs[1].Upstream != "named" {
		t.Fatalf("results %+v; want expiring, named", rs)
	}
	if r := rs[0]; !r.CertNotAfter.Equal(notAfter) || r.Error != "" || r.DNS != nil {
		t.Errorf("expiring: cert not after %v, error %q, dns %v; want %v, none, none (IP literal)", r.CertNotAfter, r.Error, r.DNS, notAfter)
	}
	if r := rs[1]; len(r.DNS) == 0 || !r.CertNotAfter.IsZero() {
		t.Errorf("named: dns %v, cert %v; want an answer for localhost, no certificate", r.DNS, r.CertNotAfter)
	}
	if v := gauge(t, reg, "llmedge_upstream_cert_expiry_timestamp_seconds"); v != float64(notAfter.Unix()) {
		t.Errorf("cert expiry metric %v, want %d", v, notAfter.Unix())
	}

	// The wrong SNI still reports the expiry, with the verification error.
	u.TLS.SNI = "other.test"
	p.Update(config(srv.URL, tokenFile(t), 5*time.Second, u))
	p.Round(t.Context())
	if r := only(t, p); !r.CertNotAfter.Equal(notAfter) || !strings.Contains(r.Error, "certificate") || !r.OK {
		t.Errorf("wrong SNI: %+v; want the expiry, a certificate error, the call still OK", r)
	}
}

// TestRunProbesOnUpdate: Run probes at once when the targets change, then at the interval.
func TestRunProbesOnUpdate(t *testing.T) {
	srv := edge(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "{}") })
	p := probe.New(probe.Options{})
	done := make(chan error)
	go func() { done <- p.Run(t.Context()) }()
	cfg := config(srv.URL, tokenFile(t), time.Second, plainUpstream("a"))
	cfg.Probes.Interval = 50 * time.Millisecond
	p.Update(cfg)
	var first time.Time
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		rs := p.Results()
		if len(rs) != 1 || !rs[0].OK {
			return fmt.Errorf("results %+v", rs)
		}
		first = rs[0].At
		return nil
	})
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if at := p.Results()[0].At; !at.After(first) {
			return fmt.Errorf("no second round yet")
		}
		return nil
	})
	p.Update(&model.Config{})
	if rs := p.Results(); len(rs) != 0 {
		t.Errorf("results %+v after the probes section went away; want none", rs)
	}
}

// gauge is the value of the first series of a gauge.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not gathered", name)
	return 0
}

// shortLivedPKI writes a CA to dir and returns its file and a server certificate for name
// that expires at notAfter.
func shortLivedPKI(t *testing.T, dir, name string, notAfter time.Time) (string, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "probe test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestResultJSONKeepsMicroseconds round-trips durations whose milliseconds a float64 holds
// only approximately (1.005 ms is 1.00499999… in binary): the /status form keeps whole
// microseconds, and reading it back must give the same ones, not one fewer.
func TestResultJSONKeepsMicroseconds(t *testing.T) {
	for _, us := range []int64{0, 1, 999, 1005, 1015, 4_294_967, 123_456_789} {
		r := probe.Result{Region: "hk", Upstream: "openai", OK: true, Status: 200,
			Latency: time.Duration(us)*time.Microsecond + 999*time.Nanosecond, TTFB: time.Duration(us) * time.Microsecond}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back probe.Result
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.Latency != time.Duration(us)*time.Microsecond || back.TTFB != time.Duration(us)*time.Microsecond {
			t.Errorf("%d µs: JSON %s read back as latency %v, TTFB %v", us, b, back.Latency, back.TTFB)
		}
	}
}
