package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
)

// Files name the PEM files of one side of a mutual-TLS hop. They are read at start-up
// (a mistake stops the program) and again whenever one of them changes on disk, so a
// rotated certificate or CA bundle is used by the next connection without a restart.
type Files struct {
	Cert string // this side's certificate chain
	Key  string // its private key
	CA   string // the CA bundle the other side's certificate must chain to
}

// IsZero reports whether no file is set (plain transport).
func (f Files) IsZero() bool { return f == Files{} }

// Check requires all three files: llmedge's mutual TLS always authenticates both sides.
func (f Files) Check() error {
	var missing []string
	if f.Cert == "" {
		missing = append(missing, "certificate")
	}
	if f.Key == "" {
		missing = append(missing, "private key")
	}
	if f.CA == "" {
		missing = append(missing, "CA bundle")
	}
	if len(missing) > 0 {
		return fmt.Errorf("mutual TLS needs a certificate, a private key and a CA bundle; missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

// reloader holds the parsed files and re-reads them when their size, mtime or inode
// changes (an in-place write or an atomic rename both show). A bad new file keeps the last
// good one in use and is logged; the handshake never fails because of a half-written file.
type reloader struct {
	files Files
	log   *slog.Logger

	mu    sync.Mutex
	stamp string
	cert  *tls.Certificate
	pool  *x509.CertPool
}

func newReloader(f Files, log *slog.Logger) (*reloader, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &reloader{files: f, log: log}
	stamp, err := r.stampNow()
	if err != nil {
		return nil, err
	}
	if err := r.load(stamp); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *reloader) stampNow() (string, error) {
	var b strings.Builder
	for _, p := range []string{r.files.Cert, r.files.Key, r.files.CA} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		fmt.Fprintf(&b, "%d/%d/%d;", fi.Size(), fi.ModTime().UnixNano(), ino)
	}
	return b.String(), nil
}

func (r *reloader) load(stamp string) error {
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return fmt.Errorf("load certificate %s and key %s: %w", r.files.Cert, r.files.Key, err)
	}
	pem, err := os.ReadFile(r.files.CA)
	if err != nil {
		return fmt.Errorf("read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("CA bundle %s holds no PEM certificate", r.files.CA)
	}
	r.stamp, r.cert, r.pool = stamp, &cert, pool
	return nil
}

// current returns the certificate and CA pool in force, reloading them first if a file
// changed since the last look.
func (r *reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp, err := r.stampNow()
	if err == nil && stamp != r.stamp {
		if err = r.load(stamp); err == nil {
			r.log.Info("TLS files reloaded", "cert", r.files.Cert, "ca", r.files.CA)
		}
	}
	if err != nil {
		r.log.Warn("TLS files unreadable; the previous certificate and CA stay in use", "error", err)
	}
	return r.cert, r.pool
}

// ServerConfig is a TLS server config that requires a client certificate chaining to
// f.CA and presents f.Cert; the files are re-read when they change.
func ServerConfig(f Files, log *slog.Logger) (*tls.Config, error) {
	r, err := newReloader(f, log)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := r.current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool,
				// gRPC clients insist on ALPN h2.
				NextProtos: []string{"h2"},
			}, nil
		},
	}, nil
}

// ClientConfig is a TLS client config that presents f.Cert and accepts only a server
// certificate for serverName chaining to f.CA; the files are re-read when they change.
func ClientConfig(f Files, serverName string, log *slog.Logger) (*tls.Config, error) {
	r, err := newReloader(f, log)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			return cert, nil
		},
		// crypto/tls reads RootCAs once per config; verifying here instead lets a rotated
		// CA bundle apply to the next connection. The checks are the standard ones.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			_, pool := r.current()
			opts := x509.VerifyOptions{
				Roots:         pool,
				DNSName:       serverName,
				Intermediates: x509.NewCertPool(),
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}, nil
}
