package stack

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
)

// Redis is how redis-server runs: on a unix socket (or loopback TCP), nothing persisted
// (the counters are fixed windows of at most a day; a restart only resets the current
// window).
type Redis struct {
	// Socket, when set, is the only listener (--port 0): a unix socket, 0600, in a
	// directory only the stack's user can open. Otherwise Redis listens on
	// 127.0.0.1:Port.
	Socket string
	Port   int
	Dir    string // its working directory (--dir)
}

// Addr returns unix:<Socket> or 127.0.0.1:<Port> (ratelimit's RedisAddr).
func (r Redis) Addr() string {
	if r.Socket != "" {
		return Unix(r.Socket)
	}
	return Loopback(r.Port)
}

// Cmd returns the command line of redis-server.
func (r Redis) Cmd(redisServer string) Cmd {
	listen := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.Port)}
	if r.Socket != "" {
		listen = []string{"--port", "0", "--unixsocket", r.Socket, "--unixsocketperm", "600"}
	}
	return Cmd{Path: redisServer, Dir: r.Dir, Env: BaseEnv(), Args: append(listen,
		"--save", "",
		"--appendonly", "no",
		"--dir", r.Dir,
		"--daemonize", "no",
		"--logfile", "", // stdout, which goes to the log file
	)}
}

// RedisProcess is a running redis-server. It keeps its address across Restart, so
// clients configured with Addr reconnect to the new process; a restarted Redis starts
// empty.
type RedisProcess struct {
	Redis
	r *Runner

	restarts
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
	name := rp.nextName("redis")
	p, err := rp.r.startReady(ctx, name, rp.Cmd(rp.r.Paths.RedisServer), RedisStartTimeout, RedisPONG(rp.Addr()))
	if err != nil {
		return err
	}
	rp.set(p)
	return nil
}

// Stop shuts the current process down with SIGTERM (SIGKILL after StopGrace).
func (rp *RedisProcess) Stop() { rp.Process().Stop() }

// Kill ends the current process with SIGKILL: clients see their connections reset.
func (rp *RedisProcess) Kill() { rp.Process().Kill() }

// Restart stops the current process if it still runs and starts a new one on the same
// address, returning once it answers PING. Its data is gone.
func (rp *RedisProcess) Restart(ctx context.Context) error {
	rp.Stop()
	return rp.start(ctx)
}

// Do sends one command, e.g. Do(ctx, "FLUSHALL"); see RedisDo.
func (rp *RedisProcess) Do(ctx context.Context, args ...string) (any, error) {
	return RedisDo(ctx, rp.Addr(), args...)
}
