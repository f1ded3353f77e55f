package transport_test

import (
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/internal/transport"
)

func uris(t *testing.T, ss ...string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func TestIdentityOf(t *testing.T) {
	tests := []struct {
		name    string
		uris    []string
		want    transport.Identity
		wantErr string
	}{
		{name: "envoy", uris: []string{"spiffe://llmedge/region/hk/envoy"}, want: transport.Identity{Region: "hk", Component: "envoy"}},
		{name: "ratelimit", uris: []string{"spiffe://llmedge/region/eu-west_1/ratelimit"}, want: transport.Identity{Region: "eu-west_1", Component: "ratelimit"}},
		{name: "control plane", uris: []string{"spiffe://llmedge/controlplane"}, want: transport.Identity{Component: "controlplane"}},
		{name: "other trust domains are ignored", uris: []string{"spiffe://example.org/ns/x", "spiffe://llmedge/region/sg/extauthz"}, want: transport.Identity{Region: "sg", Component: "extauthz"}},
		{name: "none", uris: nil, wantErr: "no llmedge identity"},
		{name: "only another trust domain", uris: []string{"spiffe://example.org/region/hk/envoy"}, wantErr: "no llmedge identity"},
		{name: "two regions belong to neither", uris: []string{"spiffe://llmedge/region/hk/envoy", "spiffe://llmedge/region/sg/envoy"}, wantErr: "exactly one"},
		{name: "unknown component", uris: []string{"spiffe://llmedge/region/hk/admin"}, wantErr: `component "admin"`},
		{name: "empty region", uris: []string{"spiffe://llmedge/region//envoy"}, wantErr: `region ""`},
		{name: "extra segment", uris: []string{"spiffe://llmedge/region/hk/envoy/x"}, wantErr: "want spiffe://llmedge/region/"},
		{name: "control plane in a region", uris: []string{"spiffe://llmedge/region/hk/controlplane"}, wantErr: "no region"},
		{name: "upper case", uris: []string{"spiffe://llmedge/region/HK/envoy"}, wantErr: `region "HK"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := transport.IdentityOf(&x509.Certificate{URIs: uris(t, tt.uris...)})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("IdentityOf = %+v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("IdentityOf = %+v, %v; want %+v", got, err, tt.want)
			}
			if back, err := transport.IdentityOf(&x509.Certificate{URIs: []*url.URL{got.URI()}}); err != nil || back != got {
				t.Errorf("%v does not survive URI/IdentityOf: %+v, %v", got, back, err)
			}
		})
	}
	if _, err := transport.IdentityOf(&x509.Certificate{}); !errors.Is(err, transport.ErrNoIdentity) {
		t.Errorf("no URI: err = %v, want ErrNoIdentity", err)
	}
	if got := (transport.Identity{Region: "hk", Component: "envoy"}).String(); got != "spiffe://llmedge/region/hk/envoy" {
		t.Errorf("String = %q", got)
	}
}
