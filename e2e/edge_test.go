package e2e

import (
	"bufio"
	"encoding/json"
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

	// Envoy's own refusals, sent as raw HTTP/1.1 (Go's client would not send most of them):
	// each names the rule broken, in the provider's shape, with a request id, and nothing
	// reaches the upstream. TRACE above all: a server answers it by echoing the request,
	// the key the edge adds included.
	raws := []struct {
		name, request string
		status        int
		code, message string
		allow         bool
	}{
		{"TRACE", "TRACE /openai/v1/chat/completions HTTP/1.1\r\n", 405, "method_not_allowed", "the method TRACE is not accepted", true},
		{"TRACE without a route", "TRACE /elsewhere HTTP/1.1\r\n", 405, "method_not_allowed", "the method TRACE is not accepted", true},
		{"CONNECT", "CONNECT 127.0.0.1:443 HTTP/1.1\r\n", 405, "method_not_allowed", "the method CONNECT is not accepted", true},
		{"a made-up method", "PROPFIND /openai/v1/models HTTP/1.1\r\n", 405, "method_not_allowed", "the method PROPFIND is not accepted", true},
		{"Content-Length with chunked", "POST /openai/v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
			400, "invalid_framing", "both Content-Length and Transfer-Encoding", false},
		{"WebSocket upgrade", "GET /openai/v1/realtime HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n", 403, "upgrade_not_supported",
			"connection upgrades (WebSocket, h2c) are not supported", false},
		{"HTTP/1.0", "GET /openai/v1/models HTTP/1.0\r\n", 426, "http_version_not_supported", "HTTP/1.0 is not accepted", false},
		{"underscore header", "GET /openai/v1/models HTTP/1.1\r\nx_api_key: smuggled\r\n", 400, "invalid_header", "header names with underscores", false},
		{"encoded slash", "GET /openai/v1%2Fmodels HTTP/1.1\r\n", 400, "invalid_path", "may not contain an encoded slash", false},
	}
	for _, c := range raws {
		t.Run(c.name, func(t *testing.T) {
			up.Reset()
			head := c.request + "Host: 127.0.0.1\r\nAuthorization: Bearer " + s.token + "\r\nConnection: close\r\n\r\n"
			resp, body := rawRequest(t, fmt.Sprintf("127.0.0.1:%d", s.ports["hk"]), head)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			var e struct {
				Error struct {
					Type, Code, Message string
					RequestID           string `json:"request_id"`
				}
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != c.code || !strings.Contains(e.Error.Message, c.message) || e.Error.RequestID == "" {
				t.Errorf("want an OpenAI-shaped error with code %q, a message saying %q and a request id, got %q", c.code, c.message, body)
			}
			if got := resp.Header.Get("Allow"); c.allow && got != "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" {
				t.Errorf("Allow: %q, want the methods the edge forwards", got)
			}
			if n := len(up.Requests()); n != 0 {
				t.Errorf("refused request reached the upstream %d times", n)
			}
		})
	}

	if n := s.envoyStat(t, "http.ingress_hk.rbac.llmedge_methods.denied"); n != 4 {
		t.Errorf("rbac.llmedge_methods.denied = %d, want the 4 methods refused above", n)
	}

	t.Run("credentials in the path and user agent are masked in Envoy's log", func(t *testing.T) {
		// The caller's own token in a path segment (a base URL pasted wrong), a provider key
		// in the user agent: Envoy's access log line has [masked] for each, never the value.
		const key = "sk-proj-CANARYuseragent0123456789"
		withToken := s.edgeURL("hk", "/openai/v1/files/"+s.token+"/content")
		post(t, withToken, chatBody, s.auth(map[string]string{"user-agent": "probe/1.0 key=" + key}))
		if resp, body := post(t, url, chatBody, s.auth(map[string]string{"user-agent": "probe/1.0"})); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			log := s.envoys["hk"].Log()
			if strings.Contains(log, s.token) || strings.Contains(log, "CANARY") {
				t.Fatalf("Envoy's log holds the token or the key:\n%s", grepLines(log, "files"))
			}
			if !strings.Contains(log, `"path":"[masked]"`) || !strings.Contains(log, `"upstream_path":"[masked]"`) || !strings.Contains(log, `"user_agent":"[masked]"`) {
				return fmt.Errorf("no access log line with the path, upstream path and user agent masked:\n%s", grepLines(log, "probe/1.0"))
			}
			// An ordinary path and user agent are logged as they are.
			if !strings.Contains(log, `"path":"/openai/v1/chat/completions"`) || !strings.Contains(log, `"user_agent":"probe/1.0"`) {
				return fmt.Errorf("no line with the ordinary path and user agent as they are:\n%s", grepLines(log, "probe/1.0"))
			}
			return nil
		})
		// The usage facts (usage.envoy_access_log) are not in the lines by default.
		if log := s.envoys["hk"].Log(); strings.Contains(log, `"token_usage":`) {
			t.Errorf("Envoy's log carries the usage facts without usage.envoy_access_log:\n%s", grepLines(log, "probe/1.0"))
		}
	})

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

// rawRequest sends head (a whole HTTP/1.1 request without a body) on a new connection to
// addr and reads the response.
func rawRequest(t *testing.T, addr, head string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", strings.SplitN(head, "\r\n", 2)[0], err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}
