package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/token"
	"go.yaml.in/yaml/v3"
)

// llmedgeBin, fakellmBin and moduleBin (libllmedge.so) are built once for the whole
// package by TestMain.
var llmedgeBin, fakellmBin, moduleBin string

// authzInEnvoy runs every stack's extauthz inside its Envoy, as the dynamic module
// (regions.<r>.extauthz_in_envoy), rather than as a process of its own:
// LLMEDGE_E2E_AUTHZ=envoy. `make test` runs the suite both ways.
var authzInEnvoy = os.Getenv("LLMEDGE_E2E_AUTHZ") == "envoy"

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "llmedge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := stk.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var paths stk.Paths
	if err := paths.BuildBinaries(context.Background(), root, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	llmedgeBin, fakellmBin, moduleBin = paths.Llmedge, paths.Fakellm, paths.Module
	return m.Run()
}

// upstream is the fake LLM provider, served over TLS with a test CA (as a real provider
// would be) and over plain HTTP.
type upstream struct {
	*fakellm.Server
	tlsAddr, httpAddr string
	caFile            string
}

// upstreamNames are the DNS names the fake's certificate covers.
var upstreamNames = []string{"api.openai.test", "api.anthropic.test", "gemini.test", "127.0.0.1"}

// upstreamPKI makes a throwaway CA and the fake's certificate for upstreamNames, and
// writes the CA to a file for the routes' tls.ca_file.
func upstreamPKI(t testing.TB) (*fakellm.PKI, string) {
	t.Helper()
	pki, err := fakellm.NewPKI(upstreamNames)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pki.CACertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return pki, caFile
}

func startUpstream(t testing.TB, opts fakellm.Options) *upstream {
	t.Helper()
	pki, caFile := upstreamPKI(t)
	tlsCfg, err := pki.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv := fakellm.New(opts)
	u := &upstream{Server: srv, caFile: caFile}
	for _, withTLS := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
		if withTLS {
			hs.TLSConfig = tlsCfg
			u.tlsAddr = ln.Addr().String()
			go hs.ServeTLS(ln, "", "")
		} else {
			u.httpAddr = ln.Addr().String()
			go hs.Serve(ln)
		}
		t.Cleanup(func() { hs.Close() })
	}
	return u
}

// stack is one control plane and one Envoy per region: the edge and health ports on free
// loopback ports, the internal hops (xDS, extauthz, ratelimit, Redis) on unix sockets in
// a private directory, as `make run` (internal/stack) has them.
type stack struct {
	t        testing.TB
	dir      string
	routes   string // path of the routes YAML
	sock     stk.Sockets
	httpPort int
	cp       *testenv.Process
	envoys   map[string]*testenv.EnvoyProcess
	ports    map[string]int // region -> listener port
	up       *upstream

	// extauthz per region, its ports, the keys directory it reads, and the token of the
	// caller "tester" that newStack adds to every routes YAML (allowed every upstream).
	authz     map[string]*testenv.Process
	authzHTTP map[string]int // region -> health/metrics port; set for each region that has an extauthz
	keysDir   string
	token     string
	tokens    map[string]string // caller -> token, for callers a template declares

	// Quotas: one Redis per stack, one envoyproxy/ratelimit per region that the template
	// gives a {{.RateLimit "region"}} address.
	redis     *testenv.Redis
	rl        map[string]*testenv.RatelimitProcess
	rlRegions map[string]bool

	// inEnvoy: each region's extauthz runs inside its Envoy (authzInEnvoy); authz is then
	// empty, and extauthz's log is Envoy's.
	inEnvoy bool
}

// upstreamKey is the provider key the test keys directory holds for an upstream.
func upstreamKey(upstream string) string { return "sk-test-" + upstream + "-key-1" }

// routesData feeds the routes YAML templates: {{.Port "hk"}}, {{.Upstream}}, {{.CA}}.
type routesData struct {
	s *stack
}

// Port is the listener port of a region, allocated on first use so a template may name
// regions the test starts no Envoy for.
func (d routesData) Port(region string) int {
	if _, ok := d.s.ports[region]; !ok {
		d.s.ports[region] = testenv.FreePort(d.s.t)
	}
	return d.s.ports[region]
}

// ExtAuthz is the address of a region's extauthz: its socket in the stack's directory.
func (d routesData) ExtAuthz(region string) string {
	if _, ok := d.s.authzHTTP[region]; !ok {
		d.s.authzHTTP[region] = testenv.FreePort(d.s.t)
	}
	return stk.Unix(d.s.sock.ExtAuthz(region))
}

// Digest mints a token for the named caller (once per stack) and returns the digest line
// for its tokens list; the test finds the token in stack.tokens.
func (d routesData) Digest(caller string) string {
	if _, ok := d.s.tokens[caller]; !ok {
		tok, err := token.New()
		if err != nil {
			d.s.t.Fatal(err)
		}
		d.s.tokens[caller] = tok
	}
	return token.DigestRef(d.s.tokens[caller])
}

// RateLimit is the address of a region's envoyproxy/ratelimit (its socket); a region
// named here gets one (and the stack a Redis).
func (d routesData) RateLimit(region string) string {
	d.s.rlRegions[region] = true
	return stk.Unix(d.s.sock.Ratelimit(region))
}
func (d routesData) Upstream() string      { return d.s.up.tlsAddr }
func (d routesData) PlainUpstream() string { return d.s.up.httpAddr }
func (d routesData) CA() string            { return d.s.up.caFile }

// newStack starts a control plane on the routes YAML rendered from tmpl, and one Envoy for
// each region, and waits until every Envoy has acknowledged its config.
func newStack(t testing.TB, up *upstream, tmpl string, regions ...string) *stack {
	t.Helper()
	return newStackAuthz(t, up, tmpl, authzInEnvoy, regions...)
}

// newStackAuthz is newStack with extauthz inside Envoy or not, whatever the run's
// LLMEDGE_E2E_AUTHZ: for tests of one mode.
func newStackAuthz(t testing.TB, up *upstream, tmpl string, inEnvoy bool, regions ...string) *stack {
	t.Helper()
	s := &stack{
		t:         t,
		dir:       t.TempDir(),
		sock:      testenv.Sockets(t, regions...),
		httpPort:  testenv.FreePort(t),
		envoys:    map[string]*testenv.EnvoyProcess{},
		ports:     map[string]int{},
		up:        up,
		authz:     map[string]*testenv.Process{},
		authzHTTP: map[string]int{},
		tokens:    map[string]string{},
		rl:        map[string]*testenv.RatelimitProcess{},
		rlRegions: map[string]bool{},
		inEnvoy:   inEnvoy,
	}
	for _, r := range regions {
		s.ports[r] = testenv.FreePort(t)
	}
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	s.token = tok
	s.keysDir = filepath.Join(s.dir, "keys")
	s.routes = filepath.Join(s.dir, "routes.yaml")
	s.writeRoutes(tmpl)
	s.startControlPlane()
	for _, r := range regions {
		if !s.inEnvoy {
			s.startExtAuthz(r)
		}
		if s.rlRegions[r] {
			s.startRatelimit(r)
		}
	}
	for _, r := range regions {
		s.startEnvoy(r)
	}
	s.waitInSync(30 * time.Second)
	for _, r := range regions {
		s.waitListening(r)
		if s.inEnvoy {
			s.waitAuthzReady(r)
		}
	}
	t.Cleanup(s.checkNoNacks)
	return s
}

func (s *stack) startControlPlane() {
	s.t.Helper()
	s.cp = testenv.StartControlPlane(s.t, llmedgeBin, "controlplane", stk.ControlPlane{
		Config:       s.routes,
		XDSAddr:      stk.Unix(s.sock.XDS()),
		HTTPAddr:     stk.Loopback(s.httpPort),
		WatchHoldoff: 50 * time.Millisecond,
		LogLevel:     "debug",
	})
}

// startEnvoy runs the region's Envoy (with its extauthz inside when s.inEnvoy).
func (s *stack) startEnvoy(region string) *testenv.EnvoyProcess {
	s.t.Helper()
	e := stk.Envoy{Region: region, XDSAddr: stk.Unix(s.sock.XDS())} // admin port 0: the kernel picks
	s.envoys[region] = testenv.StartRegionEnvoy(s.t, llmedgeBin, stk.ProcessName("envoy", region), s.withAuthz(e, false))
	return s.envoys[region]
}

// withAuthz gives an Envoy of the stack its extauthz when it runs inside Envoy. A second
// Envoy of a region running beside the first (another is true) gets its own health port:
// two processes cannot listen on one.
func (s *stack) withAuthz(e stk.Envoy, another bool) stk.Envoy {
	if !s.inEnvoy {
		return e
	}
	a := s.extAuthz(e.Region)
	if another {
		a.HTTPAddr = stk.Loopback(testenv.FreePort(s.t))
	}
	e.Env = a.EnvoyEnv(filepath.Dir(moduleBin))
	return e
}

// waitAuthzReady waits until the extauthz inside the region's Envoy holds its policy.
func (s *stack) waitAuthzReady(region string) {
	s.t.Helper()
	testenv.Eventually(s.t, 15*time.Second, 10*time.Millisecond, func() error {
		return stk.HTTPStatus(fmt.Sprintf("http://127.0.0.1:%d/readyz", s.authzHTTP[region]), http.StatusOK)(s.t.Context())
	})
}

// authzLog is the region's extauthz log: its process's, or its Envoy's.
func (s *stack) authzLog(region string) string {
	if s.inEnvoy {
		return s.envoys[region].Log()
	}
	return s.authz[region].Log()
}

// needsAuthzProcess skips a test about extauthz as a process of its own (killed,
// restarted) when the stack runs it inside Envoy; the suite's other run covers it.
func (s *stack) needsAuthzProcess() {
	s.t.Helper()
	if s.inEnvoy {
		s.t.Skip("extauthz runs inside Envoy in this run (LLMEDGE_E2E_AUTHZ=envoy); the other run of the suite tests it as a process")
	}
}

// startExtAuthz runs the region's extauthz against the control plane and the keys
// directory, and waits until it has its policy.
func (s *stack) startExtAuthz(region string) {
	s.t.Helper()
	s.authz[region] = testenv.StartExtAuthz(s.t, llmedgeBin, stk.ProcessName("extauthz", region), s.extAuthz(region))
}

// extAuthz is how the region's extauthz runs, in a process or inside Envoy.
func (s *stack) extAuthz(region string) stk.ExtAuthz {
	routesData{s}.ExtAuthz(region)
	return stk.ExtAuthz{
		Region:   region,
		XDSAddr:  stk.Unix(s.sock.XDS()),
		GRPCAddr: stk.Unix(s.sock.ExtAuthz(region)),
		HTTPAddr: stk.Loopback(s.authzHTTP[region]),
		KeysDir:  s.keysDir,
		KeysPoll: 200 * time.Millisecond,
		LogLevel: s.authzLogLevel(),
		// The stack's Redis, once a test starts it (startRatelimit): extauthz checks
		// request-time quotas there, and connects when it answers.
		RedisAddr: stk.Unix(s.sock.Redis()),
	}
}

// authzLogLevel is extauthz's: debug as a process; inside Envoy info, as make run and
// compose run it, since at debug level the module answers no request from a lending
// (each allowed request is logged from Go): the suite's run inside Envoy then goes
// through the fast path as users' edges do. The process run logs at debug, which the
// secrets canary reads too.
func (s *stack) authzLogLevel() string {
	if s.inEnvoy {
		return "info"
	}
	return "debug"
}

// startRatelimit runs the region's envoyproxy/ratelimit (and the stack's Redis, first:
// ratelimit exits when Redis does not answer at startup) against the control plane.
func (s *stack) startRatelimit(region string) {
	s.t.Helper()
	if s.redis == nil {
		s.redis = testenv.StartRedisSocket(s.t, s.sock.Redis())
	}
	s.rl[region] = testenv.StartRatelimit(s.t, testenv.RatelimitOptions{
		Region:     region,
		XDSAddr:    stk.Unix(s.sock.XDS()),
		RedisAddr:  s.redis.Addr(),
		GRPCSocket: s.sock.Ratelimit(region),
	})
	s.rl[region].WaitHealthy(s.t)
}

// auth returns headers with the tester's token as an OpenAI SDK sends it, plus extra.
func (s *stack) auth(extra map[string]string) map[string]string {
	h := map[string]string{"authorization": "Bearer " + s.token}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

func (s *stack) statusURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path)
}

func (s *stack) edgeURL(region, path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.ports[region], path)
}

// writeRoutes renders tmpl and replaces the routes YAML the way editors do: write a
// temporary file, then rename it over the old one.
func (s *stack) writeRoutes(tmpl string) {
	s.t.Helper()
	var b bytes.Buffer
	if err := template.Must(template.New("routes").Parse(tmpl)).Execute(&b, routesData{s}); err != nil {
		s.t.Fatal(err)
	}
	out := s.withTester(b.Bytes())
	if s.inEnvoy {
		out = withAuthzInEnvoy(out)
	}
	tmp := s.routes + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, s.routes); err != nil {
		s.t.Fatal(err)
	}
}

// withTester adds the caller "tester" (allowed every upstream of the document) unless the
// template defines callers itself, and makes sure the keys directory holds one key per
// upstream. A document that does not parse is left as it is: tests write broken YAML on
// purpose.
func (s *stack) withTester(doc []byte) []byte {
	var parsed struct {
		Upstreams map[string]any `yaml:"upstreams"`
		Callers   map[string]any `yaml:"callers"`
	}
	if err := yaml.Unmarshal(doc, &parsed); err != nil || len(parsed.Upstreams) == 0 {
		return doc
	}
	var names []string
	for u := range parsed.Upstreams {
		names = append(names, u)
		if strings.HasPrefix(u, "nokey") {
			continue // upstreams named nokey* have no key, to test that denial
		}
		dir := filepath.Join(s.keysDir, u)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			s.t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "key-1")); err != nil {
			if err := os.WriteFile(filepath.Join(dir, "key-1"), []byte(upstreamKey(u)+"\n"), 0o600); err != nil {
				s.t.Fatal(err)
			}
		}
	}
	if parsed.Callers != nil {
		return doc
	}
	sort.Strings(names)
	return append(append([]byte(nil), doc...), fmt.Sprintf("\ncallers:\n  tester:\n    tokens: [%s]\n    upstreams: [%s]\n",
		token.DigestRef(s.token), strings.Join(names, ", "))...)
}

// withAuthzInEnvoy sets extauthz_in_envoy on every region of a routes YAML that does not
// say; a document that does not parse is left as it is.
func withAuthzInEnvoy(doc []byte) []byte {
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return doc
	}
	top := root.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "regions" || top.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		regions := top.Content[i+1]
		for j := 1; j < len(regions.Content); j += 2 {
			r := regions.Content[j]
			if r.Kind != yaml.MappingNode {
				continue
			}
			set := false
			for k := 0; k+1 < len(r.Content); k += 2 {
				set = set || r.Content[k].Value == "extauthz_in_envoy"
			}
			if !set {
				r.Content = append(r.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "extauthz_in_envoy"},
					&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
			}
		}
	}
	out, err := yaml.Marshal(&root)
	if err != nil {
		return doc
	}
	return out
}

func (s *stack) status() controlplane.Status {
	s.t.Helper()
	var st controlplane.Status
	resp, err := http.Get(s.statusURL("/status"))
	if err != nil {
		s.t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		s.t.Fatalf("decode /status: %v", err)
	}
	return st
}

func (s *stack) region(st controlplane.Status, name string) controlplane.RegionStatus {
	for _, r := range st.Regions {
		if r.Name == name {
			return r
		}
	}
	s.t.Fatalf("region %q not in /status", name)
	return controlplane.RegionStatus{}
}

// waitInSync polls /status until every region has all its Envoys connected and each has
// ACKed the versions served now.
func (s *stack) waitInSync(timeout time.Duration) controlplane.Status {
	s.t.Helper()
	var st controlplane.Status
	testenv.Eventually(s.t, timeout, 10*time.Millisecond, func() error {
		st = s.status()
		if !st.Config.Valid {
			return fmt.Errorf("config not valid: %v", st.Config.Errors)
		}
		for r := range s.envoys {
			rs := s.region(st, r)
			want := 2 // Envoy and extauthz
			if s.rl[r] != nil {
				want++
			}
			if len(rs.Nodes) < want {
				return fmt.Errorf("region %s: %d nodes connected, want %d (Envoy, extauthz, ratelimit if any)", r, len(rs.Nodes), want)
			}
			if !rs.InSync {
				return fmt.Errorf("region %s: not in sync: %+v", r, rs.Nodes)
			}
		}
		return nil
	})
	return st
}

func (s *stack) waitListening(region string) {
	s.t.Helper()
	testenv.Eventually(s.t, 15*time.Second, 10*time.Millisecond, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.ports[region]))
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// checkNoNacks fails the test if any Envoy rejected a config the control plane sent.
func (s *stack) checkNoNacks() {
	if s.t.Failed() {
		return
	}
	resp, err := http.Get(s.statusURL("/status"))
	if err != nil {
		return // the test stopped the control plane itself
	}
	defer resp.Body.Close()
	var st controlplane.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return
	}
	for _, r := range st.Regions {
		for _, n := range r.Nodes {
			if n.LastNack != nil {
				s.t.Errorf("envoy %s NACKed %s version %s: %s", n.ID, n.LastNack.Type, n.LastNack.Version, n.LastNack.Error)
			}
		}
	}
}

// post sends a JSON request through the edge.
func post(t *testing.T, url, body string, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, b
}

// load sends requests one after another until stopped and counts the outcomes, so a test
// can assert that no request failed while it changed things underneath.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	sent       []string // the labels of the requests sent, failed ones included (startPacedLoad)
	// refused holds the first answer of each status other than 200, to show what a
	// caller got; statuses counts every answer by status.
	refused  map[int]refusal
	statuses map[int]int
	stop     chan struct{}
	done     chan struct{}
}

// refusal is an answer other than 200: its headers and (up to 64 KiB of) its body.
type refusal struct {
	header http.Header
	body   []byte
}

// answers returns how many answers of each status the load got, and the first refusal of
// each status other than 200.
func (l *load) answers() (map[int]int, map[int]refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.statuses), maps.Clone(l.refused)
}

func startLoad(t *testing.T, url string, headers map[string]string, workers int) *load {
	return startPacedLoad(t, workers, 0, func(int) (string, *http.Request) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		return "", req
	})
}

// startPacedLoad runs workers that each send newRequest(i) for i = 0, 1, … (one every
// interval, or back to back when interval is 0), recording every non-empty label.
func startPacedLoad(t *testing.T, workers int, interval time.Duration, newRequest func(i int) (label string, req *http.Request)) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{}), refused: map[int]refusal{}, statuses: map[int]int{}}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tick <-chan time.Time
			if interval > 0 {
				tk := time.NewTicker(interval)
				defer tk.Stop()
				tick = tk.C
			}
			// Bounded: at most 20,000 requests per worker or until stopped.
			for n := 0; n < 20000; n++ {
				if tick != nil {
					select {
					case <-l.stop:
						return
					case <-tick:
					}
				} else {
					select {
					case <-l.stop:
						return
					default:
					}
				}
				label, req := newRequest(int(next.Add(1) - 1))
				if label != "" {
					l.mu.Lock()
					l.sent = append(l.sent, label)
					l.mu.Unlock()
				}
				resp, err := client.Do(req)
				if err != nil {
					l.fail(label + ": " + err.Error())
					continue
				}
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				l.mu.Lock()
				l.statuses[resp.StatusCode]++
				if _, seen := l.refused[resp.StatusCode]; !seen && resp.StatusCode != http.StatusOK {
					l.refused[resp.StatusCode] = refusal{header: resp.Header, body: body}
				}
				l.mu.Unlock()
				if resp.StatusCode != http.StatusOK {
					l.fail(fmt.Sprintf("%s: status %d", label, resp.StatusCode))
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	t.Cleanup(l.halt)
	return l
}

// sentLabels returns the labels of the requests sent so far.
func (l *load) sentLabels() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.sent...)
}

func (l *load) fail(msg string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 10 {
		l.failures = append(l.failures, msg)
	}
	l.mu.Unlock()
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// waitRequests blocks until the load has completed at least n more successful requests,
// proving traffic flowed during whatever happened before the call.
func (l *load) waitRequests(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	testenv.Eventually(t, 20*time.Second, 5*time.Millisecond, func() error {
		if got := l.ok.Load(); got < target {
			return fmt.Errorf("%d of %d requests done", got, target)
		}
		return nil
	})
}

// sseEvent is one server-sent event and when its data line arrived.
type sseEvent struct {
	data string
	at   time.Duration
}

// readSSE reads data lines from an SSE body, timestamping each from start.
func readSSE(body io.Reader, start time.Time) ([]sseEvent, error) {
	var evs []sseEvent
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			evs = append(evs, sseEvent{data: d, at: time.Since(start)})
		}
	}
	return evs, sc.Err()
}
