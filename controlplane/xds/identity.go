package xds

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llmedge/llmedge/internal/transport"
)

// Option tunes a Server.
type Option func(*Server)

// AllowCertificatesWithoutRegion admits mutual-TLS clients whose certificate carries no
// region identity, trusting the region their node claims, as before region identities
// existed. It is a rollout aid for fleets still holding such certificates: a certificate
// that does name a region is always held to it.
func AllowCertificatesWithoutRegion() Option {
	return func(s *Server) { s.allowUnnamed = true }
}

// Reasons a client is refused, as the refusal metric labels them.
const (
	refusedRegionMismatch = "region_mismatch"
	refusedNoIdentity     = "no_identity"
)

// refusal is why a peer may not read region's resources.
type refusal struct {
	reason string
	err    error // a gRPC PermissionDenied status
}

// admit decides whether peer may be served the resources of the region its node claims.
// The node's claim chooses the snapshot (see regionHash), so over the network the claim
// must match the region the CA certified; unix-socket and loopback clients are the host's
// own processes and are trusted as they are.
func (s *Server) admit(p transport.Peer, claimed string) *refusal {
	if p.Kind != transport.PeerTLS {
		return nil
	}
	if p.IdentityErr != nil {
		if s.allowUnnamed && errors.Is(p.IdentityErr, transport.ErrNoIdentity) {
			return nil
		}
		return &refusal{refusedNoIdentity, status.Error(codes.PermissionDenied,
			fmt.Sprintf("client certificate refused: %v", p.IdentityErr))}
	}
	if p.Identity.Region != claimed {
		return &refusal{refusedRegionMismatch, status.Error(codes.PermissionDenied,
			fmt.Sprintf("node claims region %q but its certificate (%s) is for region %q", claimed, p.Identity, p.Identity.Region))}
	}
	return nil
}
