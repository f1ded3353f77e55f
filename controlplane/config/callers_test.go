package config_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

// TestDefaultKeyHeadersAreWireHeaders pins each API family's default key header to
// internal/wire's name for it. Envoy forwards only wire.CredentialHeaders to extauthz,
// which reads tokens from them and strips them: a default key header outside that list
// would carry a BYOK caller's provider key that extauthz never sees.
func TestDefaultKeyHeadersAreWireHeaders(t *testing.T) {
	want := map[string]string{
		"openai":    wire.HeaderAuthorization,
		"anthropic": wire.HeaderAPIKey,
		"gemini":    wire.HeaderGoogAPIKey,
	}
	for api, header := range want {
		t.Run(api, func(t *testing.T) {
			f := validFile()
			u := f.Upstreams["openai"]
			u.API = api
			f.Upstreams["openai"] = u
			cfg, err := config.Validate(f)
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.Upstreams[0].KeyHeader
			if got != header {
				t.Errorf("default key header for api %s = %q, want wire's %q", api, got, header)
			}
			if !slices.Contains(wire.CredentialHeaders, got) || got == wire.TokenHeader {
				t.Errorf("default key header %q is not a provider credential header Envoy forwards to extauthz (%v)", got, wire.CredentialHeaders)
			}
		})
	}
}

func TestKeyHeaderReserved(t *testing.T) {
	for _, h := range []string{wire.TokenHeader, "LLMedge-Token", wire.InternalHeaderPrefix + "key", "host", "x-envoy-foo"} {
		f := validFile()
		u := f.Upstreams["openai"]
		u.KeyHeader = h
		f.Upstreams["openai"] = u
		_, err := config.Validate(f)
		if err == nil || !strings.Contains(err.Error(), "upstreams.openai.key_header") {
			t.Errorf("key_header %q: want an error naming upstreams.openai.key_header, got %v", h, err)
		}
	}
}

func TestCallerTokenDigests(t *testing.T) {
	tok, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := token.New()
	if err != nil {
		t.Fatal(err)
	}
	f := validFile()
	f.Callers = map[string]config.Caller{"app": {
		Tokens:    []string{token.DigestRef(tok), "  " + strings.ToUpper(token.DigestRef(tok2)) + " "},
		Upstreams: []string{"openai"},
	}}
	cfg, err := config.Validate(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{token.Digest(tok), token.Digest(tok2)}
	slices.Sort(want)
	if got := cfg.Callers[0].TokenSHA256; !slices.Equal(got, want) {
		t.Errorf("TokenSHA256 = %v, want %v (token.Digest of each token, sorted)", got, want)
	}

	// A plain token, a bare digest and another caller's digest are refused; the error names
	// the field and never echoes what was pasted.
	f.Callers = map[string]config.Caller{
		"app":   {Tokens: []string{tok, token.Digest(tok2)}, Upstreams: []string{"openai"}},
		"other": {Tokens: []string{token.DigestRef(tok)}, Upstreams: []string{"openai"}},
		"third": {Tokens: []string{token.DigestRef(tok)}, Upstreams: []string{"openai"}},
	}
	_, err = config.Validate(f)
	if err == nil {
		t.Fatal("Validate accepted a plain token")
	}
	msg := err.Error()
	for _, path := range []string{"callers.app.tokens[0]", "callers.app.tokens[1]", "callers.third.tokens[0]"} {
		if !strings.Contains(msg, path) {
			t.Errorf("errors do not name %s:\n%s", path, msg)
		}
	}
	if !strings.Contains(msg, `"`+token.DigestPrefix+`" followed by 64 hex digits`) {
		t.Errorf("errors do not say what a digest looks like:\n%s", msg)
	}
	for _, secret := range []string{tok, token.Digest(tok2), token.Digest(tok)} {
		if strings.Contains(msg, secret) {
			t.Errorf("errors echo a token or digest:\n%s", msg)
		}
	}
}
