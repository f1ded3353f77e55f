package extauthz

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	rlredis "github.com/envoyproxy/ratelimit/src/redis"

	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/transport"
)

// syncRedis against a real redis-server: the limiter's pipeline (INCRBY then EXPIRE) and
// answers, an error answer that leaves the connection usable, concurrency within the
// connection bound, and a Redis that went away.
func TestSyncRedis(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	r := testenv.StartRedisSocket(t, sock)
	c := newSyncRedis(transport.Address{Path: sock}, time.Second)
	defer c.Close()

	var n1, n2 uint64
	p := c.PipeAppend(nil, &n1, "INCRBY", "k", 3)
	p = c.PipeAppend(p, nil, "EXPIRE", "k", 60)
	p = c.PipeAppend(p, &n2, "INCRBY", "k", 2)
	if err := c.PipeDo(p); err != nil {
		t.Fatal(err)
	}
	if n1 != 3 || n2 != 5 {
		t.Fatalf("pipeline answered %d, %d; want 3, 5", n1, n2)
	}
	if ttl, err := r.Do("TTL", "k"); err != nil || ttl.(int64) <= 0 || ttl.(int64) > 60 {
		t.Fatalf("TTL k = %v, %v; want the pipeline's EXPIRE", ttl, err)
	}

	// An error answer (INCRBY on a string) is the command's, not the connection's.
	if err := c.DoCmd(nil, "SET", "s", "text"); err != nil {
		t.Fatal(err)
	}
	if err := c.DoCmd(&n1, "INCRBY", "s", 1); err == nil {
		t.Fatal("INCRBY on a string succeeded")
	}
	if err := c.DoCmd(&n1, "INCRBY", "k", 1); err != nil || n1 != 6 {
		t.Fatalf("after an error answer: %d, %v; want 6 on the same client", n1, err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for range 200 {
		wg.Go(func() {
			var v uint64
			errs <- c.DoCmd(&v, "INCRBY", "c", 1)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v, err := r.Do("GET", "c"); err != nil || v != "200" {
		t.Fatalf("GET c = %v, %v; want 200 increments counted", v, err)
	}
	if got := c.NumActiveConns(); got < 1 || got > syncRedisConns {
		t.Errorf("%d connections open; want 1..%d", got, syncRedisConns)
	}

	r.Stop()
	if err := c.DoCmd(&n1, "INCRBY", "k", 1); err == nil {
		t.Fatal("INCRBY succeeded with Redis stopped")
	}
	c.Close()
	if err := c.PipeDo(rlredis.Pipeline{}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("after Close: %v; want an error saying the client is closed", err)
	}
}
