package e2e

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// bodyKeeper is an OpenAI-shaped upstream that keeps every request body it receives,
// by the x-case header the test sends, and answers with a small completion.
type bodyKeeper struct {
	mu     sync.Mutex
	bodies map[string]string
}

func (b *bodyKeeper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	b.mu.Lock()
	b.bodies[r.Header.Get("x-case")] = string(body)
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":"c","object":"chat.completion","model":"reported","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`)
}

func (b *bodyKeeper) body(name string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.bodies[name]
	return s, ok
}

const factsRegion = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    ratelimit: {{.RateLimit "hk"}}
    upstreams: [openai]
upstreams:
  openai: {url: http://RAW, allowed_regions: [hk]}
routes:
{{.Route "openai"}}
callers:
  facts:
    tokens: [{{.Digest "facts"}}]
    tenant: team-facts
    upstreams: [openai]
    limits:
      - {requests: 2, per: minute, model: m-limited}
`

// TestRequestFactsFromTheBody: the model and stream flag a request's body names reach
// the ledger and model-scoped quotas however the body arrives — in one piece, in pieces
// over HTTP/1.1, over HTTP/2 followed by trailers — and the body reaches the provider
// unchanged; a body the edge does not read (too large, not JSON) passes unchanged too; a
// refused caller's body never reaches the provider. With extauthz inside Envoy the module
// reads these facts itself, in place of Envoy's json_to_metadata (which misses a body
// followed by trailers).
func TestRequestFactsFromTheBody(t *testing.T) {
	t.Parallel()
	rec := &bodyKeeper{bodies: map[string]string{}}
	s := newStack(t, startUpstream(t, fakellm.Options{}), strings.ReplaceAll(factsRegion, "RAW", serveUpstream(t, rec)), "hk")
	withLedger(t, s)
	url := s.edgeURL("hk", "/openai/v1/chat/completions")
	auth := map[string]string{"authorization": "Bearer " + s.tokens["facts"]}
	chat := func(model, extra string) string {
		return `{"model":"` + model + `",` + extra + `"messages":[{"role":"user","content":"hi"}]}`
	}
	sent := map[string]string{} // case -> body
	send := func(name, body string) *http.Response {
		h := map[string]string{"x-case": name}
		for k, v := range auth {
			h[k] = v
		}
		resp, _ := post(t, url, body, h)
		sent[name] = body
		return resp
	}

	// In one piece.
	if resp := send("whole", chat("m-whole", `"stream":false,`)); resp.StatusCode != http.StatusOK {
		t.Errorf("whole: status %d", resp.StatusCode)
	}

	// In three pieces over HTTP/1.1, apart in time so that Envoy reads them separately.
	split := chat("m-split", `"stream":true,`)
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.edgeURL("hk", ""), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer %s\r\nx-case: split\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", s.tokens["facts"], len(split))
	for _, piece := range []string{split[:7], split[7:20], split[20:]} {
		if _, err := io.WriteString(conn, piece); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond) // shapes the input; nothing waits on it
	}
	sent["split"] = split
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	readAll(resp)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("split: status %d", resp.StatusCode)
	}

	// Over HTTP/2 with trailers after the body.
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	h2 := chat("m-h2", `"stream":true,`)
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(h2))
	req.ContentLength = int64(len(h2))
	req.Header.Set("authorization", "Bearer "+s.tokens["facts"])
	req.Header.Set("x-case", "h2")
	req.Trailer = http.Header{"X-Done": {"yes"}}
	if resp, err := (&http.Client{Transport: tr}).Do(req); err != nil {
		t.Errorf("h2: %v", err)
	} else {
		readAll(resp)
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Errorf("h2: status %d over %s", resp.StatusCode, resp.Proto)
		}
	}
	sent["h2"] = h2

	// Bodies the edge does not read pass unchanged.
	big := chat("m-big", `"pad":"`+strings.Repeat("p", 40<<10)+`",`)
	if resp := send("big", big); resp.StatusCode != http.StatusOK {
		t.Errorf("big: status %d", resp.StatusCode)
	}
	if resp := send("broken", `{"model":"m-broken","messages":[`); resp.StatusCode != http.StatusOK {
		t.Errorf("broken: status %d", resp.StatusCode)
	}

	// A refused caller's body goes nowhere.
	resp, body := post(t, url, chat("m-refused", ""), map[string]string{"authorization": "Bearer llme_not-a-caller", "x-case": "refused"})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("refused: status %d, body %s", resp.StatusCode, body)
	}
	if _, ok := rec.body("refused"); ok {
		t.Errorf("a refused caller's request reached the provider")
	}

	// The model-scoped limit counts the body's model, however it came: two requests for
	// m-limited, the second in pieces, then a refusal; other models pass.
	withinWindow(t, time.Minute, 2, func(errorf func(string, ...any)) {
		rec.mu.Lock()
		delete(rec.bodies, "limited-3") // a try that straddled two windows may have let it through
		rec.mu.Unlock()
		if resp := send("limited-1", chat("m-limited", "")); resp.StatusCode != http.StatusOK {
			errorf("first m-limited request: status %d", resp.StatusCode)
			return
		}
		if resp := send("limited-2", `{"messages":[],`+strings.Repeat(" ", 3000)+`"model":"m-limited"}`); resp.StatusCode != http.StatusOK {
			errorf("second m-limited request: status %d", resp.StatusCode)
			return
		}
		if resp := send("limited-3", chat("m-limited", "")); resp.StatusCode != http.StatusTooManyRequests {
			errorf("third m-limited request under 2 a minute: status %d, want 429", resp.StatusCode)
		}
		if resp := send("other", chat("m-other", "")); resp.StatusCode != http.StatusOK {
			errorf("a request for another model: status %d", resp.StatusCode)
		}
	})

	// Every admitted body reached the provider as sent — those whose quota check waited on
	// Redis too, held until it answered — and the refused one did not.
	for name, want := range sent {
		got, ok := rec.body(name)
		if name == "limited-3" {
			if ok {
				t.Errorf("a request refused by its quota reached the provider")
			}
			continue
		}
		if !ok || got != want {
			t.Errorf("%s: the provider got %d bytes (first difference at %d), want the %d sent", name, len(got), firstDiff(got, want), len(want))
		}
	}

	// What the ledger recorded, by model and status: the stream flags of each.
	want := map[string]string{"m-whole/200": "false", "m-split/200": "true", "m-h2/200": "true", "m-limited/200": "false", "m-other/200": "false"}
	if !authzInEnvoy {
		// Envoy's json_to_metadata reads a body only at its end of stream, which trailers
		// take from the body: that request is recorded without its model.
		delete(want, "m-h2/200")
	}
	url = s.statusURL("/usage/export?month=" + time.Now().UTC().Format("2006-01") + "&tenant=team-facts")
	var got map[string]map[string]bool
	testenv.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		recs, err := csv.NewReader(strings.NewReader(get(t, url))).ReadAll()
		if err != nil || len(recs) == 0 {
			return fmt.Errorf("export: %v (%d lines)", err, len(recs))
		}
		col := map[string]int{}
		for i, h := range recs[0] {
			col[h] = i
		}
		got = map[string]map[string]bool{}
		for _, r := range recs[1:] {
			k := r[col["requested_model"]] + "/" + r[col["status"]]
			if got[k] == nil {
				got[k] = map[string]bool{}
			}
			got[k][r[col["stream"]]] = true
		}
		for k := range want {
			if got[k] == nil {
				return fmt.Errorf("no ledger record for %s yet: %v", k, got)
			}
		}
		return nil
	})
	for k, stream := range want {
		if len(got[k]) != 1 || !got[k][stream] {
			t.Errorf("%s: recorded with stream %v, want only %s", k, got[k], stream)
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "m-big/") || strings.HasPrefix(k, "m-broken/") {
			t.Errorf("a body the edge does not read gave its model to the ledger: %s", k)
		}
	}
}
