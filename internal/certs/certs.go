// Package certs issues the certificates of llmedge's mutual-TLS hops from a small file-based
// CA: `llmedge certs init` makes the CA, `llmedge certs issue` a component's certificate
// carrying its region identity (transport.Identity, the one owner of that encoding). It is
// the simplest way to run the control plane across the internet; any CA that can put a URI
// SAN in a certificate (step, cfssl, cert-manager) does the same job.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/transport"
)

// File names inside the CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// Defaults: a CA that outlives many rotations, and short-lived leaves renewed by a timer.
const (
	DefaultCAValidity  = 10 * 365 * 24 * time.Hour
	DefaultValidity    = 90 * 24 * time.Hour
	DefaultRenewBefore = 30 * 24 * time.Hour
	backdate           = 5 * time.Minute // tolerate clocks a little behind the CA's
)

// InitResult says what Init did.
type InitResult struct {
	Cert, Key string
	Created   bool // false: a CA was already there and was left alone
	NotAfter  time.Time
}

// Init creates a CA in dir (made 0700 if missing): ca.pem, and ca-key.pem (0600). An
// existing CA is kept, so running it twice is harmless.
func Init(dir string, validity time.Duration, now time.Time) (InitResult, error) {
	res := InitResult{Cert: filepath.Join(dir, CACertFile), Key: filepath.Join(dir, CAKeyFile)}
	if validity <= 0 {
		return res, errors.New("CA validity must be positive")
	}
	certOK, keyOK := exists(res.Cert), exists(res.Key)
	if certOK && keyOK {
		ca, _, err := loadCA(dir)
		if err != nil {
			return res, err
		}
		res.NotAfter = ca.NotAfter
		return res, nil
	}
	if certOK != keyOK {
		return res, fmt.Errorf("%s holds only one of %s and %s; restore the other or remove both", dir, CACertFile, CAKeyFile)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "llmedge internal CA", Organization: []string{"llmedge"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // it signs leaves only
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, key, err := Sign(tmpl, nil, nil)
	if err != nil {
		return res, err
	}
	if err := writeKey(res.Key, key); err != nil {
		return res, err
	}
	if err := writeFile(res.Cert, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return res, err
	}
	res.Created, res.NotAfter = true, tmpl.NotAfter
	return res, nil
}

// Request is one certificate to issue.
type Request struct {
	Identity transport.Identity
	DNS      []string
	IPs      []net.IP
	Validity time.Duration // default DefaultValidity
	// Renew replaces an existing certificate, but only when it is due: it expires within
	// RenewBefore (default DefaultRenewBefore), was signed by another CA, or names other
	// SANs. Without Renew an existing certificate is an error.
	Renew       bool
	RenewBefore time.Duration
}

// Result says what Issue did.
type Result struct {
	Cert, Key string
	Issued    bool   // false: the existing certificate is still good (Renew)
	Why       string // why it was (re)issued or kept
	NotAfter  time.Time
}

// Files are where Issue writes id's certificate and key in dir.
func Files(dir string, id transport.Identity) (cert, key string) {
	base := id.Component
	if id.Region != "" {
		base = id.Region + "-" + id.Component
	}
	return filepath.Join(dir, base+".pem"), filepath.Join(dir, base+"-key.pem")
}

// Issue signs a certificate for r with the CA in dir and writes it with a new key (0600).
// Extended key usages: every component authenticates as a client (xDS, and Envoy towards
// extauthz/ratelimit); a certificate with DNS or IP names also serves; the control plane's
// only serves and needs a name.
func Issue(dir string, r Request, now time.Time) (Result, error) {
	var res Result
	if err := r.Identity.Check(); err != nil {
		return res, err
	}
	if r.Validity == 0 {
		r.Validity = DefaultValidity
	}
	if r.RenewBefore == 0 {
		r.RenewBefore = DefaultRenewBefore
	}
	if r.Validity < 0 || r.RenewBefore < 0 {
		return res, errors.New("validity and renew-before must be positive")
	}
	for _, d := range r.DNS {
		if d == "" || strings.ContainsAny(d, " /:") {
			return res, fmt.Errorf("DNS name %q is not a host name", d)
		}
	}
	server := len(r.DNS)+len(r.IPs) > 0
	if r.Identity.Component == transport.ComponentControlPlane && !server {
		return res, errors.New("the control plane's certificate needs the names its clients dial: give --dns and/or --ip")
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return res, err
	}
	res.Cert, res.Key = Files(dir, r.Identity)
	if exists(res.Cert) || exists(res.Key) {
		if !r.Renew {
			return res, fmt.Errorf("%s already exists; use --renew to replace it when it is due", res.Cert)
		}
		why, keep := keepExisting(res.Cert, res.Key, ca, r, now)
		res.Why = why
		if keep {
			c, _ := readCert(res.Cert)
			res.NotAfter = c.NotAfter
			return res, nil
		}
	} else {
		res.Why = "new"
	}
	notAfter := now.Add(r.Validity)
	if notAfter.After(ca.NotAfter) {
		return res, fmt.Errorf("the certificate would outlive its CA (CA expires %s); renew the CA first or shorten the validity", ca.NotAfter.Format(time.RFC3339))
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if r.Identity.Component == transport.ComponentControlPlane {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else if server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	cn := "llmedge " + r.Identity.Component
	if r.Identity.Region != "" {
		cn += " " + r.Identity.Region
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"llmedge"}},
		NotBefore:   now.Add(-backdate),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usage,
		URIs:        []*url.URL{r.Identity.URI()},
		DNSNames:    r.DNS,
		IPAddresses: r.IPs,
	}
	der, key, err := Sign(tmpl, ca, caKey)
	if err != nil {
		return res, err
	}
	// Key first: a reader that sees the new certificate must find its key already there.
	// (transport's reloader keeps the old pair until both match.)
	if err := writeKey(res.Key, key); err != nil {
		return res, err
	}
	if err := writeFile(res.Cert, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return res, err
	}
	res.Issued, res.NotAfter = true, notAfter
	return res, nil
}

// keepExisting reports whether the certificate on disk already satisfies r, and why not.
func keepExisting(certFile, keyFile string, ca *x509.Certificate, r Request, now time.Time) (string, bool) {
	c, err := readCert(certFile)
	if err != nil {
		return "the existing certificate is unreadable", false
	}
	if _, err := tlsPair(certFile, keyFile); err != nil {
		return "the existing key does not match its certificate", false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "the existing certificate is not valid under this CA now", false
	}
	if id, err := transport.IdentityOf(c); err != nil || id != r.Identity {
		return "the existing certificate carries another identity", false
	}
	if !sameNames(c.DNSNames, r.DNS) || !sameIPs(c.IPAddresses, r.IPs) {
		return "the names asked for differ from the existing certificate's", false
	}
	if c.NotAfter.Sub(now) <= r.RenewBefore {
		return fmt.Sprintf("the existing certificate expires %s, within the renewal window", c.NotAfter.Format(time.RFC3339)), false
	}
	return fmt.Sprintf("still valid until %s; nothing to do", c.NotAfter.Format(time.RFC3339)), true
}

func sameNames(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func sameIPs(a, b []net.IP) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.ContainsFunc(b, x.Equal) {
			return false
		}
	}
	return true
}

func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	c, err := readCert(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w (run llmedge certs init --dir %s first)", err, dir)
	}
	pair, err := tlsPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key %s: %w", keyFile, err)
	}
	signer, ok := pair.(crypto.Signer)
	if !ok || !c.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA", certFile)
	}
	return c, signer, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// tlsPair reads a private key and checks it belongs to the certificate.
func tlsPair(certFile, keyFile string) (crypto.PrivateKey, error) {
	c, err := readCert(certFile)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM key")
	}
	var key crypto.PrivateKey
	switch blk.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, err
	}
	pub, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("unsupported key type")
	}
	want, err := x509.MarshalPKIXPublicKey(c.PublicKey)
	if err != nil {
		return nil, err
	}
	got, err := x509.MarshalPKIXPublicKey(pub.Public())
	if err != nil || !bytes.Equal(got, want) {
		return nil, errors.New("the key does not match the certificate")
	}
	return key, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pemBlock("PRIVATE KEY", der), 0o600)
}

// writeFile replaces path by a rename, so a reader (Envoy's watched directory, transport's
// reloader) never sees half a file; the temporary file has its final mode from the start.
func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// Sign issues the certificate tmpl describes for a new ECDSA P-256 key, with a random
// serial number, signed by parent's key; a nil parent makes it self-signed (a CA). It
// returns the certificate's DER and its key.
func Sign(tmpl, parent *x509.Certificate, parentKey crypto.Signer) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = sn
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}
