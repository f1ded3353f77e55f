package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// twoRegions: hk serves OpenAI only; sg also serves Anthropic and Gemini (whose compliance
// lists exclude hk). Every upstream is the TLS fake, reached by name with an endpoint
// override, so SNI, certificate checks and Host rewriting are real.
const twoRegions = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
  sg:
    listen: 127.0.0.1:{{.Port "sg"}}
    extauthz: {{.ExtAuthz "sg"}}
    upstreams: [openai, anthropic, gemini]
upstreams:
  openai:
    url: https://api.openai.test
    endpoint: {{.Upstream}}
    tls: {ca_file: {{.CA}}}
    allowed_regions: [hk, sg]
  anthropic:
    url: https://api.anthropic.test
    endpoint: {{.Upstream}}
    tls: {ca_file: {{.CA}}}
    allowed_regions: [sg]
  gemini:
    url: https://gemini.test/v1beta
    endpoint: {{.Upstream}}
    tls: {ca_file: {{.CA}}}
    allowed_regions: [sg]
routes:
  openai:
    match: {prefix: /openai}
    upstream: openai
    prefix_rewrite: /
  anthropic:
    match: {prefix: /anthropic/}
    upstream: anthropic
    prefix_rewrite: /
  gemini:
    match: {prefix: /gemini}
    upstream: gemini
    prefix_rewrite: /
`

const chatBody = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"say hello to the edge"}]}`

func TestEachRegionGetsOnlyItsOwnConfig(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk", "sg")

	cases := []struct {
		region     string
		want, deny []string
	}{
		{"hk", []string{`"llmedge-hk"`, `"upstream_openai"`}, []string{`"llmedge-sg"`, `"upstream_anthropic"`, `"upstream_gemini"`}},
		{"sg", []string{`"llmedge-sg"`, `"upstream_openai"`, `"upstream_anthropic"`, `"upstream_gemini"`}, []string{`"llmedge-hk"`}},
	}
	for _, c := range cases {
		dump := string(s.envoys[c.region].ConfigDump(t))
		for _, w := range c.want {
			if !strings.Contains(dump, w) {
				t.Errorf("region %s: /config_dump lacks %s", c.region, w)
			}
		}
		for _, d := range c.deny {
			if strings.Contains(dump, d) {
				t.Errorf("region %s: /config_dump holds %s, which belongs to another region", c.region, d)
			}
		}
	}

	// Compliance shows on the wire too: Gemini is not served from hk.
	resp, body := post(t, s.edgeURL("hk", "/gemini/models/gemini-2.0-flash:generateContent"), `{}`, s.auth(nil))
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `no route in region hk`) {
		t.Errorf("gemini via hk: got %d %s, want 404 JSON naming region hk", resp.StatusCode, body)
	}
	resp, _ = post(t, s.edgeURL("sg", "/gemini/models/gemini-2.0-flash:generateContent"), `{"contents":[{"parts":[{"text":"hi"}]}]}`, s.auth(nil))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("gemini via sg: got %d, want 200", resp.StatusCode)
	}
}

func TestRequestReachesUpstreamOverTLS(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	s := newStack(t, up, twoRegions, "sg")

	cases := []struct {
		name, path, body       string
		wantHost, wantPath     string
		wantObject, wantSubstr string
	}{
		{"openai", "/openai/v1/chat/completions", chatBody, "api.openai.test", "/v1/chat/completions", "chat.completion", `"total_tokens"`},
		{"anthropic", "/anthropic/v1/messages", `{"model":"claude-x","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`, "api.anthropic.test", "/v1/messages", "message", `"output_tokens"`},
		{"gemini base path", "/gemini/models/gemini-2.0-flash:generateContent", `{"contents":[{"parts":[{"text":"hi"}]}]}`, "gemini.test", "/v1beta/models/gemini-2.0-flash:generateContent", "", `"usageMetadata"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up.Reset()
			resp, body := post(t, s.edgeURL("sg", c.path), c.body, s.auth(nil))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if !strings.Contains(string(body), c.wantSubstr) {
				t.Errorf("body lacks %s: %s", c.wantSubstr, body)
			}
			if c.wantObject != "" {
				var obj struct{ Object, Type string }
				if err := json.Unmarshal(body, &obj); err != nil || (obj.Object != c.wantObject && obj.Type != c.wantObject) {
					t.Errorf("body is not a %s object: %s", c.wantObject, body)
				}
			}
			reqs := up.Requests()
			if len(reqs) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(reqs))
			}
			got := reqs[0]
			if got.SNI != c.wantHost {
				t.Errorf("SNI = %q, want %q", got.SNI, c.wantHost)
			}
			if got.Host != c.wantHost {
				t.Errorf("Host = %q, want %q", got.Host, c.wantHost)
			}
			if got.Path != c.wantPath {
				t.Errorf("path = %q, want %q", got.Path, c.wantPath)
			}
			if got.Proto != "HTTP/2.0" {
				t.Errorf("upstream protocol = %q, want HTTP/2.0 negotiated by ALPN", got.Proto)
			}
			if got.Body != c.body {
				t.Errorf("upstream got body %q, want it unchanged", got.Body)
			}
		})
	}

	// The response body passes through byte for byte: compare with the fake answered directly.
	direct := fakellm.New(fakellm.Options{})
	rec := &bodyRecorder{header: http.Header{}}
	req, _ := http.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(chatBody))
	direct.ServeHTTP(rec, req)
	_, viaEdge := post(t, s.edgeURL("sg", "/openai/v1/chat/completions"), chatBody, s.auth(nil))
	if normalizeIDs(string(viaEdge)) != normalizeIDs(rec.body.String()) {
		t.Errorf("body through the edge differs from the upstream's:\nedge:   %s\ndirect: %s", viaEdge, rec.body.String())
	}
}

func TestUpstreamCertificateIsVerified(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, fakellm.Options{})
	// The fake's certificate does not cover wrong.test: Envoy must refuse the connection
	// rather than send the request (and, later, a provider key) to it.
	s := newStack(t, up, `
version: 1
regions:
  hk: {listen: 127.0.0.1:{{.Port "hk"}}, extauthz: {{.ExtAuthz "hk"}}, upstreams: [impostor]}
upstreams:
  impostor:
    url: https://wrong.test
    endpoint: {{.Upstream}}
    tls: {ca_file: {{.CA}}}
    allowed_regions: [hk]
routes:
  all: {match: {prefix: /}, upstream: impostor}
`, "hk")
	resp, body := post(t, s.edgeURL("hk", "/v1/chat/completions"), chatBody, s.auth(nil))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503: %s", resp.StatusCode, body)
	}
	var e struct {
		Error struct{ Message, Details string }
	}
	if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error.Message, "upstream is unavailable") {
		t.Errorf("want a JSON error saying the upstream is unavailable, got %s", body)
	}
	if n := len(up.Requests()); n != 0 {
		t.Errorf("the impostor upstream received %d requests", n)
	}
}

// applyBound is how long an edit may take from the file write to the route serving. The
// README promises "usually within 100 ms"; the bound is generous so that only a real
// regression (a reload that waits for a poll, a hold-off gone wrong) fails it.
const applyBound = 5 * time.Second

func TestAddedRouteServesWithinDeadline(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk", "sg")
	before := s.status()

	resp, _ := post(t, s.edgeURL("hk", "/v2/chat/completions"), chatBody, s.auth(nil))
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("before the edit: status %d, want 404", resp.StatusCode)
	}
	edited := strings.Replace(twoRegions, "routes:\n", "routes:\n  openai-v2:\n    match: {prefix: /v2/}\n    upstream: openai\n    prefix_rewrite: /v1/\n", 1)
	start := time.Now()
	s.writeRoutes(edited)
	// Both waits share one deadline, applyBound after the write: missing it fails the test.
	var st controlplane.Status
	testenv.Eventually(t, applyBound, 5*time.Millisecond, func() error {
		st = s.status()
		if s.region(st, "hk").Versions["routes"] == s.region(before, "hk").Versions["routes"] {
			return fmt.Errorf("routes version unchanged")
		}
		for _, r := range []string{"hk", "sg"} {
			if !s.region(st, r).InSync {
				return fmt.Errorf("region %s not in sync", r)
			}
		}
		return nil
	})
	acked := time.Since(start)
	testenv.Eventually(t, max(applyBound-time.Since(start), 10*time.Millisecond), 5*time.Millisecond, func() error {
		resp, body := post(t, s.edgeURL("hk", "/v2/chat/completions"), chatBody, s.auth(nil))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		return nil
	})
	t.Logf("file write -> all Envoys ACKed: %v; -> route serving: %v (bound %v)", acked, time.Since(start), applyBound)

	// Only the routes changed: listeners and clusters keep their versions.
	for _, typ := range []string{"listeners", "clusters"} {
		if a, b := s.region(before, "hk").Versions[typ], s.region(st, "hk").Versions[typ]; a != b {
			t.Errorf("%s version changed from %s to %s for a route-only edit", typ, a, b)
		}
	}
}

// TestTornWriteRefusesNothing: a writer that stops mid-file, right before callers:, leaves
// a valid config with no callers on disk. The control plane holds it back as destructive
// instead of applying it, so steady traffic sees no refusal, and the completed file
// changes nothing.
func TestTornWriteRefusesNothing(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk", "sg")
	before := s.status()
	if len(before.Config.Files) != 1 {
		t.Fatalf("files %v; want the one routes YAML", before.Config.Files)
	}
	path := before.Config.Files[0]
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := bytes.Index(full, []byte("\ncallers:"))
	if cut < 0 {
		t.Fatalf("the routes YAML has no callers: section:\n%s", full)
	}
	l := startLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.auth(nil), 2)
	l.waitRequests(t, 20)

	// Written in place, in two steps, as `>` redirection or a generator does.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(full[:cut+1]); err != nil {
		t.Fatal(err)
	}
	// The writer pauses until the control plane has seen the first half and held it.
	var st controlplane.Status
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		st = s.status()
		if st.Config.Pending == nil {
			return fmt.Errorf("the first half is not pending (valid %v, errors %v)", st.Config.Valid, st.Config.Errors)
		}
		return nil
	})
	if got := st.Config.Pending.Removes.RegionsWithoutCallers; fmt.Sprint(got) != "[hk sg]" {
		t.Errorf("pending edit leaves %v without callers; want [hk sg]", got)
	}
	l.waitRequests(t, 20) // traffic flows while the half-written file sits on disk
	if _, err := f.Write(full[cut+1:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st = s.status(); st.Config.Pending != nil {
			return fmt.Errorf("still pending after the file was completed")
		}
		return nil
	})
	l.waitRequests(t, 20)
	l.halt()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed around the torn write: %v", n, n+l.ok.Load(), l.failures)
	}
	for _, r := range []string{"hk", "sg"} {
		if got, want := s.region(st, r).Versions, s.region(before, r).Versions; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("region %s versions changed from %v to %v by a torn write of the same file", r, want, got)
		}
	}
	t.Logf("%d requests served around the torn write, none refused", l.ok.Load())
}

// TestMassRemovalAppliesAfterSettle: a deliberate destructive edit (hk loses its only
// route) is held, then applied once the file has stayed unchanged for the settle period.
func TestMassRemovalAppliesAfterSettle(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk", "sg")
	before := s.status()
	edited := strings.Replace(twoRegions, "  openai:\n    match: {prefix: /openai}\n    upstream: openai\n    prefix_rewrite: /\n", "", 1)
	if edited == twoRegions {
		t.Fatal("the edit removed nothing")
	}
	s.writeRoutes(edited)
	var pending *controlplane.PendingStatus
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		st := s.status()
		if st.Config.Hash != before.Config.Hash {
			return nil // applied already: checked below
		}
		if pending = st.Config.Pending; pending == nil {
			return fmt.Errorf("edit not pending yet")
		}
		return nil
	})
	if pending == nil {
		t.Fatal("the removal was applied without being held")
	}
	if fmt.Sprint(pending.Removes.RegionsWithoutRoutes) != "[hk]" {
		t.Errorf("pending removes %+v; want hk left without routes", pending.Removes)
	}
	resp, _ := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(nil))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("while the removal is pending: status %d, want the old route serving", resp.StatusCode)
	}
	var st controlplane.Status
	testenv.Eventually(t, controlplane.DefaultSettle+10*time.Second, 20*time.Millisecond, func() error {
		if st = s.status(); st.Config.Hash == before.Config.Hash || st.Config.Pending != nil {
			return fmt.Errorf("removal not applied yet")
		}
		return nil
	})
	if st.Config.AppliedAt.Before(pending.Since.Add(controlplane.DefaultSettle)) {
		t.Errorf("applied at %v, before the settle period from %v ended", st.Config.AppliedAt, pending.Since)
	}
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(nil))
		if resp.StatusCode != http.StatusNotFound {
			return fmt.Errorf("status %d: %s; want 404 once the route is gone", resp.StatusCode, body)
		}
		return nil
	})
}

func TestBrokenEditsKeepLastGoodConfigServing(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk", "sg")
	good := s.status()
	l := startLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.auth(nil), 2)
	l.waitRequests(t, 20)

	cases := []struct {
		name, yaml, wantPath, wantMsg string
	}{
		{"syntax error", twoRegions + "\n  bad: [unclosed\n", "routes.yaml", "line"},
		{"unknown field", strings.Replace(twoRegions, "    url: https://api.openai.test", "    urll: https://api.openai.test", 1), "upstreams.openai.urll", "unknown field"},
		{"forbidden region", strings.Replace(twoRegions, "upstreams: [openai]", "upstreams: [openai, gemini]", 1), "regions.hk.upstreams[1]", `may not be served from region "hk"`},
	}
	for _, c := range cases {
		prevCheck := s.status().Config.CheckedAt
		s.writeRoutes(c.yaml)
		var st = s.status()
		testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
			st = s.status()
			if st.Config.CheckedAt == nil || (prevCheck != nil && !st.Config.CheckedAt.After(*prevCheck)) {
				return fmt.Errorf("edit not checked yet")
			}
			return nil
		})
		if st.Config.Valid {
			t.Errorf("%s: status says valid", c.name)
		}
		found := false
		for _, e := range st.Config.Errors {
			if strings.Contains(e.Path, c.wantPath) && strings.Contains(e.Msg, c.wantMsg) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: /status errors %+v lack %s: ...%s...", c.name, st.Config.Errors, c.wantPath, c.wantMsg)
		}
		for _, r := range []string{"hk", "sg"} {
			if got, want := s.region(st, r).Versions, s.region(good, r).Versions; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s: region %s versions changed to %v after a rejected edit", c.name, r, got)
			}
		}
		l.waitRequests(t, 20)
	}
	metrics := get(t, s.statusURL("/metrics"))
	for _, want := range []string{"llmedge_config_valid 0", `llmedge_config_reloads_total{result="error"} 3`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A good edit after the bad ones applies normally.
	s.writeRoutes(strings.Replace(twoRegions, "allowed_regions: [sg]\n  gemini", "allowed_regions: [hk, sg]\n  gemini", 1))
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		st := s.waitInSync(10 * time.Second)
		if !st.Config.Valid || st.Config.Hash == good.Config.Hash {
			return fmt.Errorf("good edit not applied: valid=%v", st.Config.Valid)
		}
		return nil
	})
	l.waitRequests(t, 20)
	l.halt()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during the edits: %v", n, n+l.ok.Load(), l.failures)
	}
	t.Logf("%d requests served during the edits, none failed", l.ok.Load())
}

func TestLongSSEAnswerStreamsThrough(t *testing.T) {
	t.Parallel()
	// Timeouts far below the answer's 21 s length: the stream must survive because it
	// keeps making progress, not because some total timeout is large.
	s := newStack(t, startUpstream(t, fakellm.Options{}), strings.ReplaceAll(twoRegions,
		"    allowed_regions: [hk, sg]\n", "    allowed_regions: [hk, sg]\n    response_timeout: 3s\n    stream_idle_timeout: 4s\n"), "hk")

	const chunks, interval = 21, time.Second
	req, _ := http.NewRequest(http.MethodPost, s.edgeURL("hk", "/openai/v1/chat/completions"),
		strings.NewReader(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"tell me a long story"}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("x-fake-chunks", fmt.Sprint(chunks))
	req.Header.Set("x-fake-chunk-interval", interval.String())
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d content-type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	evs, err := readSSE(resp.Body, start)
	if err != nil {
		t.Fatalf("stream broke after %v and %d events: %v", time.Since(start), len(evs), err)
	}
	total := time.Since(start)
	if len(evs) == 0 || evs[len(evs)-1].data != "[DONE]" {
		t.Fatalf("stream did not end with [DONE] (%d events, last %+v)", len(evs), evs[len(evs)-1:])
	}
	var content []sseEvent
	for _, e := range evs {
		if strings.Contains(e.data, `"content":"chunk-`) {
			content = append(content, e)
		}
	}
	if len(content) != chunks {
		t.Fatalf("got %d content chunks, want %d", len(content), chunks)
	}
	if total < time.Duration(chunks-1)*interval {
		t.Errorf("stream took %v, want >= %v", total, time.Duration(chunks-1)*interval)
	}
	// Chunks arrive as they are produced, not buffered to the end: chunk i arrives about
	// i intervals after the first.
	for i, e := range content {
		want := content[0].at + time.Duration(i)*interval
		if e.at < want-interval/2 || e.at > want+interval/2 {
			t.Errorf("chunk %d arrived at %v, want about %v", i, e.at, want)
		}
	}
	t.Logf("%d chunks over %v; first after %v, last after %v", len(content), total, content[0].at, content[len(content)-1].at)
}

func TestResponseTimeoutBoundsWaitForHeaders(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), strings.ReplaceAll(twoRegions,
		"    allowed_regions: [hk, sg]\n", "    allowed_regions: [hk, sg]\n    response_timeout: 1s\n"), "hk")
	start := time.Now()
	resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody, s.auth(map[string]string{"x-fake-delay": "3s"}))
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504: %s", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), "response_timeout") {
		t.Errorf("504 body does not explain the timeout: %s", body)
	}
	if took >= 3*time.Second {
		t.Errorf("the edge waited %v, past the upstream's own delay", took)
	}
}

func TestControlPlaneRestartLosesNoRequest(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk", "sg")
	before := s.status()
	l := startLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.auth(nil), 2)
	l.waitRequests(t, 20)

	s.cp.Kill()            // the harshest stop: no goodbye to the Envoys
	l.waitRequests(t, 100) // Envoy serves on from its last config
	s.startControlPlane()
	st := s.waitInSync(30 * time.Second)
	for _, r := range []string{"hk", "sg"} {
		if fmt.Sprint(s.region(st, r).Versions) != fmt.Sprint(s.region(before, r).Versions) {
			t.Errorf("region %s: versions changed across a restart with the same YAML", r)
		}
	}
	// The resynced Envoys follow new edits.
	s.writeRoutes(strings.Replace(twoRegions, "routes:\n", "routes:\n  after-restart:\n    match: {prefix: /after/}\n    upstream: openai\n    prefix_rewrite: /v1/\n", 1))
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		resp, body := post(t, s.edgeURL("hk", "/after/chat/completions"), chatBody, s.auth(nil))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		return nil
	})
	l.waitRequests(t, 20)
	l.halt()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d requests failed across the control plane restart: %v", n, l.failures)
	}
	t.Logf("%d requests served across the restart, none failed", l.ok.Load())
}

func get(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return string(b)
}

// bodyRecorder is a minimal http.ResponseWriter for calling the fake directly.
type bodyRecorder struct {
	header http.Header
	body   bytes.Buffer
	code   int
}

func (r *bodyRecorder) Header() http.Header         { return r.header }
func (r *bodyRecorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *bodyRecorder) WriteHeader(code int)        { r.code = code }

var volatileFields = regexp.MustCompile(`"(id|created)":("[^"]*"|[0-9]+)`)

// normalizeIDs blanks the fields the fake varies per response (ids, timestamps).
func normalizeIDs(s string) string { return volatileFields.ReplaceAllString(s, `"$1":_`) }
