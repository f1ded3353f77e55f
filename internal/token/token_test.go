package token

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
		if !LooksLike(tok) {
			t.Fatalf("LooksLike(%q) = false for a minted token", tok)
		}
		if seen[tok] {
			t.Fatalf("token repeated after %d draws", i)
		}
		seen[tok] = true
	}
}

func TestDigest(t *testing.T) {
	// sha256("abc"), the FIPS 180-2 test vector.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := Digest("abc"); got != want {
		t.Errorf("Digest(abc) = %s", got)
	}
	if got := DigestRef("abc"); got != "sha256:"+want {
		t.Errorf("DigestRef(abc) = %s", got)
	}
	if s := Sum("abc"); hex.EncodeToString(s[:]) != want {
		t.Errorf("Sum(abc) = %x", s)
	}
	// Past the stack buffer the digest is still the plain SHA-256.
	long := strings.Repeat("x", 300)
	if s, w := Sum(long), sha256.Sum256([]byte(long)); s != w {
		t.Errorf("Sum of a 300-byte token = %x, want %x", s, w)
	}
}

func TestDigestRefRoundTrip(t *testing.T) {
	tok, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ref := DigestRef(tok)
	for _, in := range []string{ref, "  " + strings.ToUpper(ref) + "\n"} {
		d, err := ParseDigestRef(in)
		if err != nil || d != Digest(tok) {
			t.Errorf("ParseDigestRef(%q) = %q, %v; want %q", in, d, err, Digest(tok))
		}
		sum, err := ParseDigest(d)
		if err != nil || sum != Sum(tok) {
			t.Errorf("ParseDigest(%q) = %x, %v", d, sum, err)
		}
	}
}

func TestParseDigestRefRejects(t *testing.T) {
	tok, err := New()
	if err != nil {
		t.Fatal(err)
	}
	d := Digest(tok)
	for name, in := range map[string]string{
		"plain token":     tok,
		"no prefix":       d,
		"other algorithm": "sha512:" + d,
		"short":           DigestPrefix + d[:62],
		"long":            DigestPrefix + d + "00",
		"not hex":         DigestPrefix + "zz" + d[2:],
		"empty":           "",
		"prefix only":     DigestPrefix,
	} {
		got, err := ParseDigestRef(in)
		if !errors.Is(err, ErrDigestRef) || got != "" {
			t.Errorf("%s: ParseDigestRef = %q, %v; want ErrDigestRef", name, got, err)
		}
		if err != nil && strings.Contains(err.Error(), tok) {
			t.Errorf("%s: the error quotes the token", name)
		}
	}
	for _, in := range []string{"", d[:63], d + "0", "zz" + d[2:], tok} {
		if _, err := ParseDigest(in); !errors.Is(err, ErrDigest) {
			t.Errorf("ParseDigest(%q): want ErrDigest, got %v", in, err)
		}
	}
}

func TestLooksLike(t *testing.T) {
	for v, want := range map[string]bool{
		"llme_abc":          true,
		"  llme_abc\t":      true,
		"llme_":             true,
		"sk-proj-abc":       false,
		"Bearer llme_abc":   false, // callers strip the scheme first
		"LLME_abc":          false, // tokens are case-sensitive
		"":                  false,
		"sk-llme_inside":    false,
		"AIzaSyllme_inside": false,
	} {
		if got := LooksLike(v); got != want {
			t.Errorf("LooksLike(%q) = %v, want %v", v, got, want)
		}
	}
}

func BenchmarkSum(b *testing.B) {
	tok, _ := New()
	b.ReportAllocs()
	for b.Loop() {
		_ = Sum(tok)
	}
}
