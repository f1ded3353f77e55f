package translate

import (
	"path"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Certificates and CA bundles reach Envoy as SDS secrets over the ADS stream, each naming
// its files on the Envoy host rather than carrying their contents. A secret delivered by
// SDS with file references is watched by Envoy: when a file is replaced in its directory
// (written elsewhere, then renamed over the old one, as cert-manager, Kubernetes secret
// volumes and `mv` do), the next handshake uses the new contents. A cluster's inline
// trusted_ca, by contrast, is read once, and a rotated CA stayed unknown to Envoy until an
// unrelated cluster change was pushed.

// Secret name prefixes; the rest of the name is the file's path, so two clusters trusting
// the same bundle share one secret and the name says which file it is.
const (
	caSecretPrefix   = "ca:"
	certSecretPrefix = "cert:"
)

// secretSet collects the secrets one region's clusters reference.
type secretSet map[string]*tlsv3.Secret

func (s secretSet) sorted() []*tlsv3.Secret {
	out := make([]*tlsv3.Secret, 0, len(s))
	for _, sec := range s {
		out = append(out, sec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// ca adds a CA bundle secret and returns its SDS reference.
func (s secretSet) ca(file string) *tlsv3.SdsSecretConfig {
	name := caSecretPrefix + file
	s[name] = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa:        fileSource(file),
		WatchedDirectory: watched(file),
	}}}
	return sdsRef(name)
}

// cert adds a certificate-and-key secret and returns its SDS reference.
func (s secretSet) cert(certFile, keyFile string) *tlsv3.SdsSecretConfig {
	name := certSecretPrefix + certFile
	s[name] = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: fileSource(certFile),
		PrivateKey:       fileSource(keyFile),
		WatchedDirectory: watched(certFile),
	}}}
	return sdsRef(name)
}

// watched names the directory Envoy watches for the file being moved into place (its
// default too; explicit so the config dump shows what is watched).
func watched(file string) *corev3.WatchedDirectory {
	return &corev3.WatchedDirectory{Path: path.Dir(file)}
}

func fileSource(file string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: file}}
}

func sdsRef(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}}
}

// sanMatcher accepts a peer certificate for host: an IP SAN for an IP literal, a DNS SAN
// otherwise.
func sanMatcher(host string) *tlsv3.SubjectAltNameMatcher {
	typ := tlsv3.SubjectAltNameMatcher_DNS
	if isIP(host) {
		typ = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
	}
	return &tlsv3.SubjectAltNameMatcher{
		SanType: typ,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}},
	}
}

// internalTLS is mutual TLS from Envoy to one of the region's own gRPC services: Envoy
// presents the region's client certificate and accepts only a server certificate for host
// from the operator's CA.
func internalTLS(host string, t *model.InternalTLS, secrets secretSet) (*corev3.TransportSocket, error) {
	sni := host
	if isIP(host) {
		sni = ""
	}
	ctx, err := toAny(&tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			// gRPC servers insist on ALPN h2.
			AlpnProtocols:                  []string{"h2"},
			TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{secrets.cert(t.CertFile, t.KeyFile)},
			ValidationContextType:          validation(secrets.ca(t.CAFile), host),
		},
	})
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx},
	}, nil
}

// validation combines a CA bundle shared over SDS with the cluster's own name check: a
// trusted CA alone checks the chain, not the name, and any certificate it issued would be
// accepted for any host.
func validation(ca *tlsv3.SdsSecretConfig, host string) *tlsv3.CommonTlsContext_CombinedValidationContext {
	return &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
		DefaultValidationContext: &tlsv3.CertificateValidationContext{
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{sanMatcher(host)},
		},
		ValidationContextSdsSecretConfig: ca,
	}}
}

func serviceAddress(a model.Address) *corev3.Address {
	if a.Pipe != "" {
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: a.Pipe}}}
	}
	return socketAddress(a.Host, a.Port)
}
