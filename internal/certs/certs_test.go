package certs_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/certs"
	"github.com/llmedge/llmedge/internal/transport"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s mode %#o, want %#o", path, fi.Mode().Perm(), want)
	}
}

func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	res, err := certs.Init(dir, certs.DefaultCAValidity, now)
	if err != nil || !res.Created {
		t.Fatalf("Init: %+v, %v", res, err)
	}
	return dir
}

func TestInit(t *testing.T) {
	dir := newCA(t)
	wantMode(t, dir, 0o700)
	wantMode(t, filepath.Join(dir, certs.CAKeyFile), 0o600)
	ca := readCert(t, filepath.Join(dir, certs.CACertFile))
	if !ca.IsCA || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, MaxPathLenZero %v, usage %v", ca.IsCA, ca.MaxPathLenZero, ca.KeyUsage)
	}
	before, _ := os.ReadFile(filepath.Join(dir, certs.CAKeyFile))
	res, err := certs.Init(dir, certs.DefaultCAValidity, now.Add(time.Hour))
	if err != nil || res.Created {
		t.Errorf("second Init: %+v, %v; want the CA left alone", res, err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, certs.CAKeyFile))
	if !bytes.Equal(before, after) {
		t.Error("a second Init replaced the CA key")
	}
	if err := os.Remove(filepath.Join(dir, certs.CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Init(dir, certs.DefaultCAValidity, now); err == nil || !strings.Contains(err.Error(), "only one of") {
		t.Errorf("Init with a lost key: %v", err)
	}
}

func TestIssue(t *testing.T) {
	dir := newCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, certs.CACertFile)))

	tests := []struct {
		name      string
		req       certs.Request
		file      string
		wantUsage []x509.ExtKeyUsage
		verifyAs  string // DNS name or IP the certificate must verify for as a server
	}{
		{name: "envoy client", req: certs.Request{Identity: transport.Identity{Region: "hk", Component: "envoy"}},
			file: "hk-envoy", wantUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{name: "extauthz serves Envoy too", req: certs.Request{Identity: transport.Identity{Region: "sg", Component: "extauthz"}, DNS: []string{"extauthz.sg.internal"}, IPs: []net.IP{net.ParseIP("10.0.0.5")}},
			file: "sg-extauthz", wantUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, verifyAs: "extauthz.sg.internal"},
		{name: "control plane serves only", req: certs.Request{Identity: transport.Identity{Component: "controlplane"}, DNS: []string{"cp.example.net"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}},
			file: "controlplane", wantUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, verifyAs: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := certs.Issue(dir, tt.req, now)
			if err != nil || !res.Issued {
				t.Fatalf("Issue: %+v, %v", res, err)
			}
			if res.Cert != filepath.Join(dir, tt.file+".pem") || res.Key != filepath.Join(dir, tt.file+"-key.pem") {
				t.Errorf("files %s, %s", res.Cert, res.Key)
			}
			wantMode(t, res.Key, 0o600)
			c := readCert(t, res.Cert)
			if id, err := transport.IdentityOf(c); err != nil || id != tt.req.Identity {
				t.Errorf("identity %+v, %v; want %+v", id, err, tt.req.Identity)
			}
			if !slices.Equal(c.ExtKeyUsage, tt.wantUsage) {
				t.Errorf("EKU %v, want %v", c.ExtKeyUsage, tt.wantUsage)
			}
			if got := c.NotAfter.Sub(now); got != certs.DefaultValidity {
				t.Errorf("validity %v, want the 90-day default", got)
			}
			opts := x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: tt.wantUsage[:1], DNSName: tt.verifyAs}
			if _, err := c.Verify(opts); err != nil {
				t.Errorf("does not verify under the CA: %v", err)
			}
			if _, err := certs.Issue(dir, tt.req, now); err == nil || !strings.Contains(err.Error(), "--renew") {
				t.Errorf("issuing over an existing certificate: %v; want a pointer to --renew", err)
			}
		})
	}

	for name, req := range map[string]certs.Request{
		"no region":               {Identity: transport.Identity{Component: "envoy"}},
		"unknown component":       {Identity: transport.Identity{Region: "hk", Component: "admin"}},
		"control plane unnamed":   {Identity: transport.Identity{Component: "controlplane"}},
		"control plane in hk":     {Identity: transport.Identity{Region: "hk", Component: "controlplane"}, DNS: []string{"cp"}},
		"outlives the CA":         {Identity: transport.Identity{Region: "hk", Component: "ratelimit"}, Validity: 20 * 365 * 24 * time.Hour},
		"a URL where a name goes": {Identity: transport.Identity{Region: "hk", Component: "ratelimit"}, DNS: []string{"https://x"}},
	} {
		if res, err := certs.Issue(dir, req, now); err == nil {
			t.Errorf("%s: issued %s", name, res.Cert)
		}
	}
	if _, err := certs.Issue(t.TempDir(), certs.Request{Identity: transport.Identity{Region: "hk", Component: "envoy"}}, now); err == nil || !strings.Contains(err.Error(), "certs init") {
		t.Errorf("no CA: %v", err)
	}
}

func TestRenew(t *testing.T) {
	dir := newCA(t)
	req := certs.Request{Identity: transport.Identity{Region: "hk", Component: "ratelimit"}, Renew: true}
	first, err := certs.Issue(dir, req, now)
	if err != nil || !first.Issued {
		t.Fatalf("first issue with --renew: %+v, %v", first, err)
	}
	orig, _ := os.ReadFile(first.Cert)
	origKey, _ := os.ReadFile(first.Key)

	// Not due: nothing changes, however often it runs.
	for _, at := range []time.Time{now, now.Add(24 * time.Hour), now.Add(59 * 24 * time.Hour)} {
		res, err := certs.Issue(dir, req, at)
		if err != nil || res.Issued || !strings.Contains(res.Why, "nothing to do") {
			t.Errorf("renew at %s: %+v, %v; want it kept", at, res, err)
		}
	}
	if b, _ := os.ReadFile(first.Cert); !bytes.Equal(b, orig) {
		t.Error("an early renew rewrote the certificate")
	}

	// Inside the 30-day window: a new certificate and a new key.
	res, err := certs.Issue(dir, req, now.Add(61*24*time.Hour))
	if err != nil || !res.Issued || !strings.Contains(res.Why, "renewal window") {
		t.Fatalf("renew when due: %+v, %v", res, err)
	}
	if k, _ := os.ReadFile(res.Key); bytes.Equal(k, origKey) {
		t.Error("renewal kept the old key")
	}
	wantMode(t, res.Key, 0o600)

	// Other names asked for: reissued at once.
	req.DNS = []string{"ratelimit.hk.internal"}
	res, err = certs.Issue(dir, req, now.Add(62*24*time.Hour))
	if err != nil || !res.Issued || !strings.Contains(res.Why, "names") {
		t.Errorf("renew with other names: %+v, %v", res, err)
	}

	// A new CA: reissued under it.
	if err := os.Remove(filepath.Join(dir, certs.CACertFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, certs.CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Init(dir, certs.DefaultCAValidity, now); err != nil {
		t.Fatal(err)
	}
	res, err = certs.Issue(dir, req, now.Add(63*24*time.Hour))
	if err != nil || !res.Issued || !strings.Contains(res.Why, "not valid under this CA") {
		t.Errorf("renew after a CA change: %+v, %v", res, err)
	}
}
