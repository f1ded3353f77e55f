package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmedge/llmedge/controlplane/page"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

var statusScreenshot = flag.String("status-screenshot", "", "also save the status page's screenshot to this PNG (docs/img/status.png)")

// chromium finds the headless browser: $LLMEDGE_CHROMIUM, the tools folder's link
// (scripts/tools.sh), or chromium on PATH.
func chromium(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LLMEDGE_CHROMIUM"); p != "" {
		return p
	}
	var dirs []string
	if d := os.Getenv("LLMEDGE_TOOLS"); d != "" {
		dirs = append(dirs, d)
	}
	if root, err := stk.RepoRoot(); err == nil {
		dirs = append(dirs, filepath.Join(root, ".tools"))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, "bin", "chromium"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatal("chromium not found: run scripts/tools.sh (it installs Debian's chromium package) or set LLMEDGE_CHROMIUM")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// browse runs headless Chromium on url with extra flags and returns its standard output.
// The virtual time budget lets the page's fetches of /status and /usage finish before the
// DOM is dumped.
func browse(t testing.TB, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=4000",
	}, extra...)
	cmd := exec.CommandContext(ctx, chromium(t), append(args, url)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, errb.String())
	}
	return out.String()
}

// regionCard returns the opening tag of a region's card in the dumped DOM.
var regionCardRE = regexp.MustCompile(`<article class="card region" data-region="([a-z0-9-]+)" data-in-sync="(true|false)">`)

func regionSync(dom string) map[string]string {
	out := map[string]string{}
	for _, m := range regionCardRE.FindAllStringSubmatch(dom, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// TestStatusPageInChromium renders the status page in real headless Chromium against
// the two-region stack: both regions and their nodes in sync, each upstream's probe and
// certificate, the usage charts; then a region's extauthz stops and the page says the
// region is out of sync, and it recovers when extauthz is back.
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	up := startStoppableUpstream(t)
	tokFile := filepath.Join(t.TempDir(), "probe-token")
	s := newStack(t, up.upstream, fmt.Sprintf(probedRegions, tokFile)+`usage:
  prices:
    - {upstream: openai, model: gpt-4o, input: 2.5, output: 10, cached: 1.25, currency: USD}
    - {upstream: anthropic, model: claude-sonnet-4-5, input: 3, output: 15, currency: USD}
`, "hk", "sg")
	s.needsAuthzProcess()
	if err := os.WriteFile(tokFile, []byte(s.tokens["prober"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The ledger needs a state dir: run the control plane with one; the Envoys and
	// extauthz reconnect to it.
	s.cp.Stop()
	s.cp = testenv.StartControlPlane(t, llmedgeBin, "controlplane-state", s.stateControlPlane(filepath.Join(s.dir, "state")))
	s.waitInSync(30 * time.Second)
	// Usage as the regions' Envoys would report it over ALS.
	conn, err := grpc.NewClient(stk.Unix(s.sock.XDS()), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hk, sg []*accesslogdatav3.HTTPAccessLogEntry
	for i := range 12 {
		hk = append(hk, alsEntry(t, alsRequest{id: fmt.Sprint("hk-", i), caller: "tester", tenant: "team-a", upstream: "openai", model: "gpt-4o", in: 1200, out: 300}))
	}
	for i := range 5 {
		sg = append(sg, alsEntry(t, alsRequest{id: fmt.Sprint("sg-", i), caller: "prober", tenant: "ops", upstream: "anthropic", model: "claude-sonnet-4-5", in: 40, out: 1}))
	}
	streamEntries(t, conn, "hk", hk)
	streamEntries(t, conn, "sg", sg)
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		rs := s.probeResults()
		for _, k := range []string{"hk/openai", "sg/anthropic", "sg/openai"} {
			if !rs[k].OK {
				return fmt.Errorf("%s: %+v", k, rs[k])
			}
		}
		if b := s.get(t, "/usage?since=24h&by=caller,model"); !strings.Contains(b, `"claude-sonnet-4-5"`) || !strings.Contains(b, `"gpt-4o"`) {
			return fmt.Errorf("usage not recorded yet: %s", b)
		}
		return nil
	})

	page := s.statusURL("/")
	dom := browse(t, page, "--dump-dom")
	if got := regionSync(dom); got["hk"] != "true" || got["sg"] != "true" {
		t.Fatalf("regions on the page %v; want hk and sg in sync\n%s", got, dom)
	}
	for _, want := range []string{
		"envoy-hk-1", "envoy-sg-1", "extauthz-hk", "extauthz-sg", // every node
		`data-probe="hk/openai" data-ok="true"`, `data-probe="sg/anthropic" data-ok="true"`, `data-probe="sg/openai" data-ok="true"`,
		"last edit applied", "caller prober",
		"Requests per caller · model", "tester · gpt-4o", "Cost (USD)", "<svg",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// Certificate expiry, as a date and the days left (the fake's certificate lasts ten years).
	if !regexp.MustCompile(`20\d\d-\d\d-\d\d \(\d{4} days\)`).MatchString(dom) {
		t.Errorf("the page shows no certificate expiry")
	}
	if strings.Contains(dom, s.tokens["prober"]) || strings.Contains(dom, s.tokens["tester"]) || strings.Contains(dom, upstreamKey("openai")) {
		t.Fatalf("the page shows a token or key")
	}
	if !strings.Contains(dom, `<section id="alerts" hidden="">`) {
		t.Errorf("the alerts section shows although /status has none")
	}
	shot := filepath.Join(t.TempDir(), "status.png")
	browse(t, page, "--screenshot="+shot, "--window-size=1280,960", "--hide-scrollbars")
	checkPNG(t, shot)
	if *statusScreenshot != "" {
		b, _ := os.ReadFile(shot)
		if err := os.WriteFile(*statusScreenshot, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	phone := filepath.Join(os.TempDir(), "llmedge-status-phone.png")
	browse(t, page, "--screenshot="+phone, "--window-size=390,1400", "--hide-scrollbars")
	checkPNG(t, phone)

	// sg's extauthz goes away: the page says sg is out of sync, and why.
	s.authz["sg"].Stop()
	testenv.Eventually(t, 60*time.Second, 100*time.Millisecond, func() error {
		dom = browse(t, page, "--dump-dom")
		if got := regionSync(dom); got["sg"] != "false" || got["hk"] != "true" {
			return fmt.Errorf("regions on the page %v; want sg out of sync, hk in sync", got)
		}
		if !strings.Contains(dom, "no extauthz connected") {
			return fmt.Errorf("the page does not say sg has no extauthz")
		}
		return nil
	})
	// Back: in sync again.
	s.startExtAuthz("sg")
	testenv.Eventually(t, 60*time.Second, 100*time.Millisecond, func() error {
		dom = browse(t, page, "--dump-dom")
		if got := regionSync(dom); got["sg"] != "true" || got["hk"] != "true" {
			return fmt.Errorf("regions on the page %v; want both in sync", got)
		}
		return nil
	})
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(b) < 1000 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s is not a PNG (%d bytes)", path, len(b))
	}
}

// TestStatusPageShowsTrouble renders the page in headless Chromium against a canned
// /status holding what the stack rarely shows at once: a rejected edit with its errors,
// a NACK, a failing probe with an expiring certificate, an alerts section (as the alert
// rules add it), and the ledger off.
func TestStatusPageShowsTrouble(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	status := fmt.Sprintf(`{
  "config": {"path": "/etc/llmedge/routes.yaml", "files": ["/etc/llmedge/routes.yaml"], "hash": "0123456789abcdef",
    "applied_at": %[1]q, "checked_at": %[1]q, "valid": false, "source": "routes", "warnings": [],
    "errors": [{"path": "upstreams.openai.url", "message": "must be an absolute URL"}]},
  "regions": [{"name": "hk", "listen": "0.0.0.0:10000", "upstreams": ["openai"], "versions": {}, "limits": [], "in_sync": false,
    "nodes": [{"id": "envoy-hk-1", "region": "hk", "stream": 1, "connected_at": %[1]q, "subscribed": ["listeners", "clusters"], "acked": {},
      "last_nack": {"type": "clusters", "version": "v2", "error": "bad cluster"}, "in_sync": false}]}],
  "upstreams": [{"name": "openai", "url": "https://api.openai.com", "connect": "api.openai.com:443", "api": "openai", "allowed_regions": ["hk"]}],
  "unassigned_nodes": [],
  "probes": {"enabled": true, "caller": "prober", "interval": "5m0s", "results": [
    {"region": "hk", "upstream": "openai", "at": %[1]q, "ok": false, "status": 503, "latency_ms": 12, "ttfb_ms": 11,
     "cert_not_after": %[2]q, "dns": ["192.0.2.10"], "error": "GET /v1/models answered 503 Service Unavailable"}]},
  "alerts": [{"rule": "probe_failed", "summary": "hk/openai probe failing", "since": %[1]q}]
}`, now.Format(time.RFC3339), now.Add(72*time.Hour).Format(time.RFC3339))
	mux := http.NewServeMux()
	pg := page.Handler()
	mux.Handle("GET /{$}", pg)
	mux.Handle("GET "+page.Prefix, pg)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, status)
	})
	mux.HandleFunc("GET /usage", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":{"message":"the usage ledger is off"}}`, http.StatusServiceUnavailable)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	dom := browse(t, srv.URL+"/", "--dump-dom")
	if got := regionSync(dom); got["hk"] != "false" {
		t.Errorf("hk on the page: %v, want out of sync", got)
	}
	for _, want := range []string{
		`<section id="alerts">`, "probe_failed", "hk/openai probe failing", // alerts shown
		"last edit rejected", "upstreams.openai.url", "must be an absolute URL", // the rejected edit
		"NACK clusters: bad cluster", "no extauthz connected", // the region's trouble
		`data-probe="hk/openai" data-ok="false"`, "hk failing", "503", "192.0.2.10", // the probe
		"(2 days)", `<section id="usage" hidden="">`, // expiry in days; no ledger, no charts
		`<span id="overall" class="badge bad">attention</span>`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}
