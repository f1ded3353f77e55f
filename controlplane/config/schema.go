// Package config reads the routes YAML (one file or a directory of files) with viper, decodes
// it strictly, applies defaults and validates it whole, producing a model.Config. Every
// mistake is reported in one run with its field path, e.g.
// "upstreams.gemini.url: must be an absolute http(s) URL".
package config

import "time"

// SchemaVersion is the only routes YAML schema this build understands.
const SchemaVersion = 1

// File is the routes YAML as written by operators (schema v1). Field names are the YAML
// keys; see docs/CONFIG.md for the reference.
type File struct {
	Version   int                 `mapstructure:"version"`
	Regions   map[string]Region   `mapstructure:"regions"`
	Upstreams map[string]Upstream `mapstructure:"upstreams"`
	Routes    map[string]Route    `mapstructure:"routes"`
}

// Region is one regional edge.
type Region struct {
	Listen         string   `mapstructure:"listen"`
	EgressAddress  string   `mapstructure:"egress_address"`
	XFFTrustedHops int      `mapstructure:"xff_trusted_hops"`
	Upstreams      []string `mapstructure:"upstreams"`
}

// Upstream is one LLM provider endpoint.
type Upstream struct {
	URL               string        `mapstructure:"url"`
	Endpoint          string        `mapstructure:"endpoint"`
	TLS               TLS           `mapstructure:"tls"`
	Protocol          string        `mapstructure:"protocol"`
	ConnectTimeout    time.Duration `mapstructure:"connect_timeout"`
	ResponseTimeout   time.Duration `mapstructure:"response_timeout"`
	StreamIdleTimeout time.Duration `mapstructure:"stream_idle_timeout"`
	AllowedRegions    []string      `mapstructure:"allowed_regions"`
}

// TLS is the upstream TLS client setting.
type TLS struct {
	SNI    string `mapstructure:"sni"`
	CAFile string `mapstructure:"ca_file"`
	// Verify is a pointer so that an absent key means the default (on).
	Verify *bool `mapstructure:"verify"`
}

// Route sends matching requests to one upstream.
type Route struct {
	Match         Match  `mapstructure:"match"`
	Upstream      string `mapstructure:"upstream"`
	PrefixRewrite string `mapstructure:"prefix_rewrite"`
}

// Match selects requests.
type Match struct {
	Prefix  string        `mapstructure:"prefix"`
	Path    string        `mapstructure:"path"`
	Hosts   []string      `mapstructure:"hosts"`
	Headers []HeaderMatch `mapstructure:"headers"`
}

// HeaderMatch matches one request header.
type HeaderMatch struct {
	Name    string `mapstructure:"name"`
	Exact   string `mapstructure:"exact"`
	Prefix  string `mapstructure:"prefix"`
	Present bool   `mapstructure:"present"`
}

// Defaults applied where a field is absent.
const (
	DefaultConnectTimeout    = 10 * time.Second
	DefaultResponseTimeout   = 120 * time.Second
	DefaultStreamIdleTimeout = 60 * time.Second
	DefaultCAFile            = "/etc/ssl/certs/ca-certificates.crt"
)
