package token

import (
	"strings"
	"testing"
)

func TestNewIsRandomAndPrefixed(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		tok, err := New()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(tok, Prefix) || len(tok) != len(Prefix)+43 {
			t.Fatalf("token %q: want %s + 43 characters", tok, Prefix)
		}
		if seen[tok] {
			t.Fatalf("token repeated after %d draws", i)
		}
		seen[tok] = true
	}
}

func TestDigest(t *testing.T) {
	// sha256("abc"), the FIPS 180-2 test vector.
	if got := Digest("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("Digest(abc) = %s", got)
	}
}
