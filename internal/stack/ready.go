package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/transport"
)

// Check is one readiness probe: nil once the thing it probes is ready.
type Check func(ctx context.Context) error

// localClient ignores proxy settings: every probe is on loopback.
var localClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

// Poll calls check every interval until it returns nil, and returns check's last error
// once timeout has passed or ctx ends, or at once if check returns a Permanent error.
func Poll(ctx context.Context, timeout, interval time.Duration, check Check) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready within %v: %w", timeout, err)
		case <-t.C:
		}
	}
}

// Permanent wraps an error a Check returns to make Poll give up at once.
func Permanent(err error) error { return permanent{err} }

type permanent struct{ error }

// Await polls check until it passes, failing early if p exits first. Its errors name
// the process and its log.
func (p *Process) Await(ctx context.Context, timeout time.Duration, check Check) error {
	err := Poll(ctx, timeout, 20*time.Millisecond, func(ctx context.Context) error {
		if p.Exited() {
			return Permanent(errExited)
		}
		return check(ctx)
	})
	switch {
	case err == nil:
		return nil
	case p.Exited():
		return fmt.Errorf("%w before it was ready; its last lines:\n%s", p.ExitError(), p.LogTail(20))
	}
	return fmt.Errorf("%s: %w; see %s", p.Name, err, p.logPath)
}

var errExited = errors.New("exited")

// HTTPStatus passes once GET url answers want.
func HTTPStatus(url string, want int) Check {
	return func(ctx context.Context) error {
		status, body, err := Get(ctx, url)
		if err != nil {
			return err
		}
		if status != want {
			return fmt.Errorf("GET %s: HTTP %d %.200q, want %d", url, status, body, want)
		}
		return nil
	}
}

// HTTPAnswers passes once GET url gets any HTTP answer (the server is up, ready or not).
func HTTPAnswers(url string) Check {
	return func(ctx context.Context) error {
		_, _, err := Get(ctx, url)
		return err
	}
}

// TCPOpen passes once addr (host:port, or unix:/path for a socket) accepts a connection.
func TCPOpen(addr string) Check {
	return func(ctx context.Context) error {
		c, err := dial(ctx, addr, 0)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// dial connects to host:port or to the socket of unix:/path.
func dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if path, ok := strings.CutPrefix(addr, transport.UnixPrefix); ok {
		return d.DialContext(ctx, "unix", path)
	}
	return d.DialContext(ctx, "tcp", addr)
}

// RedisPONG passes once the Redis at addr answers PING.
func RedisPONG(addr string) Check {
	return func(ctx context.Context) error {
		reply, err := RedisDo(ctx, addr, "PING")
		if err != nil {
			return err
		}
		if reply != "PONG" {
			return fmt.Errorf("redis %s PING: %v", addr, reply) // e.g. LOADING
		}
		return nil
	}
}

// All passes once every check passes, in order.
func All(checks ...Check) Check {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

// Get fetches a local URL and returns its status and body.
func Get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := localClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// RedisDo sends one command and returns its reply: string for simple and bulk strings,
// int64 for integers, []any for arrays, nil for a null reply; a Redis error reply is an
// error. addr is host:port or unix:/path.
func RedisDo(ctx context.Context, addr string, args ...string) (any, error) {
	conn, err := dial(ctx, addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	return readRESP(bufio.NewReader(conn))
}

func readRESP(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("redis: empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, errors.New("redis: " + body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readRESP(br); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}
