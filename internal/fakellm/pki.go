// Throwaway CA and server certificate for serving the fake over TLS.

package fakellm

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/certs"
)

// PKI is a throwaway certificate authority plus one server certificate it
// signed, so the edge can be tested against TLS upstreams with real
// verification instead of "insecure skip verify".
type PKI struct {
	CACertPEM []byte
	CertPEM   []byte
	KeyPEM    []byte
}

const (
	caFile   = "ca.pem"
	certFile = "server.pem"
	keyFile  = "server-key.pem"
)

// NewPKI creates an ECDSA P-256 CA and a server certificate for names;
// names that parse as IP addresses become IP SANs, the rest DNS SANs.
func NewPKI(names []string) (*PKI, error) {
	names = cleanNames(names)
	if len(names) == 0 {
		return nil, errors.New("fakellm: NewPKI needs at least one name")
	}
	now := time.Now()
	notBefore, notAfter := now.Add(-time.Hour), now.AddDate(10, 0, 0)

	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"llmedge"}, CommonName: "llmedge fakellm test CA"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caKey, err := certs.Sign(caTmpl, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("fakellm: creating CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}

	leafTmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"llmedge"}, CommonName: names[0]},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			leafTmpl.IPAddresses = append(leafTmpl.IPAddresses, ip)
		} else {
			leafTmpl.DNSNames = append(leafTmpl.DNSNames, n)
		}
	}
	leafDER, leafKey, err := certs.Sign(leafTmpl, caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("fakellm: creating server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return nil, err
	}
	return &PKI{
		CACertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		CertPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func cleanNames(names []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}

// TLSConfig returns a server configuration offering h2 and http/1.1 via ALPN.
func (p *PKI) TLSConfig() (*tls.Config, error) {
	cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("fakellm: loading server key pair: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// LoadOrCreatePKI returns the PKI stored in dir (ca.pem, server.pem,
// server-key.pem), creating it when absent. Reusing it across runs means a
// CA already configured as trusted (by Envoy, SDKs, curl) stays valid.
//
// Several fake upstreams are often started at once with the same dir, so
// creation happens in a private sibling directory that is renamed into
// place: exactly one creator wins and the others load its files, never a mix
// of two CAs.
func LoadOrCreatePKI(dir string, names []string) (*PKI, error) {
	names = cleanNames(names)
	if p, err := loadPKI(dir, names); !errors.Is(err, fs.ErrNotExist) {
		return p, err
	}

	p, err := NewPKI(names)
	if err != nil {
		return nil, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("fakellm: creating %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("fakellm: creating PKI: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, err
	}
	if err := p.writeFiles(tmp); err != nil {
		return nil, err
	}
	// rename(2) replaces a missing or empty dir atomically and fails if the
	// target has entries.
	if err := os.Rename(tmp, dir); err == nil {
		return p, nil
	}
	// Either another process won the race (load its PKI) or dir holds
	// unrelated files, in which case ours are moved in one by one.
	if q, err := loadPKI(dir, names); !errors.Is(err, fs.ErrNotExist) {
		return q, err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("fakellm: %s is not a usable directory", dir)
	}
	// The key goes last so that, were this interrupted, the set is seen as
	// incomplete and regenerated rather than half-trusted.
	for _, f := range []string{caFile, certFile, keyFile} {
		if err := os.Rename(filepath.Join(tmp, f), filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("fakellm: installing %s: %w", f, err)
		}
	}
	return loadPKI(dir, names)
}

func (p *PKI) writeFiles(dir string) error {
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{caFile, p.CACertPEM, 0o644},
		{certFile, p.CertPEM, 0o644},
		{keyFile, p.KeyPEM, 0o600},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("fakellm: writing %s: %w", f.name, err)
		}
	}
	return nil
}

// loadPKI reads the stored PKI and checks it is coherent and covers names.
// It returns an error wrapping fs.ErrNotExist when any file is missing.
func loadPKI(dir string, names []string) (*PKI, error) {
	var p PKI
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{caFile, &p.CACertPEM}, {certFile, &p.CertPEM}, {keyFile, &p.KeyPEM}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return nil, fmt.Errorf("fakellm: reading PKI: %w", err)
		}
		*f.dst = b
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.CACertPEM) {
		return nil, fmt.Errorf("fakellm: %s holds no certificate", filepath.Join(dir, caFile))
	}
	pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("fakellm: %s and %s do not form a key pair: %w", certFile, keyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("fakellm: %s does not verify against %s (remove %s to regenerate): %w",
			certFile, caFile, dir, err)
	}
	for _, n := range names {
		if err := leaf.VerifyHostname(n); err != nil {
			return nil, fmt.Errorf("fakellm: existing certificate in %s does not cover %q (remove the directory to regenerate): %w",
				dir, n, err)
		}
	}
	return &p, nil
}
