package config_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

// TestInternalAddresses pins the syntax of regions.<r>.extauthz and .ratelimit: unix
// sockets or host:port, with internal_tls for TCP.
func TestInternalAddresses(t *testing.T) {
	mtls := &config.InternalTLS{CertFile: "/tls/envoy.pem", KeyFile: "/tls/envoy-key.pem", CAFile: "/tls/ca.pem"}
	tests := []struct {
		name     string
		region   config.Region
		want     model.Region // Name, Listen and Upstreams are filled in below
		warnings []string
	}{
		{
			name:   "unix sockets",
			region: config.Region{ExtAuthz: "unix:/run/llmedge/extauthz.sock", RateLimit: "unix:/run/llmedge/ratelimit.sock"},
			want:   model.Region{ExtAuthz: model.Address{Pipe: "/run/llmedge/extauthz.sock"}, RateLimit: model.Address{Pipe: "/run/llmedge/ratelimit.sock"}},
		},
		{
			name:   "URL form of a unix socket",
			region: config.Region{ExtAuthz: "unix:///run/llmedge/extauthz.sock"},
			want:   model.Region{ExtAuthz: model.Address{Pipe: "/run/llmedge/extauthz.sock"}},
		},
		{
			name:   "TCP with mutual TLS",
			region: config.Region{ExtAuthz: "extauthz.internal:10100", RateLimit: "10.0.0.7:8081", InternalTLS: mtls},
			want: model.Region{
				ExtAuthz: model.Address{Host: "extauthz.internal", Port: 10100}, RateLimit: model.Address{Host: "10.0.0.7", Port: 8081},
				InternalTLS: &model.InternalTLS{CertFile: "/tls/envoy.pem", KeyFile: "/tls/envoy-key.pem", CAFile: "/tls/ca.pem"},
			},
		},
		{
			name:   "plain TCP off loopback is warned about",
			region: config.Region{ExtAuthz: "extauthz:10100", RateLimit: "ratelimit:8081"},
			want:   model.Region{ExtAuthz: model.Address{Host: "extauthz", Port: 10100}, RateLimit: model.Address{Host: "ratelimit", Port: 8081}},
			warnings: []string{
				"regions.hk.extauthz: plain TCP to extauthz is unauthenticated; use unix:/path or set regions.hk.internal_tls",
				"regions.hk.ratelimit: plain TCP to ratelimit is unauthenticated; use unix:/path or set regions.hk.internal_tls",
			},
		},
		{
			name:     "internal_tls with sockets only is unused",
			region:   config.Region{ExtAuthz: "unix:/run/llmedge/extauthz.sock", InternalTLS: mtls},
			want:     model.Region{ExtAuthz: model.Address{Pipe: "/run/llmedge/extauthz.sock"}, InternalTLS: &model.InternalTLS{CertFile: "/tls/envoy.pem", KeyFile: "/tls/envoy-key.pem", CAFile: "/tls/ca.pem"}},
			warnings: []string{"regions.hk.internal_tls: unused; extauthz and ratelimit are reached over unix sockets"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFile()
			tt.region.Listen, tt.region.Upstreams = "0.0.0.0:10000", []string{"openai"}
			f.Regions["hk"] = tt.region
			cfg, err := config.Validate(f)
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Name, tt.want.ListenAddress, tt.want.ListenPort, tt.want.Upstreams = "hk", "0.0.0.0", 10000, []string{"openai"}
			if d := cmp.Diff(tt.want, cfg.Regions[0]); d != "" {
				t.Errorf("region (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.warnings, cfg.Warnings); d != "" {
				t.Errorf("warnings (-want +got):\n%s", d)
			}
		})
	}
}

func TestInternalAddressErrors(t *testing.T) {
	long := "unix:/" + strings.Repeat("s", 107)
	tests := []struct {
		name   string
		region config.Region
		want   string
	}{
		{
			name:   "relative socket path",
			region: config.Region{ExtAuthz: "unix:run/extauthz.sock"},
			want:   `regions.hk.extauthz: unix socket path "run/extauthz.sock" must be absolute`,
		},
		{
			name:   "socket path past sun_path",
			region: config.Region{ExtAuthz: "unix:/run/extauthz.sock", RateLimit: long},
			want:   "regions.hk.ratelimit: unix socket path is 108 bytes; the kernel allows at most 107",
		},
		{
			name:   "empty socket path",
			region: config.Region{ExtAuthz: "unix:"},
			want:   "regions.hk.extauthz: unix: needs an absolute socket path, as unix:/run/llmedge/extauthz.sock",
		},
		{
			name:   "unclean socket path",
			region: config.Region{ExtAuthz: "unix:/run/llmedge/extauthz.sock", RateLimit: "unix:/run/../rl.sock"},
			want:   `regions.hk.ratelimit: unix socket path "/run/../rl.sock" must be clean (no trailing slash, . or ..)`,
		},
		{
			name:   "not an address",
			region: config.Region{ExtAuthz: "extauthz"},
			want:   "regions.hk.extauthz: want host:port, with an IPv6 address in brackets ([::1]:18000), or unix:/absolute/path.sock",
		},
		{
			name: "internal_tls incomplete and relative",
			region: config.Region{ExtAuthz: "10.0.0.5:10100", InternalTLS: &config.InternalTLS{
				CertFile: "envoy.pem", CAFile: "/tls/ca.pem",
			}},
			want: `regions.hk.internal_tls.cert_file: must be an absolute path on the Envoy host, not "envoy.pem"` + "\n" +
				"regions.hk.internal_tls.key_file: required: mutual TLS needs Envoy's client certificate, its key and the CA of the services' certificates",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFile()
			tt.region.Listen, tt.region.Upstreams = "0.0.0.0:10000", []string{"openai"}
			f.Regions["hk"] = tt.region
			_, err := config.Validate(f)
			if err == nil {
				t.Fatal("Validate succeeded; want errors")
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("errors:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestInternalTLSFromYAML checks the YAML keys decode (strict decoding rejects unknown ones).
func TestInternalTLSFromYAML(t *testing.T) {
	dir := t.TempDir()
	doc := `version: 1
regions:
  hk:
    listen: 0.0.0.0:10000
    extauthz: 10.0.0.5:10100
    internal_tls: {cert_file: /tls/envoy.pem, key_file: /tls/envoy-key.pem, ca_file: /tls/ca.pem}
    upstreams: [openai]
upstreams:
  openai: {url: https://api.openai.com, allowed_regions: [hk]}
routes:
  openai: {match: {prefix: /openai/}, upstream: openai}
`
	writeFiles(t, dir, map[string]string{"routes.yaml": doc})
	_, cfg, err := config.LoadConfig(dir + "/routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &model.InternalTLS{CertFile: "/tls/envoy.pem", KeyFile: "/tls/envoy-key.pem", CAFile: "/tls/ca.pem"}
	if d := cmp.Diff(want, cfg.Regions[0].InternalTLS); d != "" {
		t.Errorf("internal_tls (-want +got):\n%s", d)
	}
}
