package e2e

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// probedRegions: hk serves OpenAI, sg OpenAI and Anthropic, all on the TLS fake; the
// caller "prober" probes every upstream of every region each second. %s is the token file.
const probedRegions = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
  sg:
    listen: 127.0.0.1:{{.Port "sg"}}
    extauthz: {{.ExtAuthz "sg"}}
    upstreams: [openai, anthropic]
upstreams:
{{.Provider "openai" "hk" "sg"}}
{{.Provider "anthropic" "sg"}}
routes:
{{.Route "openai"}}
{{.Route "anthropic"}}
callers:
  tester:
    tokens: [{{.Digest "tester"}}]
    upstreams: [openai, anthropic]
  prober:
    tokens: [{{.Digest "prober"}}]
    upstreams: [openai, anthropic]
probes:
  caller: prober
  token_file: %s
  interval: 1s
  timeout: 5s
  upstreams:
    anthropic: {model: claude-haiku-4-5}
`

// stoppableUpstream is the TLS fake provider on a fixed address that a test can stop
// (connections refused) and start again.
type stoppableUpstream struct {
	*upstream
	t      testing.TB
	handle http.Handler
	pki    *fakellm.PKI

	mu sync.Mutex
	hs *http.Server
}

func startStoppableUpstream(t testing.TB) *stoppableUpstream {
	t.Helper()
	pki, caFile := upstreamPKI(t)
	srv := fakellm.New(fakellm.Options{})
	u := &stoppableUpstream{upstream: &upstream{Server: srv, caFile: caFile}, t: t, handle: srv, pki: pki}
	u.listen("127.0.0.1:0")
	t.Cleanup(u.stop)
	return u
}

func (u *stoppableUpstream) listen(addr string) {
	u.t.Helper()
	cfg, err := u.pki.TLSConfig()
	if err != nil {
		u.t.Fatal(err)
	}
	var ln net.Listener
	testenv.Eventually(u.t, 10*time.Second, 20*time.Millisecond, func() error {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	hs := &http.Server{Handler: u.handle, TLSConfig: cfg, ReadHeaderTimeout: 5 * time.Second}
	u.mu.Lock()
	u.hs, u.tlsAddr = hs, ln.Addr().String()
	u.mu.Unlock()
	go hs.ServeTLS(ln, "", "")
}

func (u *stoppableUpstream) stop() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.hs != nil {
		u.hs.Close()
		u.hs = nil
	}
}

func (u *stoppableUpstream) start() { u.listen(u.tlsAddr) }

// leafNotAfter is the expiry of the fake's server certificate.
func (u *stoppableUpstream) leafNotAfter(t testing.TB) time.Time {
	t.Helper()
	b, _ := pem.Decode(u.pki.CertPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter
}

// probeResult is a probe result as /status carries it.
type probeResult struct {
	Region       string     `json:"region"`
	Upstream     string     `json:"upstream"`
	At           time.Time  `json:"at"`
	OK           bool       `json:"ok"`
	Status       int        `json:"status"`
	LatencyMS    float64    `json:"latency_ms"`
	TTFBMS       float64    `json:"ttfb_ms"`
	CertNotAfter *time.Time `json:"cert_not_after"`
	DNS          []string   `json:"dns"`
	Error        string     `json:"error"`
}

// probeResults reads /status's probes section.
func (s *stack) probeResults() map[string]probeResult {
	s.t.Helper()
	resp, err := http.Get(s.statusURL("/status"))
	if err != nil {
		s.t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st struct {
		Probes struct {
			Enabled bool          `json:"enabled"`
			Caller  string        `json:"caller"`
			Results []probeResult `json:"results"`
		} `json:"probes"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		s.t.Fatalf("decode /status: %v", err)
	}
	out := map[string]probeResult{}
	for _, r := range st.Probes.Results {
		out[r.Region+"/"+r.Upstream] = r
	}
	return out
}

// newProbedStack starts the two-region stack with probes, and writes the prober's token
// where the routes YAML says it is.
func newProbedStack(t *testing.T, up *upstream) *stack {
	t.Helper()
	tokFile := filepath.Join(t.TempDir(), "probe-token")
	s := newStack(t, up, fmt.Sprintf(probedRegions, tokFile), "hk", "sg")
	if err := os.WriteFile(tokFile, []byte(s.tokens["prober"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestProbesThroughTheEdge: the control plane's probes reach each upstream through each
// region's Envoy (the fake sees the injected provider key, never the probe token), report
// the upstream certificate's expiry, fail while the upstream is down and recover after.
func TestProbesThroughTheEdge(t *testing.T) {
	t.Parallel()
	up := startStoppableUpstream(t)
	s := newProbedStack(t, up.upstream)
	proberToken := s.tokens["prober"]
	want := []string{"hk/openai", "sg/anthropic", "sg/openai"}
	notAfter := up.leafNotAfter(t)

	var since time.Time
	allOK := func(after time.Time) func() error {
		return func() error {
			rs := s.probeResults()
			for _, k := range want {
				r, ok := rs[k]
				switch {
				case !ok:
					return fmt.Errorf("no probe result for %s: %+v", k, rs)
				case !r.At.After(after):
					return fmt.Errorf("%s: no probe since %v", k, after)
				case !r.OK || r.Status != 200:
					return fmt.Errorf("%s: %+v", k, r)
				}
			}
			return nil
		}
	}
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, allOK(since))
	rs := s.probeResults()
	for _, k := range want {
		r := rs[k]
		if r.CertNotAfter == nil || !r.CertNotAfter.Equal(notAfter) {
			t.Errorf("%s: cert_not_after %v, want the fake's %v", k, r.CertNotAfter, notAfter)
		}
		if r.TTFBMS <= 0 || r.LatencyMS < r.TTFBMS || r.Error != "" {
			t.Errorf("%s: ttfb %v ms, latency %v ms, error %q", k, r.TTFBMS, r.LatencyMS, r.Error)
		}
	}

	// The probes went through the edge: the fake saw each API's call with the provider key
	// extauthz injects, and never the probe caller's token.
	seen := map[string]bool{}
	for _, r := range up.Requests() {
		if strings.Contains(fmt.Sprint(r.Header), proberToken) || strings.Contains(r.Body, proberToken) {
			t.Fatalf("the upstream received the probe token: %s %s", r.Method, r.Path)
		}
		switch {
		case r.Method == "GET" && r.Path == "/v1/models" && r.Header.Get("Authorization") == "Bearer "+upstreamKey("openai"):
			seen["openai"] = true
		case r.Method == "POST" && r.Path == "/v1/messages" && r.Header.Get("X-Api-Key") == upstreamKey("anthropic") &&
			strings.Contains(r.Body, `"max_tokens":1`):
			seen["anthropic"] = true
		}
	}
	if !seen["openai"] || !seen["anthropic"] {
		t.Fatalf("the fake saw probes %v; want GET /v1/models with the OpenAI key and a one-token POST /v1/messages with the Anthropic key", seen)
	}
	metrics := s.get(t, "/metrics")
	for _, m := range []string{
		`llmedge_probe_success{region="hk",upstream="openai"} 1`,
		// The text format writes floats in their shortest form, as %v does.
		fmt.Sprintf(`llmedge_upstream_cert_expiry_timestamp_seconds{upstream="openai"} %v`, float64(notAfter.Unix())),
	} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}

	// The upstream goes away: every probe fails with the edge's answer.
	up.stop()
	since = time.Now().UTC()
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		rs := s.probeResults()
		for _, k := range want {
			if r := rs[k]; !r.At.After(since) || r.OK || r.Status < 500 || r.Error == "" {
				return fmt.Errorf("%s: %+v; want a failed probe after the stop", k, r)
			}
		}
		return nil
	})
	if m := s.get(t, "/metrics"); !strings.Contains(m, `llmedge_probe_success{region="sg",upstream="anthropic"} 0`) {
		t.Errorf("/metrics does not show the failed probe")
	}
	// Back: the probes recover.
	up.start()
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, allOK(time.Now().UTC()))

	if strings.Contains(s.cp.Log(), proberToken) {
		t.Errorf("the control plane's log holds the probe token")
	}
	if b := s.get(t, "/status"); strings.Contains(b, proberToken) {
		t.Errorf("/status holds the probe token")
	}
}

func (s *stack) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get(s.statusURL(path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
