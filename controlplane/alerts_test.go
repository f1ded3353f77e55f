package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/alert/alerttest"
	"github.com/llmedge/llmedge/controlplane/xds/xdstest"
	"github.com/llmedge/llmedge/internal/certs"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
	"github.com/llmedge/llmedge/internal/xdsclient"
)

// hook is the alerter's webhook; wait checks every message it received, in order.
type hook struct{ alerttest.Webhook }

func (h *hook) wait(t *testing.T, want ...string) {
	t.Helper()
	eventually(t, waitFor, func() error {
		if got := h.Got(); !slices.Equal(got, want) {
			return fmt.Errorf("received %q; want %q", got, want)
		}
		return nil
	})
}

// TestAlertsOnRejectedEditAndLostExtAuthz runs the control plane with an alerts section
// and evaluates it at chosen times: a rejected routes edit, then an extauthz whose xDS
// stream ends (the process killed), each send exactly one firing and one resolved
// message. The extauthz is the real extauthz's xDS client, in-process.
func TestAlertsOnRejectedEditAndLostExtAuthz(t *testing.T) {
	h := &hook{}
	srv := httptest.NewServer(h)
	defer srv.Close()
	urlFile := filepath.Join(t.TempDir(), "hook.url")
	if err := os.WriteFile(urlFile, []byte(srv.URL+"/secret-token-path"), 0o600); err != nil {
		t.Fatal(err)
	}
	routes := `version: 1
regions:
  hk:
    listen: 127.0.0.1:10000
    extauthz: 127.0.0.1:10100
    upstreams: [openai]
upstreams:
  openai:
    url: http://127.0.0.1:8090
    allowed_regions: [hk]
routes:
  openai:
    match: {prefix: /openai}
    upstream: openai
alerts:
  notifiers:
    ops:
      type: webhook
      url_file: ` + urlFile + `
`
	c := startWith(t, routes, func(o *Options) { o.AlertInterval = -1 })
	conn := dialADS(t, c.m.XDSAddr())
	envoy := xdstest.Open(t, conn)
	envoy.RequestAndAck(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy-hk-1", Locality: &corev3.Locality{Region: "hk"}}, TypeUrl: resourcev3.ClusterType}, waitFor)
	envoy.RequestAndAck(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}, waitFor)
	envoy.RequestAndAck(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"llmedge-hk"}}, waitFor)
	stopExtAuthz := startExtAuthzClient(t, c.m.XDSAddr())
	nodes := func(n int) func() error {
		return func() error {
			if r, _ := regionNamed(c.status(t), "hk"); len(r.Nodes) != n || !r.InSync {
				return fmt.Errorf("hk nodes %+v in sync %v; want %d in sync", r.Nodes, r.InSync, n)
			}
			return nil
		}
	}
	eventually(t, waitFor, nodes(2))

	ctx, now := t.Context(), time.Now()
	at := func(d time.Duration) time.Time { return now.Add(d) }
	if msgs := c.m.AlertStep(ctx, at(0)); len(msgs) != 0 {
		t.Fatalf("healthy control plane alerted: %+v", msgs)
	}

	// A rejected edit fires once, holds quietly, resolves once when the file is fixed.
	c.write(t, strings.Replace(routes, "url: http://127.0.0.1:8090", "url: ftp://127.0.0.1:8090", 1))
	eventually(t, waitFor, func() error {
		if c.status(t).Config.Valid {
			return fmt.Errorf("edit not rejected yet")
		}
		return nil
	})
	c.m.AlertStep(ctx, at(15*time.Second))
	c.m.AlertStep(ctx, at(30*time.Second))
	h.wait(t, "firing config_rejected routes")
	c.write(t, routes)
	eventually(t, waitFor, func() error {
		if !c.status(t).Config.Valid {
			return fmt.Errorf("fixed edit not applied yet")
		}
		return nil
	})
	c.m.AlertStep(ctx, at(45*time.Second))
	h.wait(t, "firing config_rejected routes", "resolved config_rejected routes")

	// The extauthz goes away: service_down fires after its "for" (1m), once.
	stopExtAuthz()
	eventually(t, waitFor, func() error {
		if r, _ := regionNamed(c.status(t), "hk"); len(r.Nodes) != 1 {
			return fmt.Errorf("hk nodes %+v; want the envoy only", r.Nodes)
		}
		return nil
	})
	c.m.AlertStep(ctx, at(time.Minute))
	c.m.AlertStep(ctx, at(2*time.Minute+time.Second))
	c.m.AlertStep(ctx, at(3*time.Minute))
	h.wait(t, "firing config_rejected routes", "resolved config_rejected routes", "firing service_down hk/extauthz")
	// The hook has the third message before the notifier has read the answer and counted
	// the delivery: poll.
	eventually(t, waitFor, func() error {
		st := c.status(t)
		if st.Alerts == nil || len(st.Alerts.Active) != 1 || st.Alerts.Active[0].Rule != "service_down" || len(st.Alerts.Notifiers) != 1 || st.Alerts.Notifiers[0].Delivered != 3 {
			return fmt.Errorf("/status alerts = %+v", st.Alerts)
		}
		return nil
	})
	if body := c.getString(t, "/status"); strings.Contains(body, "secret-token-path") {
		t.Error("/status shows the webhook URL")
	}
	startExtAuthzClient(t, c.m.XDSAddr())
	eventually(t, waitFor, nodes(2))
	c.m.AlertStep(ctx, at(4*time.Minute))
	h.wait(t, "firing config_rejected routes", "resolved config_rejected routes", "firing service_down hk/extauthz", "resolved service_down hk/extauthz")
	if l := c.logs.String(); strings.Contains(l, "secret-token-path") {
		t.Error("logs show the webhook URL")
	}
}

func (c *cp) getString(t *testing.T, path string) string {
	_, b := c.get(t, path)
	return string(b)
}

// startExtAuthzClient subscribes to hk's authz policy the way extauthz does; the returned
// function ends its stream.
func startExtAuthzClient(t *testing.T, addr string) func() {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = xdsclient.Run(ctx, xdsclient.Options{
			Server: addr, Node: &corev3.Node{Id: "extauthz-hk-1", Locality: &corev3.Locality{Region: "hk"}},
			TypeURL: resourcev3.ExtensionConfigType, Names: []string{wire.PolicyResourceName},
			Logger: slog.New(slog.DiscardHandler), Apply: func(string, []*anypb.Any) error { return nil },
		})
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// TestDeadOrSlowWebhookNeverHoldsReloads: while the webhook hangs, and then while it
// answers 500, edits still apply at once and /status shows the failing deliveries.
func TestDeadOrSlowWebhookNeverHoldsReloads(t *testing.T) {
	release := make(chan struct{})
	var mode sync.Map // "down" -> bool
	var hits atomicCounter
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.add()
		if _, down := mode.Load("down"); down {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	var once sync.Once
	unhang := func() { once.Do(func() { close(release) }) }
	defer unhang()
	urlFile := filepath.Join(t.TempDir(), "hook.url")
	if err := os.WriteFile(urlFile, []byte(srv.URL+"/secret-token-path"), 0o600); err != nil {
		t.Fatal(err)
	}
	routes := routesYAML + `alerts:
  notifiers:
    ops: {type: slack, url_file: ` + urlFile + `}
  rules:
    service_down: {disabled: true}
`
	c := startWith(t, routes, func(o *Options) {
		o.AlertInterval = -1
		o.AlertWait = func(ctx context.Context, d time.Duration) error { return ctx.Err() } // retry at once
	})
	ctx, now := t.Context(), time.Now()
	valid := func(want bool, hash string) func() error {
		return func() error {
			st := c.status(t)
			if st.Config.Valid != want || (want && st.Config.Hash == hash) {
				return fmt.Errorf("valid %v hash %s; want valid %v and a new hash", st.Config.Valid, st.Config.Hash, want)
			}
			return nil
		}
	}
	first := c.status(t).Config.Hash
	c.write(t, strings.Replace(routes, "prefix: /gemini", "prefix: gemini", 1))
	eventually(t, waitFor, valid(false, ""))
	c.m.AlertStep(ctx, now) // config_rejected: the notifier hangs in its POST
	eventually(t, waitFor, func() error {
		if hits.get() == 0 {
			return fmt.Errorf("no delivery attempt yet")
		}
		return nil
	})
	// An edit applies while the delivery hangs.
	c.write(t, strings.Replace(routes, "prefix: /gemini", "prefix: /gemini2", 1))
	eventually(t, waitFor, valid(true, first))
	c.m.AlertStep(ctx, now.Add(time.Minute)) // resolved: queued behind the hung POST
	if st := c.status(t); st.Alerts == nil || len(st.Alerts.Notifiers) != 1 || st.Alerts.Notifiers[0].Queued != 1 {
		t.Errorf("/status alerts while the webhook hangs = %+v; want one message queued", st.Alerts)
	}

	// The webhook now answers 500: deliveries are retried, then given up, visibly.
	mode.Store("down", true)
	unhang()
	second := c.status(t).Config.Hash
	c.write(t, strings.Replace(routes, "prefix: /gemini", "prefix: /gemini3", 1))
	eventually(t, waitFor, valid(true, second))
	c.write(t, strings.Replace(routes, "prefix: /gemini", "prefix: gemini", 1))
	eventually(t, waitFor, valid(false, ""))
	c.m.AlertStep(ctx, now.Add(2*time.Minute))
	eventually(t, 15*time.Second, func() error {
		st := c.status(t)
		if st.Alerts == nil || len(st.Alerts.Notifiers) != 1 {
			return fmt.Errorf("no notifier in /status")
		}
		n := st.Alerts.Notifiers[0]
		if n.Failed == 0 || n.Healthy || !strings.Contains(n.LastError, "answered 500") {
			return fmt.Errorf("notifier %+v; want a failed delivery with its error", n)
		}
		return nil
	})
	if v, err := c.metric(t, "llmedge_alert_notifications_total", map[string]string{"notifier": "ops", "result": "failed"}); err != nil || v < 1 {
		t.Errorf("failed deliveries metric = %v, %v", v, err)
	}
	if strings.Contains(c.getString(t, "/status"), "secret-token-path") || strings.Contains(c.logs.String(), "secret-token-path") {
		t.Error("the webhook URL shows in /status or the logs")
	}
}

type atomicCounter struct {
	mu sync.Mutex
	n  int
}

func (a *atomicCounter) add() { a.mu.Lock(); a.n++; a.mu.Unlock() }
func (a *atomicCounter) get() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// TestProbeResultsAlert: the prober's results, through Options.Probes, raise probe_failed
// and cert_expiry, and both resolve when a later probe is good.
func TestProbeResultsAlert(t *testing.T) {
	h := &hook{}
	srv := httptest.NewServer(h)
	defer srv.Close()
	urlFile := filepath.Join(t.TempDir(), "hook.url")
	if err := os.WriteFile(urlFile, []byte(srv.URL), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	results := []alert.ProbeResult{{Region: "hk", Upstream: "openai", At: now, OK: false, Status: 503, Error: "upstream answered 503"},
		{Region: "hk", Upstream: "anthropic", At: now, OK: true, Status: 200, CertNotAfter: now.Add(3 * 24 * time.Hour)}}
	c := startWith(t, routesYAML+`alerts:
  notifiers:
    ops: {type: webhook, url_file: `+urlFile+`}
  rules:
    service_down: {disabled: true}
`, func(o *Options) {
		o.AlertInterval = -1
		o.Probes = ProbeSourceFunc(func() []alert.ProbeResult {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(results)
		})
	})
	c.m.AlertStep(t.Context(), now)
	h.wait(t, "firing cert_expiry hk/anthropic", "firing probe_failed hk/openai")
	mu.Lock()
	results = []alert.ProbeResult{{Region: "hk", Upstream: "openai", At: now.Add(5 * time.Minute), OK: true, Status: 200},
		{Region: "hk", Upstream: "anthropic", At: now.Add(5 * time.Minute), OK: true, Status: 200, CertNotAfter: now.Add(90 * 24 * time.Hour)}}
	mu.Unlock()
	c.m.AlertStep(t.Context(), now.Add(5*time.Minute))
	h.wait(t, "firing cert_expiry hk/anthropic", "firing probe_failed hk/openai", "resolved cert_expiry hk/anthropic", "resolved probe_failed hk/openai")
}

// TestOwnProberFeedsAlerts: with no ProbeSource injected, the alerts read the control
// plane's own prober: edges that fail its probes fire probe_failed once per region and
// upstream, and their recovery resolves each.
func TestOwnProberFeedsAlerts(t *testing.T) {
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokFile, urlFile := filepath.Join(dir, "probe-token"), filepath.Join(dir, "hook.url")
	var fail atomic.Bool
	fail.Store(true)
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "{}", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"data":[]}`)
	}))
	defer edge.Close()
	h := &hook{}
	srv := httptest.NewServer(h)
	defer srv.Close()
	for f, v := range map[string]string{tokFile: tok, urlFile: srv.URL} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := startWith(t, probeRoutes(tok, tokFile, edge.URL)+`alerts:
  notifiers:
    ops: {type: webhook, url_file: `+urlFile+`}
  rules:
    service_down: {disabled: true}
    out_of_sync: {disabled: true}
`, func(o *Options) { o.AlertInterval = -1 })

	probed := func(ok bool) func() error {
		return func() error {
			st := c.status(t)
			if len(st.Probes.Results) != 5 {
				return fmt.Errorf("%d probe results, want 5 (hk: 2, sg: 3)", len(st.Probes.Results))
			}
			for _, r := range st.Probes.Results {
				if r.OK != ok {
					return fmt.Errorf("probe %s/%s ok=%v, want %v", r.Region, r.Upstream, r.OK, ok)
				}
			}
			return nil
		}
	}
	count := func(prefix string) int {
		n := 0
		for _, g := range h.Got() {
			if strings.HasPrefix(g, prefix) {
				n++
			}
		}
		return n
	}
	want := func(prefix string, n int) func() error {
		return func() error {
			if got := count(prefix); got != n {
				return fmt.Errorf("%d %q messages, want %d (all: %q)", got, prefix, n, h.Got())
			}
			return nil
		}
	}

	eventually(t, 3*waitFor, probed(false))
	now := time.Now()
	c.m.AlertStep(t.Context(), now)
	eventually(t, waitFor, want("firing probe_failed ", 5))
	fail.Store(false)
	eventually(t, 3*waitFor, probed(true))
	c.m.AlertStep(t.Context(), now.Add(time.Minute))
	eventually(t, waitFor, want("resolved probe_failed ", 5))
	if err := want("firing probe_failed ", 5)(); err != nil {
		t.Error(err) // fired once each, not again
	}
}

// TestExpiringUpstreamCertificateAlerts: an upstream whose certificate runs out in 3 days
// is found by the control plane's own probe (a direct handshake with the upstream's SNI and
// CA bundle from the routes YAML) and raises cert_expiry for every region that serves it.
func TestExpiringUpstreamCertificateAlerts(t *testing.T) {
	dir := t.TempDir()
	caFile, cert := expiringCert(t, dir, "api.expiring.test", time.Now().Add(72*time.Hour))
	up := httptest.NewUnstartedServer(http.NotFoundHandler())
	up.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	up.StartTLS()
	defer up.Close()
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"data":[]}`) }))
	defer edge.Close()
	h := &hook{}
	srv := httptest.NewServer(h)
	defer srv.Close()
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	tokFile, urlFile := filepath.Join(dir, "probe-token"), filepath.Join(dir, "hook.url")
	for f, v := range map[string]string{tokFile: tok, urlFile: srv.URL} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := startWith(t, fmt.Sprintf(`version: 1
regions:
  hk:
    listen: 127.0.0.1:10000
    extauthz: 127.0.0.1:10100
    upstreams: [expiring]
upstreams:
  expiring:
    url: https://api.expiring.test
    endpoint: %s
    tls: {ca_file: %s}
    allowed_regions: [hk]
routes:
  expiring: {match: {prefix: /expiring}, upstream: expiring, prefix_rewrite: /}
callers:
  prober:
    tokens: [%s]
    upstreams: [expiring]
probes:
  caller: prober
  token_file: %s
  interval: 1s
  regions:
    hk: {edge: %q}
alerts:
  notifiers:
    ops: {type: webhook, url_file: %s}
  rules:
    service_down: {disabled: true}
    out_of_sync: {disabled: true}
`, up.Listener.Addr(), caFile, token.DigestRef(tok), tokFile, edge.URL, urlFile), func(o *Options) { o.AlertInterval = -1 })

	eventually(t, 3*waitFor, func() error {
		st := c.status(t)
		if len(st.Probes.Results) != 1 || st.Probes.Results[0].CertNotAfter.IsZero() {
			return fmt.Errorf("no certificate expiry probed yet: %+v", st.Probes.Results)
		}
		return nil
	})
	c.m.AlertStep(t.Context(), time.Now())
	h.wait(t, "firing cert_expiry hk/expiring")
}

// expiringCert writes a CA bundle to dir and returns it with a server certificate for name
// that the CA signed and that expires at notAfter.
func expiringCert(t *testing.T, dir, name string, notAfter time.Time) (string, tls.Certificate) {
	t.Helper()
	caTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "expiring test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour * 365), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, caKey, err := certs.Sign(caTmpl, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, key, err := certs.Sign(tmpl, caTmpl, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "expiring-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
