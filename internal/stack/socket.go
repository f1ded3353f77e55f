package stack

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/llmedge/llmedge/internal/transport"
)

// SocketMount is where compose mounts the socket volume, and the directory the example
// routes YAML names its sockets in (make run points them at its own Sockets instead).
const SocketMount = "/run/llmedge"

// Sockets is the directory holding a stack's unix sockets, one per internal hop: the
// control plane's xDS, each region's extauthz and ratelimit, and Redis. Only the stack's
// user can open it (mode 0700): connecting to a socket needs search permission on its
// directory, so that is what keeps every other local user away from the provider keys,
// the caller policy and the quota counters.
type Sockets struct{ Dir string }

// SocketFile is the file name of a component's socket (Topology's Socket plus the
// region for a PerRegion component): xds.sock, extauthz-hk.sock, redis.sock. It is ""
// for a component without one.
func SocketFile(component, region string) string {
	for _, c := range components() {
		if c.Name != component || c.Socket == "" {
			continue
		}
		if c.Scope == PerRegion {
			return c.Socket + "-" + region + ".sock"
		}
		return c.Socket + ".sock"
	}
	return ""
}

// Path is the socket of a component (and region) in s.
func (s Sockets) Path(component, region string) string {
	return filepath.Join(s.Dir, SocketFile(component, region))
}

// XDS is the control plane's ADS socket.
func (s Sockets) XDS() string { return s.Path("controlplane", "") }

// ExtAuthz is a region's ext_authz socket (regions.<region>.extauthz).
func (s Sockets) ExtAuthz(region string) string { return s.Path("extauthz", region) }

// Ratelimit is a region's RateLimitService socket (regions.<region>.ratelimit).
func (s Sockets) Ratelimit(region string) string { return s.Path("ratelimit", region) }

// Redis is Redis's socket (REDIS_URL for ratelimit).
func (s Sockets) Redis() string { return s.Path("redis", "") }

// All lists every socket of a stack with these regions, in Topology order.
func (s Sockets) All(regions []string) []string {
	var out []string
	for _, c := range components() {
		if c.Socket == "" {
			continue
		}
		scopes := []string{""}
		if c.Scope == PerRegion {
			scopes = regions
		}
		for _, r := range scopes {
			out = append(out, s.Path(c.Name, r))
		}
	}
	return out
}

// Unix returns the address of a socket path in llmedge's syntax: unix:/abs/path.sock.
func Unix(path string) string { return transport.UnixPrefix + path }

// MakeSockets creates the socket directory of a stack whose files live in base:
// <base>/sock, mode 0700. When a socket path there would pass the kernel's limit
// (transport.MaxUnixPath bytes: a deep run directory or a long test name), it uses a
// short directory named after base under os.TempDir (or /tmp) instead, so the same base
// gets the same directory again. An existing directory is reused only if it is a real
// directory owned by this user; it is then made 0700.
func MakeSockets(base string, regions []string) (Sockets, error) {
	abs, err := filepath.Abs(base)
	if err != nil {
		return Sockets{}, err
	}
	sum := sha256.Sum256([]byte(abs))
	short := fmt.Sprintf("llmedge-%d-%x", os.Geteuid(), sum[:6])
	candidates := []string{filepath.Join(abs, "sock"), filepath.Join(os.TempDir(), short), filepath.Join("/tmp", short)}
	for _, dir := range candidates {
		if longestSocket(Sockets{dir}, regions) > transport.MaxUnixPath {
			continue
		}
		if err := makePrivateDir(dir); err != nil {
			return Sockets{}, err
		}
		return Sockets{Dir: dir}, nil
	}
	return Sockets{}, fmt.Errorf("stack: no socket directory short enough for %d-byte socket paths (tried %s)",
		transport.MaxUnixPath, strings.Join(candidates, ", "))
}

func longestSocket(s Sockets, regions []string) int {
	n := 0
	for _, p := range s.All(slices.Concat(regions, LocalRegions())) {
		n = max(n, len(p))
	}
	return n
}

// makePrivateDir creates dir 0700, or takes over an existing one only if it is a real
// directory (not a symlink another user planted in a shared /tmp) owned by this user.
func makePrivateDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("stack: socket directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("stack: socket directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("stack: socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("stack: socket directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("stack: socket directory %s is owned by uid %d, not by this user (uid %d)", dir, st.Uid, os.Geteuid())
	}
	if err := os.Chmod(dir, 0o700); err != nil { // an older run may have left it open
		return fmt.Errorf("stack: socket directory: %w", err)
	}
	return transport.CheckSocketDir(dir)
}
