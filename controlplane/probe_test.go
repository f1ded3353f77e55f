package controlplane

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/llmedge/llmedge/internal/token"
)

// TestProbesInStatusAndPage: a probes section makes the control plane call each region's
// edge (here a stand-in) as the probe caller; the results appear in /status and metrics,
// the token nowhere; the status page is served at /.
func TestProbesInStatusAndPage(t *testing.T) {
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "probe-token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+tok || fail.Load() {
			http.Error(w, "{}", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"data":[]}`)
	}))
	defer edge.Close()
	routes := probeRoutes(tok, tokFile, edge.URL)
	c := start(t, routes)
	eventually(t, waitFor, func() error {
		st := c.status(t)
		if !st.Probes.Enabled || st.Probes.Caller != "prober" || len(st.Probes.Results) != 5 {
			return fmt.Errorf("probes %+v; want 5 results (hk: 2, sg: 3)", st.Probes)
		}
		for _, r := range st.Probes.Results {
			if !r.OK || r.Status != 200 {
				return fmt.Errorf("%+v", r)
			}
		}
		return nil
	})
	if err := wantValue(c.metric(t, "llmedge_probe_success", map[string]string{"region": "sg", "upstream": "gemini"}))(1); err != nil {
		t.Error(err)
	}
	fail.Store(true)
	eventually(t, 3*waitFor, func() error {
		return wantValue(c.metric(t, "llmedge_probe_success", map[string]string{"region": "hk", "upstream": "openai"}))(0)
	})
	_, body := c.get(t, "/status")
	if strings.Contains(string(body), tok) || strings.Contains(c.logs.String(), tok) {
		t.Error("the probe token is in /status or the log")
	}

	resp, err := http.Get(c.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(page), "/page/page.js") {
		t.Errorf("GET / = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// probeRoutes is routesYAML with caller prober (token tok, also in tokFile) probing both
// regions through the edge at edgeURL every second: 5 probes a round (hk: 2, sg: 3).
func probeRoutes(tok, tokFile, edgeURL string) string {
	return routesYAML + fmt.Sprintf(`callers:
  prober:
    tokens: [%s]
    upstreams: [openai, anthropic, gemini]
probes:
  caller: prober
  token_file: %s
  interval: 1s
  regions:
    hk: {edge: %q}
    sg: {edge: %q}
  upstreams:
    anthropic: {request: models}
`, token.DigestRef(tok), tokFile, edgeURL, edgeURL)
}
