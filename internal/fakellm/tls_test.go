// Tests for request recording over TLS, ALPN and the PKI helpers.

package fakellm_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
)

func TestRecordingOverTLS(t *testing.T) {
	p := newPKI(t)
	s := fakellm.New(fakellm.Options{})
	addr := serveTLS(t, s, p)
	c := tlsClient(t, p, "api.openai.test", true, true)

	body := openAIBody
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/v1/chat/completions?api-version=2024&x=1", strings.NewReader(body))
	req.Host = "api.openai.test"
	req.Header.Set("Authorization", "Bearer sk-test")
	req.Header.Set("X-Trace", "abc")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	do(t, c, http.MethodGet, "https://"+addr+"/_fake/healthz", "", nil)

	reqs := s.Requests()
	if len(reqs) != 1 {
		t.Fatalf("recorded %d requests, want 1 (control requests excluded)", len(reqs))
	}
	r := reqs[0]
	checks := []struct {
		field, got, want string
	}{
		{"Method", r.Method, "POST"},
		{"Path", r.Path, "/v1/chat/completions"},
		{"RawQuery", r.RawQuery, "api-version=2024&x=1"},
		{"Host", r.Host, "api.openai.test"},
		{"Proto", r.Proto, "HTTP/2.0"},
		{"SNI", r.SNI, "api.openai.test"},
		{"Body", r.Body, body},
		{"Authorization", r.Header.Get("Authorization"), "Bearer sk-test"},
		{"X-Trace", r.Header.Get("X-Trace"), "abc"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %q, want %q", ck.field, ck.got, ck.want)
		}
	}
	if r.RemoteAddr == "" || r.Time.IsZero() || time.Since(r.Time) > time.Minute {
		t.Errorf("RemoteAddr %q Time %v", r.RemoteAddr, r.Time)
	}

	// Requests hands out copies: mutating one must not change the record.
	reqs[0].Header.Set("X-Trace", "mutated")
	if got := s.Requests()[0].Header.Get("X-Trace"); got != "abc" {
		t.Errorf("Requests shares header maps: %q", got)
	}

	_, b := do(t, c, http.MethodGet, "https://"+addr+"/_fake/requests", "", nil)
	var wire []map[string]any
	if err := json.Unmarshal(b, &wire); err != nil || len(wire) != 1 {
		t.Fatalf("GET /_fake/requests = %s (%v)", b, err)
	}
	for _, k := range []string{"time", "method", "path", "raw_query", "host", "proto", "sni", "remote_addr", "header", "body"} {
		if _, ok := wire[0][k]; !ok {
			t.Errorf("JSON record lacks %q: %s", k, b)
		}
	}
	if wire[0]["sni"] != "api.openai.test" {
		t.Errorf("JSON sni = %v", wire[0]["sni"])
	}

	resp, _ = do(t, c, http.MethodDelete, "https://"+addr+"/_fake/requests", "", nil)
	if resp.StatusCode != http.StatusNoContent || len(s.Requests()) != 0 {
		t.Errorf("DELETE /_fake/requests = %d, %d left", resp.StatusCode, len(s.Requests()))
	}
}

func TestRecordingLimits(t *testing.T) {
	s, ts := newTestServer(t, fakellm.Options{MaxRequests: 3})
	big := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a ", 40<<10) + `"}]}`
	resp, b := do(t, ts.Client(), http.MethodPost, ts.URL+"/v1/chat/completions?n=0", big, nil)
	if c := decode[oaCompletion](t, b); resp.StatusCode != 200 || c.Usage.PromptTokens != 40<<10 {
		t.Errorf("big body: status %d usage %+v (the whole body must be parsed)", resp.StatusCode, c.Usage)
	}
	if got := len(s.Requests()[0].Body); got != 64<<10 {
		t.Errorf("recorded body is %d bytes, want 64 KiB", got)
	}
	for i := 1; i <= 7; i++ {
		do(t, ts.Client(), http.MethodGet, ts.URL+"/v1/models?n="+string(rune('0'+i)), "", nil)
	}
	var got []string
	for _, r := range s.Requests() {
		got = append(got, r.RawQuery)
	}
	if want := []string{"n=5", "n=6", "n=7"}; !slices.Equal(got, want) {
		t.Errorf("kept %v, want the newest %v", got, want)
	}

	s, ts = newTestServer(t, fakellm.Options{MaxRequests: -1})
	do(t, ts.Client(), http.MethodGet, ts.URL+"/v1/models", "", nil)
	if n := len(s.Requests()); n != 0 {
		t.Errorf("recording disabled but kept %d", n)
	}
}

func TestALPN(t *testing.T) {
	tests := []struct {
		name      string
		h1, h2    bool
		wantProto string
		wantALPN  string
	}{
		{"h2 preferred", true, true, "HTTP/2.0", "h2"},
		{"h2 only", false, true, "HTTP/2.0", "h2"},
		{"http/1.1 only", true, false, "HTTP/1.1", "http/1.1"},
	}
	p := newPKI(t)
	s := fakellm.New(fakellm.Options{})
	addr := serveTLS(t, s, p)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Reset()
			c := tlsClient(t, p, "localhost", tt.h1, tt.h2)
			resp, _ := do(t, c, http.MethodPost, "https://"+addr+"/v1/chat/completions", openAIBody, nil)
			if resp.Proto != tt.wantProto || resp.TLS == nil || resp.TLS.NegotiatedProtocol != tt.wantALPN {
				t.Errorf("client saw %s ALPN %q, want %s %q", resp.Proto, resp.TLS.NegotiatedProtocol, tt.wantProto, tt.wantALPN)
			}
			if reqs := s.Requests(); len(reqs) != 1 || reqs[0].Proto != tt.wantProto {
				t.Errorf("server saw %+v, want %s", reqs, tt.wantProto)
			}
		})
	}
}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("not a certificate PEM: %q", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewPKI(t *testing.T) {
	p, err := fakellm.NewPKI([]string{"localhost", " 127.0.0.1", "::1", "api.openai.test", "localhost", ""})
	if err != nil {
		t.Fatal(err)
	}
	ca, leaf := parseCert(t, p.CACertPEM), parseCert(t, p.CertPEM)
	if !ca.IsCA || ca.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("CA: IsCA %v alg %v", ca.IsCA, ca.PublicKeyAlgorithm)
	}
	if !slices.Equal(leaf.DNSNames, []string{"localhost", "api.openai.test"}) {
		t.Errorf("DNS SANs = %v", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || !leaf.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("IP SANs = %v", leaf.IPAddresses)
	}
	if leaf.IsCA || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("leaf: IsCA %v EKU %v", leaf.IsCA, leaf.ExtKeyUsage)
	}
	now := time.Now()
	if !leaf.NotBefore.Before(now.Add(-50*time.Minute)) || leaf.NotAfter.Before(now.AddDate(9, 11, 0)) {
		t.Errorf("validity %v .. %v", leaf.NotBefore, leaf.NotAfter)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, host := range []string{"localhost", "127.0.0.1", "::1", "api.openai.test"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "evil.test"}); err == nil {
		t.Error("leaf verified for a name it was not issued for")
	}
	if _, err := fakellm.NewPKI([]string{" ", ""}); err == nil {
		t.Error("NewPKI without names succeeded")
	}
}

func TestLoadOrCreatePKI(t *testing.T) {
	names := []string{"localhost", "127.0.0.1"}

	t.Run("idempotent", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "nested", "tls")
		first, err := fakellm.LoadOrCreatePKI(dir, names)
		if err != nil {
			t.Fatal(err)
		}
		second, err := fakellm.LoadOrCreatePKI(dir, names)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.CACertPEM, second.CACertPEM) || !bytes.Equal(first.KeyPEM, second.KeyPEM) {
			t.Error("second call produced a different PKI")
		}
		for f, want := range map[string]os.FileMode{"ca.pem": 0o644, "server.pem": 0o644, "server-key.pem": 0o600} {
			fi, err := os.Stat(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s mode = %v, want %v", f, fi.Mode().Perm(), want)
			}
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
		}
		entries, _ := os.ReadDir(filepath.Dir(dir))
		if len(entries) != 1 {
			t.Errorf("temporary directories left behind: %v", entries)
		}
	})

	t.Run("name not covered", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := fakellm.LoadOrCreatePKI(dir, names); err != nil {
			t.Fatal(err)
		}
		if _, err := fakellm.LoadOrCreatePKI(dir, []string{"other.test"}); err == nil {
			t.Error("loaded a certificate that does not cover the requested name")
		}
	})

	t.Run("existing dir with other files", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		first, err := fakellm.LoadOrCreatePKI(dir, names)
		if err != nil {
			t.Fatal(err)
		}
		second, err := fakellm.LoadOrCreatePKI(dir, names)
		if err != nil || !bytes.Equal(first.CACertPEM, second.CACertPEM) {
			t.Errorf("reload: %v, same CA %v", err, err == nil && bytes.Equal(first.CACertPEM, second.CACertPEM))
		}
	})

	t.Run("concurrent creators agree", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "tls")
		const n = 8
		pems := make([][]byte, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				p, err := fakellm.LoadOrCreatePKI(dir, names)
				errs[i] = err
				if err == nil {
					pems[i] = p.CACertPEM
				}
			})
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("creator %d: %v", i, errs[i])
			}
			if !bytes.Equal(pems[i], pems[0]) {
				t.Errorf("creator %d got a different CA", i)
			}
		}
		onDisk, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
		if err != nil || !bytes.Equal(onDisk, pems[0]) {
			t.Errorf("ca.pem on disk differs from the returned CA (%v)", err)
		}
	})

	t.Run("serves with the stored files", func(t *testing.T) {
		p, err := fakellm.LoadOrCreatePKI(t.TempDir(), names)
		if err != nil {
			t.Fatal(err)
		}
		addr := serveTLS(t, fakellm.New(fakellm.Options{}), p)
		resp, _ := do(t, tlsClient(t, p, "127.0.0.1", true, true), http.MethodGet, "https://"+addr+"/_fake/healthz", "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("status = %d", resp.StatusCode)
		}
	})
}
