package e2e

import (
	"crypto/tls"
	"crypto/x509"
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

	"github.com/llmedge/llmedge/internal/certs"
	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/transport"
)

// Regions on distinct loopback addresses (127.0.0.2 hk, 127.0.0.3 sg; Linux answers on
// all of 127/8), each with its own Envoy and extauthz, under one control plane.
const (
	hkAddr = "127.0.0.2"
	sgAddr = "127.0.0.3"
)

// regionsEdge is an entry region hk, which may not reach openai and holds no key for it,
// and an egress region sg, which serves openai and listens for peer edges.
type regionsEdge struct {
	*stack
	caDir      string
	hkKeys     string
	sgPeerPort int
	sgCert     certs.Result
	gate       *gate
	hkCert     certs.Result
}

func loadPair(t *testing.T, r certs.Result) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(r.Cert, r.Key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *regionsEdge) issue(t *testing.T, region, component string, ip string) certs.Result {
	t.Helper()
	req := certs.Request{Identity: transport.Identity{Region: region, Component: component}}
	if ip != "" {
		req.IPs = []net.IP{net.ParseIP(ip)}
	}
	res, err := certs.Issue(e.caDir, req, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

const regionsRoutes = `version: 1
regions:
  hk:
    listen: %[1]s:%[3]d
    egress_address: %[1]s
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: []
    peer_tls: {cert_file: %[5]s, key_file: %[6]s, ca_file: %[9]s}
    peers: {openai: [sg]}
  sg:
    listen: %[2]s:%[4]d
    egress_address: %[2]s
    extauthz: {{.ExtAuthz "sg"}}
    upstreams: [openai]
    peer_listen: %[2]s:%[10]d
    peer_tls: {cert_file: %[7]s, key_file: %[8]s, ca_file: %[9]s}
upstreams:
{{.Provider "openai" "sg"}}
routes:
{{.Route "openai"}}
`

func newRegionsEdge(t *testing.T) *regionsEdge {
	t.Helper()
	return newRegionsEdgeWith(t, regionsRoutes)
}

// newRegionsEdgeWith starts hk and sg on the routes template tmpl (fmt verbs: addresses,
// ports, certificate files, sg's peer port, the gate's address), the template's own
// {{actions}} rendered after.
func newRegionsEdgeWith(t *testing.T, tmpl string) *regionsEdge {
	t.Helper()
	for _, a := range []string{hkAddr, sgAddr} {
		ln, err := net.Listen("tcp", a+":0")
		if err != nil {
			t.Skipf("loopback address %s is not usable here: %v", a, err)
		}
		ln.Close()
	}
	up := startUpstream(t, fakellm.Options{})
	g := startGate(t, up.tlsAddr)
	s := &stack{
		t: t, dir: t.TempDir(), sock: testenv.Sockets(t, "hk", "sg"), httpPort: testenv.FreePort(t),
		envoys: map[string]*testenv.EnvoyProcess{}, ports: map[string]int{"hk": testenv.FreePort(t), "sg": testenv.FreePort(t)},
		up: up, authz: map[string]*testenv.Process{}, authzHTTP: map[string]int{}, tokens: map[string]string{},
		rl: map[string]*testenv.RatelimitProcess{}, rlRegions: map[string]bool{},
	}
	e := &regionsEdge{gate: g, stack: s, caDir: filepath.Join(s.dir, "ca"), hkKeys: filepath.Join(s.dir, "keys-hk"), sgPeerPort: testenv.FreePort(t)}
	if err := os.MkdirAll(e.hkKeys, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Init(e.caDir, certs.DefaultCAValidity, time.Now()); err != nil {
		t.Fatal(err)
	}
	hk := e.issue(t, "hk", transport.ComponentEnvoy, hkAddr)
	sg := e.issue(t, "sg", transport.ComponentEnvoy, sgAddr)
	e.sgCert, e.hkCert = sg, hk
	var err error
	if s.token, err = token.New(); err != nil {
		t.Fatal(err)
	}
	// The tester's key goes to sg's keys directory only (withTester writes there).
	s.keysDir = filepath.Join(s.dir, "keys-sg")
	s.routes = filepath.Join(s.dir, "routes.yaml")
	if strings.Contains(tmpl, "[hk, sg]") {
		// hk serves openai itself here, with its own key.
		if err := os.MkdirAll(filepath.Join(e.hkKeys, "openai"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e.hkKeys, "openai", "key-1"), []byte(hkKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.writeRoutes(fmt.Sprintf(tmpl, hkAddr, sgAddr, s.ports["hk"], s.ports["sg"],
		hk.Cert, hk.Key, sg.Cert, sg.Key, filepath.Join(e.caDir, certs.CACertFile), e.sgPeerPort, g.ln.Addr().String()))
	s.startControlPlane()
	for r, keys := range map[string]string{"hk": e.hkKeys, "sg": s.keysDir} {
		s.authz[r] = testenv.StartExtAuthz(t, llmedgeBin, stk.ProcessName("extauthz", r), stk.ExtAuthz{
			Region: r, XDSAddr: stk.Unix(s.sock.XDS()), GRPCAddr: stk.Unix(s.sock.ExtAuthz(r)),
			HTTPAddr: stk.Loopback(s.authzHTTP[r]), KeysDir: keys, KeysPoll: 200 * time.Millisecond, LogLevel: "debug",
			RedisAddr: stk.Unix(s.sock.Redis()),
		})
	}
	for _, r := range []string{"hk", "sg"} {
		s.envoys[r] = testenv.StartRegionEnvoy(t, llmedgeBin, stk.ProcessName("envoy", r), stk.Envoy{Region: r, XDSAddr: stk.Unix(s.sock.XDS())})
	}
	s.waitInSync(30 * time.Second)
	for _, a := range []string{net.JoinHostPort(hkAddr, fmt.Sprint(s.ports["hk"])), net.JoinHostPort(sgAddr, fmt.Sprint(e.sgPeerPort))} {
		testenv.Eventually(t, 15*time.Second, 10*time.Millisecond, func() error {
			c, err := net.Dial("tcp", a)
			if err != nil {
				return err
			}
			return c.Close()
		})
	}
	t.Cleanup(s.checkNoNacks)
	return e
}

func (e *regionsEdge) url(addr, region, path string) string {
	return fmt.Sprintf("http://%s:%d%s", addr, e.ports[region], path)
}

// TestRegionsEntryForwardsToEgress: hk has no key and no direct route for openai; its
// callers reach openai through sg, which injects its own key from its own egress address.
// The key never exists in hk.
func TestRegionsEntryForwardsToEgress(t *testing.T) {
	e := newRegionsEdge(t)
	const body = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	e.up.Reset()
	resp, b := post(t, e.url(hkAddr, "hk", "/openai/v1/chat/completions"), body, e.auth(map[string]string{"x-llmedge-caller": "nobody"}))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	reqs := e.up.Requests()
	if len(reqs) != 1 {
		t.Fatalf("the provider saw %d requests, want 1", len(reqs))
	}
	got := reqs[0]
	if v := got.Header.Get("authorization"); v != "Bearer "+upstreamKey("openai") {
		t.Errorf("provider saw authorization %q, want sg's key", v)
	}
	if host, _, _ := net.SplitHostPort(got.RemoteAddr); host != sgAddr {
		t.Errorf("provider saw the request from %s, want sg's egress address %s", host, sgAddr)
	}
	for k := range got.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-llmedge-") {
			t.Errorf("provider saw internal header %s", k)
		}
	}
	if strings.Contains(fmt.Sprint(got.Header), e.token) {
		t.Error("provider saw the caller's token")
	}

	// The edge-to-edge hop left hk from its egress address too: sg's peer listener logged
	// hk's address as the client.
	e.envoys["sg"].WaitLog(t, `"client":"`+hkAddr+`"`, 10*time.Second)

	// The key exists nowhere in hk: not in its keys directory, its Envoy's config, its
	// extauthz's readiness report, or its processes' environments.
	key := upstreamKey("openai")
	filepath.WalkDir(e.hkKeys, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if c, _ := os.ReadFile(p); strings.Contains(string(c), key) {
				t.Errorf("hk's keys directory holds the key in %s", p)
			}
			t.Errorf("hk's keys directory holds %s", p)
		}
		return nil
	})
	if strings.Contains(string(e.envoys["hk"].ConfigDump(t)), key) {
		t.Error("hk's Envoy config dump carries the key")
	}
	if r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", e.authzHTTP["hk"])); err == nil {
		rb := readAll(r)
		if strings.Contains(rb, key) || strings.Contains(rb, "sk-test") {
			t.Errorf("hk's extauthz /readyz names a key: %s", rb)
		}
	}
	for name, pid := range map[string]int{"extauthz": e.authz["hk"].Pid(), "envoy": e.envoys["hk"].Pid()} {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatalf("hk's %s environment: %v", name, err)
		}
		if strings.Contains(string(env), key) {
			t.Errorf("hk's %s environment carries the key", name)
		}
	}

	// A forged identity header on sg's ordinary listener, without a token, gets nothing.
	e.up.Reset()
	resp, b = post(t, e.url(sgAddr, "sg", "/openai/v1/chat/completions"), body, map[string]string{
		"x-llmedge-caller": "tester", "x-llmedge-upstream": "openai",
	})
	if resp.StatusCode != 401 || len(e.up.Requests()) != 0 {
		t.Errorf("forged x-llmedge-caller on the ordinary listener: status %d, provider saw %d requests: %s", resp.StatusCode, len(e.up.Requests()), b)
	}

	// The peer listener: no certificate, a certificate of another component, and sg's own
	// edge certificate are all refused before any request reaches the provider.
	ca := x509.NewCertPool()
	pem, err := os.ReadFile(filepath.Join(e.caDir, certs.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	ca.AppendCertsFromPEM(pem)
	other := e.issue(t, "hk", transport.ComponentExtAuthz, "")
	cases := map[string][]tls.Certificate{"none": nil, "hk extauthz": {loadPair(t, other)}, "sg itself": {loadPair(t, e.sgCert)}}
	// The control: hk's edge certificate is let through, so the refusals below are the
	// certificate's doing.
	hkClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca, Certificates: []tls.Certificate{loadPair(t, e.hkCert)}, ServerName: sgAddr,
	}}}
	creq, _ := http.NewRequest("POST", fmt.Sprintf("https://%s:%d/v1/chat/completions", sgAddr, e.sgPeerPort), strings.NewReader(body))
	creq.Header.Set("x-llmedge-caller", "tester")
	creq.Header.Set("x-llmedge-upstream", "openai")
	if r, err := hkClient.Do(creq); err != nil {
		t.Errorf("peer listener with hk's edge certificate: %v", err)
	} else if rb := readAll(r); r.StatusCode != 200 {
		t.Errorf("peer listener with hk's edge certificate: status %d: %s", r.StatusCode, rb)
	}
	for name, certsList := range cases {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: ca, Certificates: certsList, ServerName: sgAddr,
		}}}
		req, _ := http.NewRequest("POST", fmt.Sprintf("https://%s:%d/v1/chat/completions", sgAddr, e.sgPeerPort), strings.NewReader(body))
		req.Header.Set("x-llmedge-caller", "tester")
		req.Header.Set("x-llmedge-upstream", "openai")
		e.up.Reset()
		r, err := client.Do(req)
		if err == nil {
			rb := readAll(r)
			t.Errorf("peer listener with %s certificate: status %d: %s", name, r.StatusCode, rb)
		}
		if n := len(e.up.Requests()); n != 0 {
			t.Errorf("peer listener with %s certificate: the provider saw %d requests", name, n)
		}
	}
}

// gate stands between the edges and the fake provider and can refuse one source address,
// the way a provider (or a firewall on the path) refuses a region's egress address.
type gate struct {
	ln      net.Listener
	to      string
	mu      sync.Mutex
	blocked string
	conns   map[net.Conn]string // open client connections -> source address
	seen    map[string]int      // accepted connections by source address
}

func startGate(t *testing.T, to string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, to: to, conns: map[net.Conn]string{}, seen: map[string]int{}}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	return g
}

func (g *gate) serve(c net.Conn) {
	src, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	g.mu.Lock()
	if src == g.blocked {
		g.mu.Unlock()
		c.Close()
		return
	}
	g.conns[c] = src
	g.seen[src]++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.conns, c)
		g.mu.Unlock()
		c.Close()
	}()
	u, err := net.Dial("tcp", g.to)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
}

// block refuses src from now on and cuts its open connections; "" lets everyone in.
func (g *gate) block(src string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.blocked = src
	for c, s := range g.conns {
		if s == src {
			c.Close()
		}
	}
}

const standbyRoutes = `version: 1
regions:
  hk:
    listen: %[1]s:%[3]d
    egress_address: %[1]s
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
    peer_tls: {cert_file: %[5]s, key_file: %[6]s, ca_file: %[9]s}
    peers: {openai: [sg]}
  sg:
    listen: %[2]s:%[4]d
    egress_address: %[2]s
    extauthz: {{.ExtAuthz "sg"}}
    upstreams: [openai]
    peer_listen: %[2]s:%[10]d
    peer_tls: {cert_file: %[7]s, key_file: %[8]s, ca_file: %[9]s}
upstreams:
  openai:
    url: https://api.openai.test
    endpoint: %[11]s
    tls: {ca_file: {{.CA}}}
    allowed_regions: [hk, sg]
routes:
{{.Route "openai"}}
`

// hkKey is hk's own openai key in the standby test, so the provider tells the paths apart.
const hkKey = "sk-test-openai-hk-key"

// TestRegionsHotStandby: hk serves openai directly with sg as its hot standby. The
// provider refuses hk's egress address under steady load: requests keep succeeding
// through sg (sg's key arrives), and return to hk's direct path once it is let in again.
func TestRegionsHotStandby(t *testing.T) {
	e := newRegionsEdgeWith(t, standbyRoutes)
	keyOf := func(r fakellm.Request) string { return strings.TrimPrefix(r.Header.Get("authorization"), "Bearer ") }
	// since counts the provider's requests after index from, by key.
	since := func(from int) (n int, byKey map[string]int) {
		byKey = map[string]int{}
		reqs := e.up.Requests()
		for _, r := range reqs[min(from, len(reqs)):] {
			byKey[keyOf(r)]++
			for k := range r.Header {
				if strings.HasPrefix(strings.ToLower(k), "x-llmedge-") {
					t.Errorf("the provider saw internal header %s (key %s)", k, keyOf(r))
				}
			}
		}
		return len(reqs), byKey
	}
	e.up.Reset()
	l := startLoad(t, e.url(hkAddr, "hk", "/openai/v1/models"), e.auth(nil), 2)
	l.waitRequests(t, 20)
	mark, byKey := since(0)
	if byKey[hkKey] == 0 || byKey[upstreamKey("openai")] != 0 {
		t.Fatalf("before the cut the provider saw keys %v, want hk's only", byKey)
	}
	okBefore, failedBefore := l.ok.Load(), l.failed.Load()

	cut := time.Now()
	e.gate.block(hkAddr)
	var failover time.Duration
	testenv.Eventually(t, 30*time.Second, 5*time.Millisecond, func() error {
		_, byKey := since(mark)
		if byKey[upstreamKey("openai")] == 0 {
			return fmt.Errorf("no request through sg yet (keys %v)", byKey)
		}
		failover = time.Since(cut)
		return nil
	})
	l.waitRequests(t, 50)
	mark, _ = since(0)
	okCut, failedCut := l.ok.Load()-okBefore, l.failed.Load()-failedBefore
	// Whatever went to the provider while cut came through sg.
	l.waitRequests(t, 20)
	if _, byKey := since(mark); byKey[hkKey] != 0 {
		t.Errorf("while hk's address was refused the provider saw hk's key %d times", byKey[hkKey])
	}

	healed := time.Now()
	e.gate.block("")
	mark, _ = since(0)
	var back time.Duration
	testenv.Eventually(t, 60*time.Second, 10*time.Millisecond, func() error {
		_, byKey := since(mark)
		if byKey[hkKey] == 0 {
			return fmt.Errorf("not back on the direct path yet (keys %v)", byKey)
		}
		back = time.Since(healed)
		return nil
	})
	l.waitRequests(t, 20)
	l.halt()
	okAfter, failedAfter := l.ok.Load()-okBefore-okCut, l.failed.Load()-failedBefore-failedCut
	t.Logf("hot standby figures: before cut ok=%d failed=%d; cut: first request through sg after %s, ok=%d failed=%d (%v); healed: back on the direct path after %s, ok=%d failed=%d",
		okBefore, failedBefore, failover.Round(time.Millisecond), okCut, failedCut, l.failures, back.Round(time.Millisecond), okAfter, failedAfter)
	if failedBefore != 0 || failedAfter != 0 {
		t.Errorf("requests failed outside the cut: before %d, after %d: %v", failedBefore, failedAfter, l.failures)
	}
}
