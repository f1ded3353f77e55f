// Package token owns the caller token format: it mints tokens, recognises values shaped
// like one, and computes and parses the digests the routes YAML and the caller policy
// store. The plain token is shown once to the person who minted it and stored nowhere.
//
// Every other package calls these functions instead of assembling "sha256:" + hex by hand,
// so the format has one owner.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
)

// Prefix marks llmedge tokens, so secret scanners and people can recognise a leaked one.
const Prefix = "llme_"

// DigestPrefix starts a digest reference as the routes YAML stores it:
// "sha256:" followed by the 64 lower-case hex digits of Digest.
const DigestPrefix = "sha256:"

// Size is the length of a token digest in bytes.
const Size = sha256.Size

// New returns a fresh token: Prefix + 256 random bits, URL-safe base64.
func New() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// LooksLike reports whether v is shaped like an llmedge token (it starts with Prefix once
// surrounding white space is trimmed), whether or not any caller holds it.
func LooksLike(v string) bool {
	return strings.HasPrefix(strings.TrimSpace(v), Prefix)
}

// Sum is the SHA-256 of a token, as extauthz looks callers up. The stack buffer keeps the
// common case (tokens up to 128 bytes) free of heap allocations on the request path.
func Sum(tok string) [Size]byte {
	var buf [128]byte
	return sha256.Sum256(append(buf[:0], tok...))
}

// Digest is the lower-case hex SHA-256 of a token, as the caller policy carries it.
func Digest(tok string) string {
	s := Sum(tok)
	return hex.EncodeToString(s[:])
}

// DigestRef is the digest reference of a token for the routes YAML: DigestPrefix + Digest.
func DigestRef(tok string) string { return DigestPrefix + Digest(tok) }

// ErrDigestRef says a value is not a digest reference. It never quotes the value: someone
// may have pasted a plain token where the digest belongs.
var ErrDigestRef = errors.New("must be " + `"` + DigestPrefix + `"` + " followed by 64 hex digits")

// ParseDigestRef checks a digest reference ("sha256:<64 hex>", case and surrounding white
// space ignored) and returns its digest as lower-case hex, the form Digest returns.
func ParseDigestRef(ref string) (string, error) {
	d, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(ref)), DigestPrefix)
	if !ok {
		return "", ErrDigestRef
	}
	if _, err := ParseDigest(d); err != nil {
		return "", ErrDigestRef
	}
	return d, nil
}

// ErrDigest says a value is not a hex SHA-256 digest; it never quotes the value.
var ErrDigest = errors.New("not a hex SHA-256 digest (64 hex digits)")

// ParseDigest decodes a hex digest (either case), as Digest writes it, to the form Sum
// returns.
func ParseDigest(h string) ([Size]byte, error) {
	var out [Size]byte
	if len(h) != 2*Size {
		return out, ErrDigest
	}
	if _, err := hex.Decode(out[:], []byte(h)); err != nil {
		return [Size]byte{}, ErrDigest
	}
	return out, nil
}
