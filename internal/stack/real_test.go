package stack

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// These run the real tools of `make tools`; a missing tool fails the test.

func realRunner(t *testing.T) *Runner {
	t.Helper()
	r := &Runner{Dir: t.TempDir()}
	if err := r.Paths.FindTools(); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRedisRestartKeepsItsPort(t *testing.T) {
	r := realRunner(t)
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	rp, err := r.StartRedis(t.Context(), Redis{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rp.Stop() }()
	if _, err := rp.Do(t.Context(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	first := rp.Process()
	if err := rp.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !first.Exited() || rp.Process() == first || rp.Port != port {
		t.Fatalf("Restart: old exited %v, new process %v, port %d (was %d)", first.Exited(), rp.Process() != first, rp.Port, port)
	}
	if v, err := rp.Do(t.Context(), "GET", "k"); err != nil || v != nil {
		t.Errorf("GET after restart = %v, %v; want an empty Redis", v, err)
	}
}

func TestEnvoyThatExitsIsReported(t *testing.T) {
	r := realRunner(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("static_resources: {listeners: [{name: x}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := r.StartEnvoy(t.Context(), "envoy-bad", Envoy{Bootstrap: bad})
	if err == nil || !strings.Contains(err.Error(), "envoy-bad exited") || !strings.Contains(err.Error(), "envoy-bad.log") {
		t.Fatalf("StartEnvoy on a bad bootstrap: %v, want an error naming the process and its log", err)
	}
}

func TestRedisOnASocket(t *testing.T) {
	r := realRunner(t)
	sock, err := MakeSockets(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := r.StartRedis(t.Context(), Redis{Socket: sock.Redis()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rp.Stop() }()
	if rp.Addr() != "unix:"+sock.Redis() {
		t.Errorf("Addr = %s", rp.Addr())
	}
	fi, err := os.Stat(sock.Redis())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("redis.sock: %v, %v; want mode 0600", fi, err)
	}
	// Restart reuses the path (redis-server replaces its stale socket).
	if err := rp.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if v, err := rp.Do(t.Context(), "PING"); err != nil || v != "PONG" {
		t.Errorf("PING after restart = %v, %v", v, err)
	}
}
