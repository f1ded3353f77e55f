// Shared streaming machinery: SSE framing, pacing, and aborting connections.

package fakellm

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// chunkText is the i-th generated word. Keeping it one word per chunk makes
// completion token counts equal the chunk count.
func chunkText(i int) string { return fmt.Sprintf("chunk-%d ", i) }

func answerText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(chunkText(i))
	}
	return b.String()
}

// sseStream writes server-sent events, flushing each one so that arrival
// times at the client reflect the pacing (the point of streaming tests).
type sseStream struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	sep string // event terminator; Gemini uses CRLF
}

func startSSE(w http.ResponseWriter, sep string) (*sseStream, error) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	s := &sseStream{w: w, rc: http.NewResponseController(w), sep: sep}
	return s, s.rc.Flush()
}

// send writes one event; event may be empty for data-only streams.
func (s *sseStream) send(event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.sendRaw(event, string(b))
}

func (s *sseStream) sendRaw(event, data string) error {
	var b strings.Builder
	if event != "" {
		b.WriteString("event: ")
		b.WriteString(event)
		b.WriteString(s.sep[:len(s.sep)/2])
	}
	b.WriteString("data: ")
	b.WriteString(data)
	b.WriteString(s.sep)
	if _, err := s.w.Write([]byte(b.String())); err != nil {
		return err
	}
	return s.rc.Flush()
}

// paced calls emit for each of the plan's chunks, pausing between them, and
// carries out a reset-after-chunks fault. It reports whether the caller
// should go on to finish the stream; false means the client went away or
// the connection was aborted.
func paced(c *call, emit func(i int) error) bool {
	ctx := c.r.Context()
	for i := range c.p.chunks {
		if i == c.p.resetAfterChunks {
			abort(c.w, c.r)
			return false
		}
		if i > 0 && !sleep(ctx, c.p.interval) {
			return false
		}
		if err := emit(i); err != nil || ctx.Err() != nil {
			return false
		}
	}
	if c.p.resetAfterChunks >= 0 {
		abort(c.w, c.r)
		return false
	}
	return true
}

// sleep waits for d unless ctx ends first, so a departed client frees the
// handler at once instead of after the whole scripted stream.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// abort kills the exchange without a proper ending so clients see a
// transport error. On HTTP/1 the connection is hijacked and closed with a
// TCP RST (no TLS close_notify, no terminating chunk); HTTP/2 has no hijack,
// and net/http turns http.ErrAbortHandler into an RST_STREAM. It only
// returns on HTTP/1, after which the handler must not touch w again.
func abort(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			resetConn(conn)
			return
		}
	}
	panic(http.ErrAbortHandler)
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = c.Close()
}
