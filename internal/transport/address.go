// Package transport owns how llmedge's internal hops are addressed and authenticated: the
// hops that carry secrets (Envoy -> extauthz, which answers with provider keys) or guard
// them (the xDS stream carrying the caller policy). One syntax for addresses, used by the
// routes YAML, the command-line flags and the bootstrap; one rule for what may listen where:
//
//   - unix:/abs/path.sock: a unix domain socket in a directory only the process's user can
//     open (the directory is the guard; the socket is also made 0600);
//   - host:port with mutual TLS: a server certificate, and client certificates checked
//     against an operator-configured CA; every file is re-read when it changes. A client
//     certificate names its holder's region and component (Identity, a URI SAN), which
//     servers read with PeerOf to decide what that client may see;
//   - host:port in plain TCP: allowed on loopback only (development), logged as
//     unauthenticated, and refused on any other address.
package transport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// UnixPrefix starts a unix domain socket address: "unix:/run/llmedge/extauthz.sock".
const UnixPrefix = "unix:"

// MaxUnixPath is the longest socket path the kernel accepts: sun_path is 108 bytes on
// Linux, including the terminating NUL.
const MaxUnixPath = 107

// Address is a parsed internal address: exactly one of Path (unix socket) or Host/Port.
type Address struct {
	Path string // absolute path of a unix domain socket
	Host string // IP literal or host name, lower case
	Port uint32
}

// IsUnix reports whether a is a unix domain socket.
func (a Address) IsUnix() bool { return a.Path != "" }

// String renders a in the syntax Parse reads.
func (a Address) String() string {
	if a.IsUnix() {
		return UnixPrefix + a.Path
	}
	return net.JoinHostPort(a.Host, strconv.FormatUint(uint64(a.Port), 10))
}

// Network is the net.Listen / net.Dial network of a.
func (a Address) Network() string {
	if a.IsUnix() {
		return "unix"
	}
	return "tcp"
}

// DialTarget is a for net.Dial and grpc.NewClient ("unix:///abs/path" or "host:port").
func (a Address) DialTarget() string {
	if a.IsUnix() {
		return "unix://" + a.Path
	}
	return a.String()
}

// IsLoopback reports whether a is a TCP address only this host can reach.
func (a Address) IsLoopback() bool {
	if a.IsUnix() {
		return false
	}
	if a.Host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(a.Host)
	return err == nil && ip.IsLoopback()
}

// Parse reads "unix:/abs/path" or "host:port". Errors say what is wrong without the field
// name; callers add the field path or flag.
func Parse(s string) (Address, error) { return parse(s, false) }

// wantAddress is the syntax every address error states.
const wantAddress = "want host:port, with an IPv6 address in brackets ([::1]:18000), or unix:/absolute/path.sock"

// parse for a listener also accepts an empty host (":18000", every interface) and port 0
// (any free port, for tests).
func parse(s string, listen bool) (Address, error) {
	if rest, ok := strings.CutPrefix(s, UnixPrefix); ok {
		// Tolerate the URL form unix:///abs/path too, since gRPC and Envoy users write it.
		if strings.HasPrefix(rest, "//") {
			rest = strings.TrimPrefix(rest, "//")
		}
		switch {
		case rest == "":
			return Address{}, errors.New("unix: needs an absolute socket path, as unix:/run/llmedge/extauthz.sock")
		case !filepath.IsAbs(rest):
			return Address{}, fmt.Errorf("unix socket path %q must be absolute", rest)
		case filepath.Clean(rest) != rest:
			return Address{}, fmt.Errorf("unix socket path %q must be clean (no trailing slash, . or ..)", rest)
		case len(rest) > MaxUnixPath:
			return Address{}, fmt.Errorf("unix socket path is %d bytes; the kernel allows at most %d", len(rest), MaxUnixPath)
		case strings.ContainsRune(rest, 0):
			return Address{}, errors.New("unix socket path contains a NUL byte")
		}
		return Address{Path: rest}, nil
	}
	h, port, err := net.SplitHostPort(s)
	if err != nil || (h == "" && !listen) {
		return Address{}, errors.New(wantAddress)
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (pn == 0 && !listen) {
		return Address{}, errors.New(wantAddress + " (port 1-65535)")
	}
	return Address{Host: strings.ToLower(h), Port: uint32(pn)}, nil
}

// ParseListenAddress is Parse for a listener: an empty host (":10100") means every
// interface.
func ParseListenAddress(s string) (Address, error) { return parse(s, true) }

// ParseListen reads a comma-separated list of listen addresses (a server may listen on a
// unix socket for co-located clients and on an mTLS TCP port for remote ones). An empty
// host (":18000") means every interface.
func ParseListen(s string) ([]Address, error) {
	var out []Address
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		a, err := parse(part, true)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("no address given")
	}
	return out, nil
}
