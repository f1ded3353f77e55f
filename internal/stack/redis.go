package stack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// Redis is how redis-server runs: loopback only, nothing persisted (the counters are
// fixed windows of at most a day; a restart only resets the current window).
type Redis struct {
	Port int
	Dir  string // its working directory (--dir)
}

// Addr returns 127.0.0.1:<Port> (REDIS_URL for ratelimit).
func (r Redis) Addr() string { return Loopback(r.Port) }

// Cmd returns the command line of redis-server.
func (r Redis) Cmd(redisServer string) Cmd {
	return Cmd{Path: redisServer, Dir: r.Dir, Env: BaseEnv(), Args: []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(r.Port),
		"--save", "",
		"--appendonly", "no",
		"--dir", r.Dir,
		"--daemonize", "no",
		"--logfile", "", // stdout, which goes to the log file
	}}
}

// RedisProcess is a running redis-server. It keeps its port across Restart, so clients
// configured with Addr reconnect to the new process; a restarted Redis starts empty.
type RedisProcess struct {
	Redis
	r *Runner

	mu     sync.Mutex
	proc   *Process
	starts int
}

// StartRedis runs redis-server and returns once it answers PING. An empty Dir becomes
// <runner dir>/redis.
func (r *Runner) StartRedis(ctx context.Context, s Redis) (*RedisProcess, error) {
	if err := need(ToolRedisServer, r.Paths.RedisServer); err != nil {
		return nil, err
	}
	if s.Dir == "" {
		s.Dir = filepath.Join(r.Dir, "redis")
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	rp := &RedisProcess{Redis: s, r: r}
	return rp, rp.start(ctx)
}

func (rp *RedisProcess) start(ctx context.Context) error {
	rp.mu.Lock()
	name := "redis"
	if rp.starts > 0 {
		name = fmt.Sprintf("redis-restart%d", rp.starts)
	}
	rp.starts++
	rp.mu.Unlock()
	p, err := rp.r.startReady(ctx, name, rp.Cmd(rp.r.Paths.RedisServer), RedisStartTimeout, RedisPONG(rp.Addr()))
	if err != nil {
		return err
	}
	rp.mu.Lock()
	rp.proc = p
	rp.mu.Unlock()
	return nil
}

// Process returns the current redis-server process (a new one after Restart).
func (rp *RedisProcess) Process() *Process {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.proc
}

// Stop shuts the current process down with SIGTERM (SIGKILL after StopGrace).
func (rp *RedisProcess) Stop() { rp.Process().Stop() }

// Kill ends the current process with SIGKILL: clients see their connections reset.
func (rp *RedisProcess) Kill() { rp.Process().Kill() }

// Restart stops the current process if it still runs and starts a new one on the same
// port, returning once it answers PING. Its data is gone.
func (rp *RedisProcess) Restart(ctx context.Context) error {
	rp.Stop()
	return rp.start(ctx)
}

// Do sends one command, e.g. Do(ctx, "FLUSHALL"); see RedisDo.
func (rp *RedisProcess) Do(ctx context.Context, args ...string) (any, error) {
	return RedisDo(ctx, rp.Addr(), args...)
}
