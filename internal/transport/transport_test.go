package transport_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/transport/pkitest"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    transport.Address
		wantErr string
	}{
		{in: "unix:/run/llmedge/extauthz.sock", want: transport.Address{Path: "/run/llmedge/extauthz.sock"}},
		{in: "unix:///run/x.sock", want: transport.Address{Path: "/run/x.sock"}},
		{in: "127.0.0.1:10100", want: transport.Address{Host: "127.0.0.1", Port: 10100}},
		{in: "ExtAuthz.Internal:10100", want: transport.Address{Host: "extauthz.internal", Port: 10100}},
		{in: "[::1]:18000", want: transport.Address{Host: "::1", Port: 18000}},
		{in: "unix:relative.sock", wantErr: "must be absolute"},
		{in: "unix:", wantErr: "needs an absolute socket path"},
		{in: "unix:/a/../b.sock", wantErr: "must be clean"},
		{in: "unix:/" + strings.Repeat("x", transport.MaxUnixPath), wantErr: "the kernel allows at most 107"},
		{in: "localhost", wantErr: "want host:port"},
		{in: ":18000", wantErr: "want host:port"},
		{in: "127.0.0.1:0", wantErr: "(port 1-65535)"},
	}
	for _, tt := range tests {
		got, err := transport.Parse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if err == nil && got.IsUnix() {
			if back, _ := transport.Parse(got.String()); back != got {
				t.Errorf("%q does not survive String/Parse: %+v", tt.in, back)
			}
		}
	}
}

func TestParseListen(t *testing.T) {
	got, err := transport.ParseListen("unix:/run/llmedge/xds.sock, 0.0.0.0:18000")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Path != "/run/llmedge/xds.sock" || got[1].Host != "0.0.0.0" {
		t.Errorf("ParseListen = %+v", got)
	}
	if a, err := transport.ParseListenAddress(":10100"); err != nil || a.Host != "" || a.Port != 10100 || a.IsLoopback() {
		t.Errorf("ParseListenAddress(:10100) = %+v, %v; want every interface (not loopback)", a, err)
	}
	if _, err := transport.ParseListen(" , "); err == nil {
		t.Error("an empty list was accepted")
	}
}

// TestPlainTCPRefusedOffLoopback: a listener whose answers carry provider keys must not
// open plain TCP where other hosts can reach it.
func TestPlainTCPRefusedOffLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "extauthz:0"} {
		a, err := transport.ParseListenAddress(strings.Replace(addr, ":0", ":1", 1))
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		ln, err := transport.Listen(a, transport.Files{}, nil)
		if err == nil {
			ln.Close()
			t.Errorf("Listen(%s) succeeded in plain TCP", addr)
			continue
		}
		if !errors.Is(err, transport.ErrPlainTCP) || !strings.Contains(err.Error(), "--tls-client-ca") {
			t.Errorf("Listen(%s) error = %v; want ErrPlainTCP naming the TLS flags", addr, err)
		}
	}
	for _, host := range []string{"127.0.0.1", "[::1]", "localhost"} {
		a := transport.Address{Host: strings.Trim(host, "[]")}
		ln, err := transport.Listen(a, transport.Files{}, nil)
		if err != nil {
			if host == "[::1]" && strings.Contains(err.Error(), "assign requested address") {
				continue // no IPv6 loopback in this sandbox
			}
			t.Errorf("Listen(%s) on loopback: %v", host, err)
			continue
		}
		ln.Close()
	}
}

func TestUnixSocketDirectoryRule(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return d
	}
	for _, tt := range []struct {
		name string
		mode os.FileMode
		want string
	}{
		{"open", 0o755, "group and others must have no access"},
		{"group", 0o750, "group and others must have no access"},
		{"world", 0o701, "group and others must have no access"},
	} {
		d := mk(tt.name, tt.mode)
		_, err := transport.Listen(transport.Address{Path: filepath.Join(d, "s.sock")}, transport.Files{}, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("dir mode %#o: err = %v, want %q", tt.mode, err, tt.want)
		}
	}
	if os.Geteuid() == 0 {
		d := mk("other-owner", 0o700)
		if err := os.Chown(d, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := transport.Listen(transport.Address{Path: filepath.Join(d, "s.sock")}, transport.Files{}, nil)
		if err == nil || !strings.Contains(err.Error(), "not by this process's user") {
			t.Errorf("dir owned by another user: err = %v", err)
		}
	}
	if _, err := transport.Listen(transport.Address{Path: filepath.Join(base, "missing", "s.sock")}, transport.Files{}, nil); err == nil {
		t.Error("a missing directory was accepted")
	}

	good := mk("good", 0o700)
	path := filepath.Join(good, "s.sock")
	ln, err := transport.Listen(transport.Address{Path: path}, transport.Files{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %#o, want 0600", fi.Mode().Perm())
	}
	// A second listener on a live socket would steal the first one's clients.
	if _, err := transport.Listen(transport.Address{Path: path}, transport.Files{}, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second listener on a live socket: err = %v", err)
	}
	// A socket left behind by a dead process is replaced.
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	ul.Close()
	ln, err = transport.Listen(transport.Address{Path: path}, transport.Files{}, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
	// Never delete a file that is not a socket.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := transport.Listen(transport.Address{Path: path}, transport.Files{}, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file at the socket path: err = %v", err)
	}
}

// echoServer accepts connections on ln and echoes one line back; handshake failures just
// close the connection.
func echoServer(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				c.Write(buf)
			}()
		}
	}()
}

// roundTrip dials addr with cfg and checks the echo; an error means no answer.
func roundTrip(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hello" {
		return errors.New("wrong echo")
	}
	return nil
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, dir, "internal")
	other := pkitest.NewCA(t, dir, "other")
	srv := ca.Server(t, "server", "127.0.0.1")
	cli := ca.Client(t, "client", "envoy-hk")
	stranger := other.Client(t, "stranger", "envoy-hk")

	ln, err := transport.Listen(transport.Address{Host: "127.0.0.1"}, transport.Files{Cert: srv.Cert, Key: srv.Key, CA: ca.CertFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	addr := ln.Addr().String()

	good, err := transport.ClientConfig(transport.Files{Cert: cli.Cert, Key: cli.Key, CA: ca.CertFile}, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, good); err != nil {
		t.Fatalf("client with the right certificate: %v", err)
	}
	t.Run("no client certificate gets no answer", func(t *testing.T) {
		cfg, err := transport.ClientConfig(transport.Files{Cert: cli.Cert, Key: cli.Key, CA: ca.CertFile}, "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.GetClientCertificate = nil
		if err := roundTrip(addr, cfg); err == nil {
			t.Error("a client without a certificate got an answer")
		}
	})
	t.Run("certificate from another CA is refused", func(t *testing.T) {
		cfg, err := transport.ClientConfig(transport.Files{Cert: stranger.Cert, Key: stranger.Key, CA: ca.CertFile}, "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(addr, cfg); err == nil {
			t.Error("a client certificate from another CA got an answer")
		}
	})
	t.Run("client refuses a server of another CA", func(t *testing.T) {
		cfg, err := transport.ClientConfig(transport.Files{Cert: cli.Cert, Key: cli.Key, CA: other.CertFile}, "127.0.0.1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(addr, cfg); err == nil {
			t.Error("the client accepted a server certificate its CA did not issue")
		}
	})
	t.Run("client checks the server name", func(t *testing.T) {
		cfg, err := transport.ClientConfig(transport.Files{Cert: cli.Cert, Key: cli.Key, CA: ca.CertFile}, "extauthz.internal", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(addr, cfg); err == nil {
			t.Error("the client accepted a certificate for another name")
		}
	})
}

// TestMutualTLSReload rotates the server's certificate and client CA on disk: the next
// connection uses the new files, with no restart.
func TestMutualTLSReload(t *testing.T) {
	dir := t.TempDir()
	oldCA := pkitest.NewCA(t, dir, "old")
	srv := oldCA.Server(t, "server", "127.0.0.1")
	oldCli := oldCA.Client(t, "client-old", "envoy")
	caFile := filepath.Join(dir, "client-ca.pem")
	copyFile(t, oldCA.CertFile, caFile)

	ln, err := transport.Listen(transport.Address{Host: "127.0.0.1"}, transport.Files{Cert: srv.Cert, Key: srv.Key, CA: caFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	addr := ln.Addr().String()
	oldCfg, err := transport.ClientConfig(transport.Files{Cert: oldCli.Cert, Key: oldCli.Key, CA: oldCA.CertFile}, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, oldCfg); err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	// Rotate: a new CA signs a new server certificate (written over the old files) and
	// becomes the only client CA.
	newCA := pkitest.NewCA(t, t.TempDir(), "new")
	newSrv := newCA.Server(t, "server", "127.0.0.1")
	copyFile(t, newSrv.Cert, srv.Cert)
	copyFile(t, newSrv.Key, srv.Key)
	copyFile(t, newCA.CertFile, caFile)
	newCli := newCA.Client(t, "client-new", "envoy")
	newCfg, err := transport.ClientConfig(transport.Files{Cert: newCli.Cert, Key: newCli.Key, CA: newCA.CertFile}, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, newCfg); err != nil {
		t.Errorf("after rotation, the new client: %v", err)
	}
	if err := roundTrip(addr, oldCfg); err == nil {
		t.Error("after rotation, a client of the old CA still got an answer")
	}

	// A broken file keeps the last good one in use.
	if err := os.WriteFile(caFile, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, newCfg); err != nil {
		t.Errorf("a broken CA file dropped the last good one: %v", err)
	}
}

func TestTLSFilesRequired(t *testing.T) {
	_, err := transport.Listen(transport.Address{Host: "127.0.0.1"}, transport.Files{Cert: "/x.pem"}, nil)
	if err == nil || !strings.Contains(err.Error(), "missing: private key, CA bundle") {
		t.Errorf("incomplete TLS files: err = %v", err)
	}
	_, err = transport.Listen(transport.Address{Host: "127.0.0.1"}, transport.Files{Cert: "/nope.pem", Key: "/nope.pem", CA: "/nope.pem"}, nil)
	if err == nil {
		t.Error("missing TLS files were accepted")
	}
}

// copyFile replaces dst atomically, as certificate tooling does.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		t.Fatal(err)
	}
}
