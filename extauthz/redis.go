package extauthz

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	rlredis "github.com/envoyproxy/ratelimit/src/redis"
	"github.com/mediocregopher/radix/v4"
	"github.com/mediocregopher/radix/v4/resp"
	"github.com/mediocregopher/radix/v4/resp/resp3"

	"github.com/llmedge/llmedge/internal/transport"
)

// syncRedis is envoyproxy/ratelimit's Redis client interface over connections that carry
// one command (or pipeline) at a time, written and read on the goroutine that asks. The
// module's own client (radix's pooled connections) hands each command to a writer and a
// reader goroutine of the connection: two more goroutines to wake per quota check, which
// inside Envoy is most of what a check costs (docs/BENCHMARKS.md). The commands, keys and
// answers are the limiter's own; only the transport differs.
type syncRedis struct {
	addr    transport.Address
	timeout time.Duration // bounds each exchange (the limiter answers its caller sooner)
	idle    chan *syncConn
	slots   chan struct{} // one per connection in use: at most syncRedisConns
	active  atomic.Int64
	closed  atomic.Bool
}

// syncRedisConns bounds the connections to Redis: a check finds one idle, opens one, or
// waits for one (within timeout) when this many are busy, so an overload does not turn
// into a flood of connections.
const syncRedisConns = 32

func newSyncRedis(addr transport.Address, timeout time.Duration) *syncRedis {
	return &syncRedis{addr: addr, timeout: timeout, idle: make(chan *syncConn, syncRedisConns), slots: make(chan struct{}, syncRedisConns)}
}

var _ rlredis.Client = (*syncRedis)(nil)

func (c *syncRedis) DoCmd(rcv any, cmd, key string, args ...any) error {
	return c.do(radix.FlatCmd(rcv, cmd, append([]any{key}, args...)...))
}

func (c *syncRedis) PipeAppend(pipeline rlredis.Pipeline, rcv any, cmd, key string, args ...any) rlredis.Pipeline {
	return append(pipeline, rlredis.PipelineAction{Action: radix.FlatCmd(rcv, cmd, append([]any{key}, args...)...), Key: key})
}

// PipeDo writes the pipeline's commands in one write and reads their answers.
func (c *syncRedis) PipeDo(pipeline rlredis.Pipeline) error {
	p := radix.NewPipeline()
	for _, a := range pipeline {
		p.Append(a.Action)
	}
	return c.do(p)
}

func (c *syncRedis) Close() error {
	c.closed.Store(true)
	for {
		select {
		case sc := <-c.idle:
			sc.Close()
		default:
			return nil
		}
	}
}

func (c *syncRedis) NumActiveConns() int { return int(c.active.Load()) }

// do performs a on an idle connection, or a new one; a connection an error may have left
// mid-answer is closed, not reused.
func (c *syncRedis) do(a radix.Action) error {
	if c.closed.Load() {
		return errors.New("redis client closed")
	}
	t := time.NewTimer(c.timeout)
	select {
	case c.slots <- struct{}{}:
		t.Stop()
	case <-t.C:
		return fmt.Errorf("redis: all %d connections busy for %v", syncRedisConns, c.timeout)
	}
	defer func() { <-c.slots }()
	var sc *syncConn
	select {
	case sc = <-c.idle:
	default:
		var err error
		if sc, err = c.dial(); err != nil {
			return err
		}
	}
	err := a.Perform(context.Background(), sc)
	if err != nil && !errors.As(err, new(resp.ErrConnUsable)) {
		sc.Close()
		return err
	}
	c.idle <- sc // never blocks: at most syncRedisConns connections exist
	return err
}

func (c *syncRedis) dial() (*syncConn, error) {
	network, address := "tcp", c.addr.String()
	if c.addr.IsUnix() {
		network, address = "unix", c.addr.Path
	}
	nc, err := net.DialTimeout(network, address, c.timeout)
	if err != nil {
		return nil, err
	}
	c.active.Add(1)
	return &syncConn{nc: nc, br: bufio.NewReader(nc), bw: bufio.NewWriter(nc), opts: resp.NewOpts(), timeout: c.timeout, owner: c}, nil
}

// syncConn is one connection to Redis: radix.Conn, performing each exchange in place.
type syncConn struct {
	nc      net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	opts    *resp.Opts
	timeout time.Duration
	owner   *syncRedis
	closed  bool
}

var _ radix.Conn = (*syncConn)(nil)

func (c *syncConn) Addr() net.Addr                               { return c.nc.RemoteAddr() }
func (c *syncConn) Do(ctx context.Context, a radix.Action) error { return a.Perform(ctx, c) }

func (c *syncConn) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	c.owner.active.Add(-1)
	return c.nc.Close()
}

// EncodeDecode writes m (if any) and reads the answer into u (if any).
func (c *syncConn) EncodeDecode(ctx context.Context, m, u any) error {
	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.nc.SetDeadline(deadline); err != nil {
		return err
	}
	if m != nil {
		if err := resp3.Marshal(c.bw, m, c.opts); err != nil {
			return err
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
	}
	if u != nil {
		return resp3.Unmarshal(c.br, u, c.opts)
	}
	return nil
}
