// Package testenv lets tests run the real binaries (Envoy, ratelimit,
// redis-server) installed by `make tools`, and cleans up after them.
//
// It is imported only from _test.go files. A missing binary fails the test
// instead of skipping it, so CI can never go green without running them.
package testenv

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// RepoRoot returns the directory holding go.mod, searching upwards from the
// working directory (go test runs each package in its own directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Envoy returns the path of the envoy binary ($LLMEDGE_ENVOY or .tools/bin/envoy).
func Envoy(t testing.TB) string {
	t.Helper()
	return tool(t, "LLMEDGE_ENVOY", "envoy")
}

// Ratelimit returns the path of the envoyproxy/ratelimit binary
// ($LLMEDGE_RATELIMIT or .tools/bin/ratelimit).
func Ratelimit(t testing.TB) string {
	t.Helper()
	return tool(t, "LLMEDGE_RATELIMIT", "ratelimit")
}

// RedisServer returns the path of redis-server ($LLMEDGE_REDIS_SERVER or
// .tools/bin/redis-server).
func RedisServer(t testing.TB) string {
	t.Helper()
	return tool(t, "LLMEDGE_REDIS_SERVER", "redis-server")
}

func tool(t testing.TB, envVar, name string) string {
	t.Helper()
	path := os.Getenv(envVar)
	if path == "" {
		dir := os.Getenv("LLMEDGE_TOOLS") // set by the Makefile
		if dir == "" {
			root, err := RepoRoot()
			if err != nil {
				t.Fatalf("testenv: locating %s: %v; run `make tools`", name, err)
			}
			dir = filepath.Join(root, ".tools")
		}
		path = filepath.Join(dir, "bin", name)
	}
	fi, err := os.Stat(path) // follows the symlinks tools.sh creates
	if err != nil {
		t.Fatalf("testenv: %s not found at %s (%v); run `make tools` or set %s", name, path, err, envVar)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("testenv: %s at %s is not an executable file; run `make tools` or set %s", name, path, envVar)
	}
	return path
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and that no other
// FreePort call of this test binary has returned. It picks from 20000-32767, below Linux's
// ephemeral range (32768-60999), so the port cannot be taken in the meantime by an outgoing
// connection the kernel numbers itself (Envoy, the control plane and the tests open many);
// only a deliberate bind by another process can race it.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; i < 1000; i++ {
		port := portLow + rand.IntN(portHigh-portLow)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			t.Fatalf("testenv: FreePort: %v", err)
		}
		portsGiven[port] = true
		return port
	}
	t.Fatalf("testenv: FreePort: no free port in %d-%d after 1000 tries", portLow, portHigh)
	return 0
}

const portLow, portHigh = 20000, 32768

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

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
