package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

// hardened: one region with an egress address on another loopback IP and one trusted
// proxy hop, serving the plain-HTTP fake (so the fake sees Envoy's source address as is).
const hardened = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    egress_address: 127.0.0.2
    xff_trusted_hops: 1
    upstreams: [openai]
upstreams:
  openai:
    url: http://127.0.0.1
    endpoint: {{.PlainUpstream}}
    allowed_regions: [hk]
routes:
  openai:
    match: {prefix: /openai}
    upstream: openai
    prefix_rewrite: /
`

func TestEdgeHardening(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, hardened, "hk")
	url := s.edgeURL("hk", "/openai/v1/chat/completions")

	t.Run("egress address", func(t *testing.T) {
		up.Reset()
		if resp, body := post(t, url, chatBody, s.auth(nil)); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		reqs := up.Requests()
		if len(reqs) != 1 {
			t.Fatalf("upstream saw %d requests", len(reqs))
		}
		if host, _, _ := net.SplitHostPort(reqs[0].RemoteAddr); host != "127.0.0.2" {
			t.Errorf("upstream saw the edge connect from %s, want the egress address 127.0.0.2", reqs[0].RemoteAddr)
		}
	})

	t.Run("caller cannot steer envoy", func(t *testing.T) {
		up.Reset()
		// With use_remote_address and no internal addresses, these are dropped, not obeyed.
		resp, body := post(t, url, chatBody, s.auth(map[string]string{
			"x-envoy-upstream-rq-timeout-ms": "1",
			"x-envoy-retry-on":               "5xx",
			"x-envoy-max-retries":            "10",
			"x-fake-delay":                   "200ms",
		}))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d (a caller-set x-envoy timeout was obeyed?): %s", resp.StatusCode, body)
		}
		h := up.Requests()[0].Header
		for _, k := range []string{"x-envoy-upstream-rq-timeout-ms", "x-envoy-retry-on", "x-envoy-max-retries"} {
			if v := h.Get(k); v != "" {
				t.Errorf("caller-set header %s: %s reached the upstream", k, v)
			}
		}
	})

	t.Run("trusted hops", func(t *testing.T) {
		// One trusted proxy in front: the caller is the address that proxy appended. The
		// provider learns none of it; the access log and extauthz see the caller.
		resp, body := post(t, url, chatBody, s.auth(map[string]string{"x-forwarded-for": "198.51.100.9, 203.0.113.5"}))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			if !strings.Contains(s.envoys["hk"].Log(), `"client":"203.0.113.5"`) {
				return fmt.Errorf("no access log line names the client 203.0.113.5 (the address the trusted hop saw)")
			}
			return nil
		})
	})

	rejects := []struct {
		name    string
		path    string
		headers map[string]string
	}{
		{"header with underscore", "/openai/v1/chat/completions", map[string]string{"x_api_key": "smuggled"}},
		{"encoded slash", "/openai/v1%2Fchat/completions", nil},
	}
	for _, c := range rejects {
		t.Run(c.name, func(t *testing.T) {
			up.Reset()
			resp, body := post(t, s.edgeURL("hk", c.path), chatBody, s.auth(c.headers))
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", resp.StatusCode, body)
			}
			var e struct {
				Error struct {
					Type, Message string
					RequestID     string `json:"request_id"`
				}
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Type != "invalid_request_error" || e.Error.Message == "" || e.Error.RequestID == "" {
				t.Errorf("want an OpenAI-shaped invalid_request_error with a message and a request id, got %q", body)
			}
			if n := len(up.Requests()); n != 0 {
				t.Errorf("rejected request reached the upstream %d times", n)
			}
		})
	}

	t.Run("path normalisation", func(t *testing.T) {
		up.Reset()
		resp, body := post(t, s.edgeURL("hk", "/openai//v1/./chat/completions"), chatBody, s.auth(nil))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if got := up.Requests()[0].Path; got != "/v1/chat/completions" {
			t.Errorf("upstream path = %q, want the normalised /v1/chat/completions", got)
		}
	})
}

func TestEnvoyOfUnknownRegionGetsNoConfig(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk")
	out, err := exec.Command(llmedgeBin, "bootstrap", "--region", "mars", "--admin-port", "0",
		"--xds", stk.Unix(s.sock.XDS())).Output()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, "envoy-mars.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	mars := testenv.StartEnvoy(t, "envoy-mars", path)
	testenv.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		st := s.status()
		for _, n := range st.Unassigned {
			if n.Region == "mars" && n.ID == "envoy-mars-1" {
				return nil
			}
		}
		return fmt.Errorf("envoy-mars-1 not listed as unassigned: %+v", st.Unassigned)
	})
	if !strings.Contains(s.cp.Log(), `"region":"mars"`) || !strings.Contains(s.cp.Log(), "does not define") {
		t.Errorf("control plane log lacks a clear line about region mars")
	}
	if dump := string(mars.ConfigDump(t)); strings.Contains(dump, "llmedge-hk") || strings.Contains(dump, "upstream_openai") {
		i := strings.Index(dump, "llmedge-hk")
		t.Errorf("the Envoy of an unknown region received llmedge config: ...%s...", dump[max(0, i-300):min(len(dump), i+100)])
	}
}

// TestHostSpecificRoutes: a route limited to hosts wins for those hosts (exact and
// wildcard, any port), and the route for any host serves the rest.
func TestHostSpecificRoutes(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai, tenant]
upstreams:
  openai:
    url: http://127.0.0.1
    endpoint: {{.PlainUpstream}}
    allowed_regions: [hk]
  tenant:
    url: http://127.0.0.1
    endpoint: {{.PlainUpstream}}
    allowed_regions: [hk]
routes:
  any-host: {match: {prefix: /openai}, upstream: openai, prefix_rewrite: /}
  tenant-hosts:
    match: {prefix: /openai, hosts: [api.tenant.test, "*.edge.test"]}
    upstream: tenant
    prefix_rewrite: /
`, "hk")
	cases := []struct{ host, wantKey string }{
		{"", upstreamKey("openai")},
		{"api.tenant.test", upstreamKey("tenant")},
		{"API.Tenant.Test:443", upstreamKey("tenant")},
		{"eu.edge.test", upstreamKey("tenant")},
		{"other.test", upstreamKey("openai")},
	}
	for _, c := range cases {
		up.Reset()
		req, _ := http.NewRequest(http.MethodGet, s.edgeURL("hk", "/openai/v1/models"), nil)
		req.Header.Set("authorization", "Bearer "+s.token)
		if c.host != "" {
			req.Host = c.host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("host %q: status %d", c.host, resp.StatusCode)
		}
		if got := up.Requests()[0].Header.Get("authorization"); got != "Bearer "+c.wantKey {
			t.Errorf("host %q went to the upstream holding %q, want %q", c.host, got, c.wantKey)
		}
	}
}
