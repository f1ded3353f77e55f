package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// A component's region identity travels in its certificate as one URI SAN,
//
//	spiffe://llmedge/region/<region>/<component>
//
// chosen over the common name or an organisational unit because a URI SAN is typed and
// unambiguous (one name, one meaning), is what SPIFFE, Envoy (match_typed_subject_alt_names
// with SAN type URI), step-ca and cfssl all issue and check without custom extensions, and
// does not collide with the DNS or IP SANs a server certificate already carries. The
// control plane's own certificate carries spiffe://llmedge/controlplane.
const (
	identityScheme      = "spiffe"
	identityTrustDomain = "llmedge"
)

// Components that hold region identities.
const (
	ComponentEnvoy        = "envoy"
	ComponentExtAuthz     = "extauthz"
	ComponentRatelimit    = "ratelimit"
	ComponentControlPlane = "controlplane"
)

// components lists every component name an identity may carry.
var components = [...]string{ComponentEnvoy, ComponentExtAuthz, ComponentRatelimit, ComponentControlPlane}

// namePattern is what a region may look like inside the URI: one path segment, nothing to
// escape. It admits every name the routes YAML accepts for a region.
var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,62})$`)

// Identity is who a certificate says its holder is. Region is empty for the control plane.
type Identity struct {
	Region    string
	Component string
}

// ErrNoIdentity is a certificate with no llmedge identity URI.
var ErrNoIdentity = errors.New("the certificate carries no llmedge identity (URI SAN spiffe://llmedge/region/<region>/<component>)")

// Check reports a malformed identity.
func (id Identity) Check() error {
	if !isComponent(id.Component) {
		return fmt.Errorf("component %q: want one of %s", id.Component, strings.Join(components[:], ", "))
	}
	if id.Component == ComponentControlPlane {
		if id.Region != "" {
			return errors.New("the control plane belongs to no region")
		}
		return nil
	}
	if !namePattern.MatchString(id.Region) {
		return fmt.Errorf("region %q: want lower-case letters, digits, '-' or '_' (at most 63)", id.Region)
	}
	return nil
}

func isComponent(c string) bool {
	for _, k := range components {
		if c == k {
			return true
		}
	}
	return false
}

// URI is the SAN that carries id.
func (id Identity) URI() *url.URL {
	p := "/region/" + id.Region + "/" + id.Component
	if id.Component == ComponentControlPlane {
		p = "/" + ComponentControlPlane
	}
	return &url.URL{Scheme: identityScheme, Host: identityTrustDomain, Path: p}
}

// String is the URI form, as logs and /status show it.
func (id Identity) String() string { return id.URI().String() }

// IdentityOf reads the llmedge identity of a certificate: ErrNoIdentity when it has none,
// an error when it has more than one (a certificate that names two regions belongs to
// neither) or a malformed one. URI SANs of other trust domains are ignored.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range c.URIs {
		if u.Scheme != identityScheme || u.Host != identityTrustDomain {
			continue
		}
		id, err := parseIdentityPath(u.Path)
		if err != nil {
			return Identity{}, fmt.Errorf("identity %q: %w", u.String(), err)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, ErrNoIdentity
	case 1:
		return found[0], nil
	}
	return Identity{}, fmt.Errorf("the certificate carries %d llmedge identities; it must carry exactly one", len(found))
}

func parseIdentityPath(p string) (Identity, error) {
	if p == "/"+ComponentControlPlane {
		return Identity{Component: ComponentControlPlane}, nil
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(parts) != 3 || parts[0] != "region" {
		return Identity{}, errors.New("want spiffe://llmedge/region/<region>/<component>")
	}
	id := Identity{Region: parts[1], Component: parts[2]}
	if id.Component == ComponentControlPlane {
		return Identity{}, errors.New("the control plane belongs to no region")
	}
	return id, id.Check()
}

// PeerKind says how a gRPC peer reached a server whose listener came from Listen.
type PeerKind int

const (
	// PeerLocal came over a unix socket, guarded by its directory, or over plain
	// loopback TCP (development only): trusted as the host's own processes.
	PeerLocal PeerKind = iota
	// PeerTLS came over mutual TLS with a client certificate the CA verified.
	PeerTLS
)

// Peer is what a server knows of the client on a connection.
type Peer struct {
	Kind PeerKind
	// Identity and IdentityErr are set for PeerTLS: the identity in the verified client
	// certificate, or why it has none usable.
	Identity    Identity
	IdentityErr error
}

// PeerOf tells who is on the other end of a gRPC call or stream served by a grpc.Server
// built with ServerCredentials. A connection that made no TLS handshake is local.
func PeerOf(ctx context.Context) Peer {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{Kind: PeerLocal}
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Peer{Kind: PeerLocal}
	}
	out := Peer{Kind: PeerTLS}
	// Only a certificate the handshake verified counts (VerifiedChains is empty otherwise).
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		out.IdentityErr = errors.New("no verified client certificate")
		return out
	}
	out.Identity, out.IdentityErr = IdentityOf(info.State.VerifiedChains[0][0])
	return out
}

// ServerCredentials are gRPC server credentials for listeners returned by Listen: the
// listener does the TLS (so one grpc.Server serves unix sockets and mutual-TLS ports at
// once); these only finish the handshake and hand its state to gRPC, so PeerOf can read the
// client's certificate.
func ServerCredentials() credentials.TransportCredentials { return listenerCreds{} }

type listenerCreds struct{}

// handshakeTimeout bounds a TLS handshake a client never completes.
const handshakeTimeout = 10 * time.Second

func (listenerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return c, localInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, nil, err
	}
	return c, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (listenerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("transport: ServerCredentials are for servers only")
}

func (listenerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "listener"}
}

func (c listenerCreds) Clone() credentials.TransportCredentials { return c }

func (listenerCreds) OverrideServerName(string) error { return nil }

// localInfo marks a connection without TLS (unix socket or loopback).
type localInfo struct{ credentials.CommonAuthInfo }

func (localInfo) AuthType() string { return "local" }
