package transport

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrPlainTCP refuses a plain-TCP listener on an address other hosts can reach.
var ErrPlainTCP = errors.New("plain TCP on a non-loopback address would answer anyone who can reach it; " +
	"listen on unix:/path in a directory only this user can open, or give --tls-cert, --tls-key and --tls-client-ca for mutual TLS")

// Listen opens a listener for a hop that carries or guards secrets, enforcing the rule in
// the package comment. f applies to TCP addresses only: a unix socket is guarded by its
// directory. log records how the listener is protected.
func Listen(a Address, f Files, log *slog.Logger) (net.Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if a.IsUnix() {
		if !f.IsZero() {
			log.Info("TLS files apply to TCP listeners; the unix socket is guarded by its directory", "address", a.String())
		}
		return listenUnix(a.Path, log)
	}
	switch {
	case !f.IsZero():
		cfg, err := ServerConfig(f, log)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a, err)
		}
		ln, err := net.Listen("tcp", a.String())
		if err != nil {
			return nil, err
		}
		log.Info("listening with mutual TLS", "address", ln.Addr().String(), "client_ca", f.CA)
		return tls.NewListener(ln, cfg), nil
	case a.IsLoopback():
		ln, err := net.Listen("tcp", a.String())
		if err != nil {
			return nil, err
		}
		log.Warn("listening on plain loopback TCP: any local user can connect; use a unix socket or mutual TLS outside development", "address", ln.Addr().String())
		return ln, nil
	default:
		return nil, fmt.Errorf("%s: %w", a, ErrPlainTCP)
	}
}

// CheckSocketDir refuses a directory that another user could open: connecting to a unix
// socket needs search permission on its directory, so a 0700 directory owned by this
// process's user keeps every other (non-root) user away from the socket whatever its mode.
func CheckSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("socket directory %s is owned by uid %d, not by this process's user (uid %d)", dir, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("socket directory %s is mode %#o: group and others must have no access (chmod 700 %s)", dir, perm, dir)
	}
	return nil
}

func listenUnix(path string, log *slog.Logger) (net.Listener, error) {
	if err := CheckSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := RemoveStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The directory is the guard; 0600 on the socket is a second lock should someone
	// loosen the directory later.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	log.Info("listening on a unix socket", "address", UnixPrefix+path)
	return ln, nil
}

// RemoveStaleSocket deletes a socket file left by a process that died, so that path can be
// bound again, but never a live one (a second instance would silently steal the first's
// clients) nor a non-socket file.
func RemoveStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another process", path)
	}
	return os.Remove(path)
}
