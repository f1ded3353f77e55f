// Tests for run: flag handling, port-0 listeners, serving and shutdown.

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer lets the test read run's stderr while run is still writing.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunServesOnPortZero(t *testing.T) {
	tlsDir := filepath.Join(t.TempDir(), "tls")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	outR, outW := io.Pipe()
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
			"--tls-dir", tlsDir, "--tls-names", "localhost,127.0.0.1",
			"--name", "fake-a", "--chunks", "2", "--chunk-interval", "0",
		}, outW, stderr)
		outW.Close()
	}()

	addrs := map[string]string{}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(10 * time.Second)
	for len(addrs) < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stdout closed early; run returned %v; stderr:\n%s", <-done, stderr.String())
			}
			f := strings.Fields(l)
			if len(f) != 3 || f[0] != "LISTEN" {
				t.Fatalf("unexpected stdout line %q", l)
			}
			if strings.HasSuffix(f[2], ":0") {
				t.Errorf("LISTEN line shows the requested port, not the bound one: %q", l)
			}
			addrs[f[1]] = f[2]
		case <-deadline:
			t.Fatalf("no LISTEN lines within 10s; stderr:\n%s", stderr.String())
		}
	}

	resp, err := http.Get("http://" + addrs["http"] + "/_fake/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("x-fake-upstream") != "fake-a" {
		t.Errorf("http healthz: %d, x-fake-upstream %q", resp.StatusCode, resp.Header.Get("x-fake-upstream"))
	}

	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err = (&http.Client{Transport: tr}).Post("https://"+addrs["https"]+"/v1/chat/completions",
		"application/json", strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	err = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if err != nil || resp.Proto != "HTTP/2.0" || len(c.Choices) != 1 || c.Choices[0].Message.Content != "chunk-0 chunk-1 " {
		t.Errorf("https chat: %s %+v (%v)", resp.Proto, c, err)
	}

	// An idle h2 client connection would make the server wait out its GOAWAY
	// grace period.
	tr.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of cancellation")
	}

	logs := stderr.String()
	for _, want := range []string{`"scheme":"http"`, `"scheme":"https"`, `"path":"/v1/chat/completions"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %s:\n%s", want, logs)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if !json.Valid([]byte(l)) {
			t.Errorf("stderr line is not JSON: %q", l)
		}
	}
}

func TestRunRejectsBadArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"nothing to serve", []string{"--listen", ""}},
		{"unknown flag", []string{"--bogus"}},
		{"stray argument", []string{"--listen", "127.0.0.1:0", "extra"}},
		{"bad log level", []string{"--listen", "127.0.0.1:0", "--log-level", "loud"}},
		{"bad listen address", []string{"--listen", "256.0.0.1:http-nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := run(ctx, tt.args, io.Discard, io.Discard); err == nil {
				t.Error("run succeeded, want an error")
			}
		})
	}
}
