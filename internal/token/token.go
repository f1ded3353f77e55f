// Package token mints caller tokens and computes the digests the routes YAML stores. The
// plain token is shown once to the person who minted it and stored nowhere.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// Prefix marks llmedge tokens, so secret scanners and people can recognise a leaked one.
const Prefix = "llme_"

// New returns a fresh token: Prefix + 256 random bits, URL-safe base64.
func New() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// Digest is the lower-case hex SHA-256 of a token, as extauthz looks callers up.
func Digest(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}
