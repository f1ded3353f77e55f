package e2e

// The access log files, with the real control plane binary: entries streamed over Envoy's
// Access Log Service (a Go client standing in for the regions' Envoys, as in
// usage_test.go) become one masked JSON line each in the state dir's access-log files.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"

	"github.com/llmedge/llmedge/controlplane/usage"
	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/wire"
)

func TestAccessLogFilesOverALS(t *testing.T) {
	const canary = "llme_CANARYaccesslog0123456789abcdefghij"
	cp := startALSControlPlane(t, "{upstream: openai, model: gpt-4o, input: 2.5, output: 10, currency: USD}")
	base, state, conn := cp.base, cp.state, cp.conn

	entry := func(id, caller, path string) *accesslogdatav3.HTTPAccessLogEntry {
		e := alsEntry(t, alsRequest{id: id, caller: caller, tenant: "team-a", upstream: "openai", model: "gpt-4o", in: 1000, out: 100})
		e.CommonProperties.DownstreamRemoteAddress = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "203.0.113.7"}}}
		e.CommonProperties.UpstreamRemoteAddress = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8090}}}}
		e.CommonProperties.ResponseFlags = &accesslogdatav3.ResponseFlags{UpstreamRetryLimitExceeded: true}
		e.Request.RequestMethod = corev3.RequestMethod_POST
		e.Request.Path = path
		e.Request.UserAgent = "OpenAI/Python 1.54.0"
		e.Request.RequestHeaders = map[string]string{
			wire.HeaderAuthorization: "Bearer " + canary, wire.TokenHeader: canary, wire.HeaderAPIKey: canary,
		}
		e.Response.ResponseCodeDetails = "via_upstream"
		return e
	}
	var hk, sg []*accesslogdatav3.HTTPAccessLogEntry
	for i := range 12 {
		hk = append(hk, entry(fmt.Sprint("hk-", i), "alice", "/v1/chat/completions?key="+canary))
	}
	for i := range 5 {
		sg = append(sg, entry(fmt.Sprint("sg-", i), "bob", "/v1/files/"+canary+"/content"))
	}
	streamEntries(t, conn, "hk", append(append([]*accesslogdatav3.HTTPAccessLogEntry{}, hk...), hk[:4]...)) // 4 repeats
	streamEntries(t, conn, "sg", sg)

	logDir := filepath.Join(state, "access-log")
	var files map[string][]usage.Line
	testenv.Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		var err error
		files, err = readAccessLog(logDir)
		if err != nil {
			return err
		}
		n := 0
		for _, ls := range files {
			n += len(ls)
		}
		if n != 17 {
			return fmt.Errorf("%d lines in %s, want 17 (each request once)", n, logDir)
		}
		return nil
	})
	day := time.Now().UTC().Format(time.DateOnly)
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	if want := []string{"access-hk-" + day + ".jsonl", "access-sg-" + day + ".jsonl"}; fmt.Sprint(names) != fmt.Sprint(want) {
		// A run across midnight UTC may split a region over two days; anything else is wrong.
		if !strings.HasPrefix(names[0], "access-hk-") {
			t.Errorf("files %v, want %v", names, want)
		}
	}
	for name, ls := range files {
		for _, l := range ls {
			wantPath, wantCaller := "/v1/chat/completions", "alice"
			if l.Region == "sg" {
				wantPath, wantCaller = "/v1/files/"+usage.Masked+"/content", "bob"
			}
			if l.Path != wantPath || l.Caller != wantCaller || l.Method != "POST" || l.UserAgent != "OpenAI/Python 1.54.0" ||
				l.ClientAddress != "203.0.113.7" || l.UpstreamHost != "127.0.0.1:8090" || fmt.Sprint(l.ResponseFlags) != "[URX]" ||
				l.ResponseDetails != "via_upstream" || l.InputTokens != 1000 || l.Cost == nil || l.Currency != "USD" ||
				!strings.HasPrefix(name, "access-"+l.Region+"-") {
				t.Errorf("%s: line %+v", name, l)
			}
		}
		raw, err := os.ReadFile(filepath.Join(logDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("CANARY")) {
			t.Errorf("%s holds the canary credential:\n%s", name, raw)
		}
		fi, err := os.Stat(filepath.Join(logDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", name, fi.Mode().Perm())
		}
	}
	if fi, err := os.Stat(logDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("access log dir: %v %v, want mode 0700", fi.Mode(), err)
	}
	metrics := get(t, base+"/metrics")
	if !strings.Contains(metrics, "llmedge_access_log_lines_written_total 17") || !strings.Contains(metrics, "llmedge_access_log_lines_dropped_total 0") {
		t.Errorf("access log metrics:\n%s", grepLines(metrics, "llmedge_access_log"))
	}
}

func readAccessLog(dir string) (map[string][]usage.Line, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]usage.Line{}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var l usage.Line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: %v", e.Name(), err)
			}
			out[e.Name()] = append(out[e.Name()], l)
		}
		f.Close()
	}
	return out, nil
}

// accessLogOffRegions: hk turns Envoy's JSON access log off, sg keeps the default.
const accessLogOffRegions = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    upstreams: [openai]
    access_log: off
  sg:
    listen: 127.0.0.1:{{.Port "sg"}}
    extauthz: {{.ExtAuthz "sg"}}
    upstreams: [openai]
upstreams:
  openai:
    url: http://{{.PlainUpstream}}
    allowed_regions: [hk, sg]
routes:
  openai:
    match: {prefix: /openai/}
    upstream: openai
    prefix_rewrite: /
`

// TestEnvoyAccessLogOff: with regions.hk.access_log: off the real Envoy of hk writes no
// access log line for the requests it serves, which the usage ledger still records, while
// sg's Envoy (the default, stdout) logs its own. The absence is checked for three times
// Envoy's one-second log flush after the requests, and after sg's line has appeared. Then
// the setting is taken out of the live file: hk's Envoy logs the requests of new
// connections again.
func TestEnvoyAccessLogOff(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), accessLogOffRegions, "hk", "sg")
	withLedger(t, s)
	for _, region := range []string{"hk", "sg"} {
		for range 3 {
			resp, body := post(t, s.edgeURL(region, "/openai/v1/chat/completions"), chatBody, s.auth(map[string]string{"user-agent": "access-log-probe-" + region}))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d: %s", region, resp.StatusCode, body)
			}
		}
	}
	sent := time.Now()
	testenv.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(s.envoys["sg"].Log(), `"user_agent":"access-log-probe-sg"`) {
			return fmt.Errorf("sg's Envoy (access_log by default) has logged no line for its requests")
		}
		totals, err := usageTotals(t, s, "region")
		if err != nil {
			return err
		}
		for _, g := range totals {
			if g.Group["region"] == "hk" && g.Requests == 3 {
				return nil
			}
		}
		return fmt.Errorf("the ledger does not hold hk's 3 requests: %+v", totals)
	})
	for time.Since(sent) < 3*time.Second {
		if log := s.envoys["hk"].Log(); strings.Contains(log, "access-log-probe-hk") {
			t.Fatalf("hk's Envoy (access_log: off) logged a request:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}

	s.writeRoutes(strings.Replace(accessLogOffRegions, "    access_log: off\n", "", 1))
	testenv.Eventually(t, 30*time.Second, 200*time.Millisecond, func() error {
		resp, body := post(t, s.edgeURL("hk", "/openai/v1/chat/completions"), chatBody,
			s.auth(map[string]string{"user-agent": "access-log-probe-hk-on", "connection": "close"}))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		if !strings.Contains(s.envoys["hk"].Log(), `"user_agent":"access-log-probe-hk-on"`) {
			return fmt.Errorf("hk's Envoy logs no line since access_log: off was taken out of the live file")
		}
		return nil
	})
}
