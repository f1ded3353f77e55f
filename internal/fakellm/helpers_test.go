// Test helpers: servers, clients, SSE parsing and shared request bodies.

package fakellm_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
)

func newTestServer(t *testing.T, opts fakellm.Options) (*fakellm.Server, *httptest.Server) {
	t.Helper()
	s := fakellm.New(opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

// send sends a request with headers hdr; the caller closes the response body.
func send(t *testing.T, c *http.Client, method, url, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp
}

// do sends a request and returns the response with its body fully read.
func do(t *testing.T, c *http.Client, method, url, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	resp := send(t, c, method, url, body, hdr)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, b
}

type sseEvent struct {
	Event string
	Data  string
	At    time.Time
}

// readSSE parses an event stream until EOF, timestamping each event when its
// terminating blank line arrives. It returns the events read so far together
// with any read error other than a clean EOF.
func readSSE(r io.Reader) ([]sseEvent, error) {
	br := bufio.NewReader(r)
	var events []sseEvent
	var cur sseEvent
	var data []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" {
				return events, nil
			}
			return events, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		switch {
		case line == "":
			if len(data) > 0 || cur.Event != "" {
				cur.Data = strings.Join(data, "\n")
				cur.At = time.Now()
				events = append(events, cur)
			}
			cur, data = sseEvent{}, nil
		case strings.HasPrefix(line, "event:"):
			cur.Event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
}

// serveTLS runs h behind http.Server.ServeTLS with the PKI's own config,
// exactly as the command does, and returns its address.
func serveTLS(t *testing.T, h http.Handler, p *fakellm.PKI) string {
	t.Helper()
	cfg, err := p.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: cfg}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// tlsClient trusts only the PKI's CA and offers exactly the given protocols.
func tlsClient(t *testing.T, p *fakellm.PKI, serverName string, h1, h2 bool) *http.Client {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.CACertPEM) {
		t.Fatal("CA PEM did not parse")
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(h1)
	protos.SetHTTP2(h2)
	cfg := &tls.Config{RootCAs: roots, ServerName: serverName}
	if !h2 {
		// Left alone, Go's HTTP/1-only client offers no ALPN at all; real
		// HTTP/1 clients (curl --http1.1, Envoy) offer http/1.1 explicitly.
		cfg.NextProtos = []string{"http/1.1"}
	}
	tr := &http.Transport{TLSClientConfig: cfg, Protocols: protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func h2cClient(t *testing.T) *http.Client {
	t.Helper()
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func newPKI(t *testing.T) *fakellm.PKI {
	t.Helper()
	p, err := fakellm.NewPKI([]string{"localhost", "127.0.0.1", "api.openai.test"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	openAIBody = `{"model":"gpt-4o-mini","messages":[{"role":"system","content":"be brief"},` +
		`{"role":"user","content":[{"type":"text","text":"hello there world"}]}]}`
	openAIStreamBody = `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello there world"}]}`
	anthropicBody    = `{"model":"claude-3-5-haiku-latest","max_tokens":64,"system":"be brief",` +
		`"messages":[{"role":"user","content":"hello there world"}]}`
	anthropicStreamBody = `{"model":"claude-3-5-haiku-latest","max_tokens":64,"stream":true,` +
		`"messages":[{"role":"user","content":[{"type":"text","text":"hello there world"}]}]}`
	geminiBody = `{"systemInstruction":{"parts":[{"text":"be brief"}]},` +
		`"contents":[{"role":"user","parts":[{"text":"hello there world"}]}]}`
)
