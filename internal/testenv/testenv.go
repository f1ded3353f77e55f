// Package testenv lets tests run the real binaries (Envoy, ratelimit, redis-server)
// installed by `make tools`, and cleans up after them. It is the testing.TB adapter of
// internal/stack, which knows how every component is run: here an error fails the test
// and every process is stopped by t.Cleanup.
//
// It is imported only from _test.go files. A missing binary fails the test instead of
// skipping it, so CI can never go green without running them.
package testenv

import (
	"os"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// RepoRoot returns the directory holding go.mod, searching upwards from the working
// directory (go test runs each package in its own directory).
func RepoRoot() (string, error) { return stack.RepoRoot() }

// Envoy returns the path of the envoy binary ($LLMEDGE_ENVOY or .tools/bin/envoy).
func Envoy(t testing.TB) string {
	t.Helper()
	return tool(t, stack.ToolEnvoy)
}

// Ratelimit returns the path of the envoyproxy/ratelimit binary
// ($LLMEDGE_RATELIMIT or .tools/bin/ratelimit).
func Ratelimit(t testing.TB) string {
	t.Helper()
	return tool(t, stack.ToolRatelimit)
}

// RedisServer returns the path of redis-server ($LLMEDGE_REDIS_SERVER or
// .tools/bin/redis-server).
func RedisServer(t testing.TB) string {
	t.Helper()
	return tool(t, stack.ToolRedisServer)
}

func tool(t testing.TB, name string) string {
	t.Helper()
	path, err := stack.ToolPath(name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return path
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and that no other
// FreePort call of this test binary has returned (see stack.FreePort).
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := stack.FreePort()
	if err != nil {
		t.Fatalf("testenv: FreePort: %v", err)
	}
	return p
}

// Eventually calls cond every interval until it returns nil, and fails the
// test with cond's last error once timeout has passed. cond may call
// t.Fatalf itself to give up early (say, when the process it waits on died).
func Eventually(t testing.TB, timeout, interval time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: condition not met within %v: %v", timeout, err)
			return // only reached with a fake testing.TB whose Fatalf returns
		}
		time.Sleep(interval)
	}
}

// runner is a stack.Runner whose files go to a fresh t.TempDir().
func runner(t testing.TB, paths stack.Paths) *stack.Runner {
	return &stack.Runner{Paths: paths, Dir: t.TempDir()}
}

// Sockets makes a test's socket directory (stack.MakeSockets in a fresh t.TempDir()),
// removed when the test ends even when it had to fall back to a short one outside it.
func Sockets(t testing.TB, regions ...string) stack.Sockets {
	t.Helper()
	s, err := stack.MakeSockets(t.TempDir(), regions)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(s.Dir) })
	return s
}
