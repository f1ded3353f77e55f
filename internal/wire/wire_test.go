package wire

import (
	"slices"
	"strings"
	"testing"
)

// Envoy matches the forwarded header names exactly and hands them over in lower case: a
// name here that is not lower case, or a provider header missing from the list, would
// silently never reach extauthz.
func TestCredentialHeaders(t *testing.T) {
	for _, h := range []string{HeaderAuthorization, HeaderAPIKey, HeaderGoogAPIKey, TokenHeader} {
		if !slices.Contains(CredentialHeaders, h) {
			t.Errorf("%s is not in CredentialHeaders", h)
		}
	}
	seen := map[string]bool{}
	for _, h := range CredentialHeaders {
		if h != strings.ToLower(h) || h == "" {
			t.Errorf("credential header %q is not lower case", h)
		}
		if seen[h] {
			t.Errorf("credential header %q listed twice", h)
		}
		seen[h] = true
		if strings.HasPrefix(h, InternalHeaderPrefix) {
			t.Errorf("credential header %q is an internal header", h)
		}
	}
}

// The module stands in for ext_authz: the access log, the rate-limit descriptors and the
// local reply mappers read ext_authz's namespace, which Envoy names after the filter.
func TestAuthzMetadataNamespaceIsExtAuthz(t *testing.T) {
	if AuthzMetadataNamespace != "envoy.filters.http.ext_authz" {
		t.Errorf("AuthzMetadataNamespace = %q, want ext_authz's namespace", AuthzMetadataNamespace)
	}
}
