package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

// wantValid is the model testdata/valid.yaml (and testdata/split/) must produce.
var wantValid = &model.Config{
	Regions: []model.Region{
		{Name: "hk", ListenAddress: "0.0.0.0", ListenPort: 10000, XFFTrustedHops: 1, Upstreams: []string{"groq", "openai"}, ExtAuthz: model.Address{Host: "127.0.0.1", Port: 10100}, ExtAuthzInEnvoy: true},
		{Name: "idle", ListenAddress: "127.0.0.1", ListenPort: 10002, ExtAuthz: model.Address{Host: "127.0.0.1", Port: 10100}},
		{Name: "sg", ListenAddress: "::", ListenPort: 10001, EgressAddress: "198.51.100.7", Upstreams: []string{"gemini", "groq", "local", "openai", "private"}, ExtAuthz: model.Address{Host: "127.0.0.1", Port: 10100}},
	},
	Upstreams: []model.Upstream{
		{
			Name: "gemini", Scheme: "http", Host: "gemini.internal", Port: 80, Authority: "gemini.internal",
			ConnectHost: "gemini.internal", ConnectPort: 80, Protocol: model.ProtocolAuto,
			ConnectTimeout: 10 * time.Second, ResponseTimeout: 15 * time.Minute, StreamIdleTimeout: 15 * time.Minute,
			AllowedRegions: []string{"sg"},
			API:            model.APIOpenAI, KeyHeader: "authorization", KeyFormat: "Bearer {key}",
		},
		{
			Name: "groq", Scheme: "https", Host: "api.groq.com", Port: 443, BasePath: "/openai", Authority: "api.groq.com",
			ConnectHost: "api.groq.com", ConnectPort: 443,
			TLS:      &model.TLS{SNI: "api.groq.com", CAFile: "/etc/ssl/certs/ca-certificates.crt", Verify: true},
			Protocol: model.ProtocolAuto, ConnectTimeout: 10 * time.Second, ResponseTimeout: 15 * time.Minute, StreamIdleTimeout: 15 * time.Minute,
			AllowedRegions: []string{"hk", "sg"},
			API:            model.APIOpenAI, KeyHeader: "authorization", KeyFormat: "Bearer {key}",
		},
		{
			Name: "insecure", Scheme: "https", Host: "2001:db8::1", Port: 8443, Authority: "[2001:db8::1]:8443",
			ConnectHost: "2001:db8::1", ConnectPort: 8443,
			TLS:      &model.TLS{SNI: "", CAFile: "/etc/ssl/certs/ca-certificates.crt", Verify: false},
			Protocol: model.ProtocolAuto, ConnectTimeout: 10 * time.Second, ResponseTimeout: 15 * time.Minute, StreamIdleTimeout: 15 * time.Minute,
			AllowedRegions: []string{"sg"},
			API:            model.APIOpenAI, KeyHeader: "authorization", KeyFormat: "Bearer {key}",
		},
		{
			Name: "local", Scheme: "http", Host: "127.0.0.1", Port: 8090, Authority: "127.0.0.1:8090",
			ConnectHost: "127.0.0.1", ConnectPort: 8090, Protocol: model.ProtocolHTTP1,
			ConnectTimeout: 10 * time.Second, ResponseTimeout: 15 * time.Minute, StreamIdleTimeout: 15 * time.Minute,
			AllowedRegions: []string{"sg"},
			API:            model.APIOpenAI, KeyHeader: "authorization", KeyFormat: "Bearer {key}",
		},
		{
			Name: "openai", Scheme: "https", Host: "api.openai.com", Port: 443, Authority: "api.openai.com",
			ConnectHost: "api.openai.com", ConnectPort: 443,
			TLS:      &model.TLS{SNI: "api.openai.com", CAFile: "/etc/ssl/certs/ca-certificates.crt", Verify: true},
			Protocol: model.ProtocolAuto, ConnectTimeout: 10 * time.Second, ResponseTimeout: 15 * time.Minute, StreamIdleTimeout: 15 * time.Minute,
			AllowedRegions: []string{"hk", "sg"},
			API:            model.APIOpenAI, KeyHeader: "authorization", KeyFormat: "Bearer {key}",
		},
		{
			Name: "private", Scheme: "https", Host: "10.0.0.7", Port: 8443, BasePath: "/v1", Authority: "10.0.0.7:8443",
			ConnectHost: "10.0.0.8", ConnectPort: 9443,
			TLS:      &model.TLS{SNI: "private.example.com", CAFile: "/etc/llmedge/private-ca.pem", Verify: true},
			Protocol: model.ProtocolHTTP2, ConnectTimeout: 2 * time.Second, ResponseTimeout: 5 * time.Minute, StreamIdleTimeout: 30 * time.Second,
			AllowedRegions: []string{"sg"},
			API:            model.APIOpenAI, KeyHeader: "authorization", KeyFormat: "Bearer {key}",
		},
	},
	Routes: []model.Route{
		// Exact paths first, longest first.
		{Name: "chat", Path: "/v1/chat/completions", Upstream: "local", API: model.WireOpenAIChat},
		{Name: "private-health", Path: "/private/health", Upstream: "private", Rewrite: "/v1/private/health", API: model.WireOpenAIChat},
		{Name: "models", Path: "/v1/models", Upstream: "openai", API: model.WireOpenAIChat},
		// Then prefixes, longest first; equal length and headers: by name.
		{Name: "insecure", Prefix: "/insecure", Upstream: "insecure", API: model.WireOpenAIChat},
		{Name: "private", Prefix: "/private/", Upstream: "private", Rewrite: "/v1/", API: model.WireOpenAIChat},
		{Name: "openai", Prefix: "/openai/", Upstream: "openai", Rewrite: "/", API: model.WireOpenAIChat},
		// At equal specificity a route for named hosts comes first.
		{Name: "groq-raw", Prefix: "/groq", Hosts: []string{"*.edge.example.com", "raw.example.com"}, Upstream: "groq", Rewrite: "/openai/groq", API: model.WireOpenAIChat},
		{Name: "groq", Prefix: "/groq", Upstream: "groq", Rewrite: "/openai/", API: model.WireOpenAIChat},
		// Same prefix: more header conditions first.
		{Name: "v1-beta", Prefix: "/v1/", Headers: []model.HeaderMatch{{Name: "openai-beta", Present: true}, {Name: "x-tier", Prefix: "pro"}}, Upstream: "openai", API: model.WireOpenAIChat},
		{Name: "v1-premium", Prefix: "/v1/", Headers: []model.HeaderMatch{{Name: "x-tier", Exact: "premium"}}, Upstream: "openai", API: model.WireOpenAIChat},
		{Name: "v1", Prefix: "/v1/", Upstream: "openai", API: model.WireOpenAIChat},
		{Name: "alpha", Prefix: "/bb", Upstream: "gemini", API: model.WireOpenAIChat},
		{Name: "zeta", Prefix: "/aa", Upstream: "gemini", API: model.WireOpenAIChat},
		{Name: "default", Prefix: "/", Upstream: "openai", API: model.WireOpenAIChat},
	},
	Usage: config.DefaultUsage(),
	Warnings: []string{
		"regions.idle.upstreams: empty; this region serves no upstream",
		`routes.insecure: upstream "insecure" is served by no region, so this route is not emitted anywhere`,
		"upstreams.gemini.url: plain http to a non-loopback host; use https for real providers",
		"upstreams.insecure.tls.verify: false; the upstream's certificate is not checked",
	},
}

func TestValidModel(t *testing.T) {
	_, got, err := config.LoadConfig("testdata/valid.yaml")
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	want := *wantValid
	want.Upstreams = withResilienceDefaults(wantValid.Upstreams)
	if d := cmp.Diff(&want, got); d != "" {
		t.Errorf("model mismatch (-want +got):\n%s", d)
	}
}

// withResilienceDefaults fills in the retry, outlier and circuit breaker defaults of
// upstreams that set none.
func withResilienceDefaults(us []model.Upstream) []model.Upstream {
	out := make([]model.Upstream, len(us))
	for i, u := range us {
		if u.Retries.Attempts == 0 {
			u.Retries = config.DefaultRetries()
		}
		if u.Outlier == nil {
			u.Outlier = config.DefaultOutlier()
		}
		if u.CircuitBreaker == (model.CircuitBreaker{}) {
			u.CircuitBreaker = config.DefaultCircuitBreaker()
		}
		out[i] = u
	}
	return out
}

// validFile is a minimal valid document: region hk serving upstream openai, one route.
func validFile() config.File {
	return config.File{
		Version:   1,
		Regions:   map[string]config.Region{"hk": {Listen: "0.0.0.0:10000", ExtAuthz: "127.0.0.1:10100", Upstreams: []string{"openai"}}},
		Upstreams: map[string]config.Upstream{"openai": {URL: "https://api.openai.com", AllowedRegions: []string{"hk"}}},
		Routes:    map[string]config.Route{"openai": {Match: config.Match{Prefix: "/openai/"}, Upstream: "openai", PrefixRewrite: "/"}},
	}
}

func ptr[T any](v T) *T { return &v }

func TestUpstreamModel(t *testing.T) {
	defTLS := func(sni string) *model.TLS {
		return &model.TLS{SNI: sni, CAFile: config.DefaultCAFile, Verify: true}
	}
	tests := []struct {
		name string
		in   config.Upstream
		want model.Upstream // Name, AllowedRegions and zero timeouts/protocol are filled in below
	}{
		{
			name: "defaults",
			in:   config.Upstream{URL: "https://api.openai.com"},
			want: model.Upstream{Scheme: "https", Host: "api.openai.com", Port: 443, Authority: "api.openai.com",
				ConnectHost: "api.openai.com", ConnectPort: 443, TLS: defTLS("api.openai.com")},
		},
		{
			name: "opt-ins to the client address and request id",
			in:   config.Upstream{URL: "https://api.openai.com", ForwardClientIP: true, ForwardRequestID: true},
			want: model.Upstream{Scheme: "https", Host: "api.openai.com", Port: 443, Authority: "api.openai.com",
				ConnectHost: "api.openai.com", ConnectPort: 443, TLS: defTLS("api.openai.com"), ForwardClientIP: true, ForwardRequestID: true},
		},
		{
			name: "host lower-cased, trailing slash of base path trimmed",
			in:   config.Upstream{URL: "https://API.Example.COM/v1/"},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 443, BasePath: "/v1", Authority: "api.example.com",
				ConnectHost: "api.example.com", ConnectPort: 443, TLS: defTLS("api.example.com")},
		},
		{
			name: "escaped base path kept escaped",
			in:   config.Upstream{URL: "https://api.example.com/a%20b/c"},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 443, BasePath: "/a%20b/c", Authority: "api.example.com",
				ConnectHost: "api.example.com", ConnectPort: 443, TLS: defTLS("api.example.com")},
		},
		{
			name: "non-default https port in authority",
			in:   config.Upstream{URL: "https://api.example.com:8443"},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 8443, Authority: "api.example.com:8443",
				ConnectHost: "api.example.com", ConnectPort: 8443, TLS: defTLS("api.example.com")},
		},
		{
			name: "explicit default https port not in authority",
			in:   config.Upstream{URL: "https://api.example.com:443/"},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 443, Authority: "api.example.com",
				ConnectHost: "api.example.com", ConnectPort: 443, TLS: defTLS("api.example.com")},
		},
		{
			name: "http default port 80, no TLS",
			in:   config.Upstream{URL: "http://localhost"},
			want: model.Upstream{Scheme: "http", Host: "localhost", Port: 80, Authority: "localhost",
				ConnectHost: "localhost", ConnectPort: 80},
		},
		{
			name: "port 443 on http is not the default",
			in:   config.Upstream{URL: "http://127.0.0.1:443"},
			want: model.Upstream{Scheme: "http", Host: "127.0.0.1", Port: 443, Authority: "127.0.0.1:443",
				ConnectHost: "127.0.0.1", ConnectPort: 443},
		},
		{
			name: "IPv6 host bracketed in authority, SNI given",
			in:   config.Upstream{URL: "https://[2001:DB8::1]:8443", TLS: config.TLS{SNI: "Internal.Example.com"}},
			want: model.Upstream{Scheme: "https", Host: "2001:db8::1", Port: 8443, Authority: "[2001:db8::1]:8443",
				ConnectHost: "2001:db8::1", ConnectPort: 8443, TLS: defTLS("internal.example.com")},
		},
		{
			name: "IP host with verify off has no SNI",
			in:   config.Upstream{URL: "https://10.0.0.7", TLS: config.TLS{Verify: ptr(false)}},
			want: model.Upstream{Scheme: "https", Host: "10.0.0.7", Port: 443, Authority: "10.0.0.7",
				ConnectHost: "10.0.0.7", ConnectPort: 443, TLS: &model.TLS{CAFile: config.DefaultCAFile, Verify: false}},
		},
		{
			name: "verify explicitly on",
			in:   config.Upstream{URL: "https://api.example.com", TLS: config.TLS{Verify: ptr(true)}},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 443, Authority: "api.example.com",
				ConnectHost: "api.example.com", ConnectPort: 443, TLS: defTLS("api.example.com")},
		},
		{
			name: "endpoint overrides where to connect, not the authority",
			in:   config.Upstream{URL: "https://api.example.com", Endpoint: "Private.Example.net:9443"},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 443, Authority: "api.example.com",
				ConnectHost: "private.example.net", ConnectPort: 9443, TLS: defTLS("api.example.com")},
		},
		{
			name: "everything explicit",
			in: config.Upstream{
				URL: "https://api.example.com", TLS: config.TLS{SNI: "sni.example.com", CAFile: "/etc/ca.pem"},
				Protocol: "http2", ConnectTimeout: time.Second, ResponseTimeout: time.Hour, StreamIdleTimeout: time.Millisecond,
			},
			want: model.Upstream{Scheme: "https", Host: "api.example.com", Port: 443, Authority: "api.example.com",
				ConnectHost: "api.example.com", ConnectPort: 443, TLS: &model.TLS{SNI: "sni.example.com", CAFile: "/etc/ca.pem", Verify: true},
				Protocol: model.ProtocolHTTP2, ConnectTimeout: time.Second, ResponseTimeout: time.Hour, StreamIdleTimeout: time.Millisecond},
		},
		{
			name: "protocol http1",
			in:   config.Upstream{URL: "http://127.0.0.1:8090", Protocol: "http1"},
			want: model.Upstream{Scheme: "http", Host: "127.0.0.1", Port: 8090, Authority: "127.0.0.1:8090",
				ConnectHost: "127.0.0.1", ConnectPort: 8090, Protocol: model.ProtocolHTTP1},
		},
		{
			name: "protocol auto spelled out",
			in:   config.Upstream{URL: "http://127.0.0.1:8090", Protocol: "auto"},
			want: model.Upstream{Scheme: "http", Host: "127.0.0.1", Port: 8090, Authority: "127.0.0.1:8090",
				ConnectHost: "127.0.0.1", ConnectPort: 8090},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFile()
			tt.in.AllowedRegions = []string{"hk"}
			f.Upstreams["openai"] = tt.in
			cfg, err := config.Validate(f)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			want := tt.want
			want.Name = "openai"
			want.AllowedRegions = []string{"hk"}
			if want.Protocol == "" {
				want.Protocol = model.ProtocolAuto
			}
			if want.ConnectTimeout == 0 {
				want.ConnectTimeout = 10 * time.Second
			}
			if want.ResponseTimeout == 0 {
				want.ResponseTimeout = 15 * time.Minute
			}
			if want.StreamIdleTimeout == 0 {
				want.StreamIdleTimeout = 15 * time.Minute
			}
			if want.API == "" {
				want.API, want.KeyHeader, want.KeyFormat = model.APIOpenAI, "authorization", "Bearer {key}"
			}
			want = withResilienceDefaults([]model.Upstream{want})[0]
			got, ok := cfg.Upstream("openai")
			if !ok {
				t.Fatalf("upstream openai missing from %+v", cfg.Upstreams)
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("upstream mismatch (-want +got):\n%s", d)
			}
		})
	}
}

func TestRouteRewrite(t *testing.T) {
	tests := []struct {
		name          string
		url           string
		match         config.Match
		prefixRewrite string
		want          string
	}{
		{"no base path, no rewrite: keep the path", "https://api.openai.com", config.Match{Prefix: "/openai"}, "", ""},
		{"no base path, rewrite", "https://api.openai.com", config.Match{Prefix: "/openai/"}, "/", "/"},
		{"base path, rewrite to /", "https://api.groq.com/openai", config.Match{Prefix: "/groq"}, "/", "/openai/"},
		{"base path, no rewrite keeps the prefix under it", "https://api.groq.com/openai", config.Match{Prefix: "/groq"}, "", "/openai/groq"},
		{"base path with trailing slash", "https://api.groq.com/openai/", config.Match{Prefix: "/groq/"}, "/", "/openai/"},
		{"base path, rewrite to a sub path", "https://api.groq.com/openai", config.Match{Prefix: "/groq/"}, "/v1/", "/openai/v1/"},
		{"base path, exact path kept under it", "https://api.example.com/v1", config.Match{Path: "/models"}, "", "/v1/models"},
		{"base path, exact path rewritten", "https://api.example.com/v1", config.Match{Path: "/list"}, "/models", "/v1/models"},
		{"no base path, exact path rewritten", "https://api.example.com", config.Match{Path: "/list"}, "/models", "/models"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFile()
			f.Upstreams["openai"] = config.Upstream{URL: tt.url, AllowedRegions: []string{"hk"}}
			f.Routes = map[string]config.Route{"r": {Match: tt.match, Upstream: "openai", PrefixRewrite: tt.prefixRewrite}}
			cfg, err := config.Validate(f)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if len(cfg.Routes) != 1 {
				t.Fatalf("got %d routes, want 1", len(cfg.Routes))
			}
			if got := cfg.Routes[0].Rewrite; got != tt.want {
				t.Errorf("Rewrite = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSortRoutes(t *testing.T) {
	hdr := func(n int) []model.HeaderMatch {
		hs := make([]model.HeaderMatch, n)
		for i := range hs {
			hs[i] = model.HeaderMatch{Name: "h" + string(rune('a'+i)), Present: true}
		}
		return hs
	}
	tests := []struct {
		name string
		in   []model.Route
		want []string
	}{
		{
			name: "exact path before any prefix, even a longer one",
			in: []model.Route{
				{Name: "a", Prefix: "/a/very/long/prefix/"},
				{Name: "b", Path: "/x"},
			},
			want: []string{"b", "a"},
		},
		{
			name: "longer exact path first",
			in: []model.Route{
				{Name: "a", Path: "/v1/models"},
				{Name: "b", Path: "/v1/chat/completions"},
			},
			want: []string{"b", "a"},
		},
		{
			name: "longer prefix first",
			in: []model.Route{
				{Name: "a", Prefix: "/"},
				{Name: "b", Prefix: "/v1/"},
				{Name: "c", Prefix: "/v1/chat/"},
			},
			want: []string{"c", "b", "a"},
		},
		{
			name: "same prefix: more headers first",
			in: []model.Route{
				{Name: "a", Prefix: "/v1/"},
				{Name: "b", Prefix: "/v1/", Headers: hdr(2)},
				{Name: "c", Prefix: "/v1/", Headers: hdr(1)},
			},
			want: []string{"b", "c", "a"},
		},
		{
			name: "length beats headers",
			in: []model.Route{
				{Name: "a", Prefix: "/v1/", Headers: hdr(3)},
				{Name: "b", Prefix: "/v1/x"},
			},
			want: []string{"b", "a"},
		},
		{
			name: "same prefix and headers: a route for named hosts first",
			in: []model.Route{
				{Name: "a-any", Prefix: "/v1/"},
				{Name: "z-hosts", Prefix: "/v1/", Hosts: []string{"api.example.com"}},
				{Name: "b-more-headers-any", Prefix: "/v1/", Headers: hdr(1)},
			},
			want: []string{"b-more-headers-any", "z-hosts", "a-any"},
		},
		{
			name: "name breaks ties, not the prefix text",
			in: []model.Route{
				{Name: "zeta", Prefix: "/aa"},
				{Name: "alpha", Prefix: "/bb"},
				{Name: "mid", Prefix: "/cc"},
			},
			want: []string{"alpha", "mid", "zeta"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Every input order must give the same result.
			for rot := range tt.in {
				rs := append(append([]model.Route{}, tt.in[rot:]...), tt.in[:rot]...)
				config.SortRoutes(rs)
				got := make([]string, len(rs))
				for i, r := range rs {
					got[i] = r.Name
				}
				if d := cmp.Diff(tt.want, got); d != "" {
					t.Errorf("rotation %d: order mismatch (-want +got):\n%s", rot, d)
				}
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name   string
		modify func(f *config.File)
		want   []string
	}{
		{
			name:   "none for a clean config",
			modify: func(f *config.File) {},
			want:   nil,
		},
		{
			name: "plain http to a non-loopback host",
			modify: func(f *config.File) {
				f.Upstreams["openai"] = config.Upstream{URL: "http://api.example.com", AllowedRegions: []string{"hk"}}
			},
			want: []string{"upstreams.openai.url: plain http to a non-loopback host; use https for real providers"},
		},
		{
			name: "plain http to loopback hosts is fine",
			modify: func(f *config.File) {
				f.Upstreams["openai"] = config.Upstream{URL: "http://127.0.0.1:8090", AllowedRegions: []string{"hk"}}
				f.Upstreams["v6"] = config.Upstream{URL: "http://[::1]:8090", AllowedRegions: []string{"hk"}}
				f.Upstreams["name"] = config.Upstream{URL: "http://localhost:8090", AllowedRegions: []string{"hk"}}
				f.Upstreams["pinned"] = config.Upstream{URL: "http://fake.test", Endpoint: "127.0.0.2:8090", AllowedRegions: []string{"hk"}}
				f.Regions["hk"] = config.Region{Listen: "0.0.0.0:10000", ExtAuthz: "127.0.0.1:10100", Upstreams: []string{"openai", "v6", "name", "pinned"}}
			},
			want: nil,
		},
		{
			name: "TLS verification off",
			modify: func(f *config.File) {
				f.Upstreams["openai"] = config.Upstream{URL: "https://api.openai.com", TLS: config.TLS{Verify: ptr(false)}, AllowedRegions: []string{"hk"}}
			},
			want: []string{"upstreams.openai.tls.verify: false; the upstream's certificate is not checked"},
		},
		{
			name: "route whose upstream no region serves",
			modify: func(f *config.File) {
				f.Upstreams["spare"] = config.Upstream{URL: "https://spare.example.com", AllowedRegions: []string{"hk"}}
				f.Routes["spare"] = config.Route{Match: config.Match{Prefix: "/spare/"}, Upstream: "spare"}
			},
			want: []string{`routes.spare: upstream "spare" is served by no region, so this route is not emitted anywhere`},
		},
		{
			name: "region with no upstreams",
			modify: func(f *config.File) {
				f.Regions["idle"] = config.Region{Listen: "0.0.0.0:10001", ExtAuthz: "127.0.0.1:10100"}
			},
			want: []string{"regions.idle.upstreams: empty; this region serves no upstream"},
		},
		{
			name: "access log kept less than the audit minimum",
			modify: func(f *config.File) {
				f.Usage = &config.Usage{AccessLog: config.UsageAccessLog{RetentionDays: 7}}
			},
			want: []string{"usage.access_log.retention_days: 7 keeps less than 14 days, the usual audit minimum"},
		},
		{
			name: "access log off",
			modify: func(f *config.File) {
				f.Usage = &config.Usage{AccessLog: config.UsageAccessLog{Enabled: ptr(false), RetentionDays: 7}}
			},
			want: []string{"usage.access_log.enabled: false: no access log files are written (audits usually want 14 days of them)"},
		},
		{
			name: "Envoy's access log off beside the files",
			modify: func(f *config.File) {
				r := f.Regions["hk"]
				r.AccessLog = "off"
				f.Regions["hk"] = r
			},
			want: nil,
		},
		{
			name: "Envoy's access log off and the files too",
			modify: func(f *config.File) {
				r := f.Regions["hk"]
				r.AccessLog = "off"
				f.Regions["hk"] = r
				f.Usage = &config.Usage{AccessLog: config.UsageAccessLog{Enabled: ptr(false)}}
			},
			want: []string{
				"regions.hk.access_log: off with no access log files either: this region's requests leave no access log line anywhere",
				"usage.access_log.enabled: false: no access log files are written (audits usually want 14 days of them)",
			},
		},
		{
			name: "several, sorted",
			modify: func(f *config.File) {
				f.Regions["hk"] = config.Region{Listen: "0.0.0.0:10000", ExtAuthz: "127.0.0.1:10100"}
				f.Upstreams["openai"] = config.Upstream{URL: "http://api.openai.com", AllowedRegions: []string{"hk"}}
			},
			want: []string{
				"regions.hk.upstreams: empty; this region serves no upstream",
				`routes.openai: upstream "openai" is served by no region, so this route is not emitted anywhere`,
				"upstreams.openai.url: plain http to a non-loopback host; use https for real providers",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFile()
			tt.modify(&f)
			cfg, err := config.Validate(f)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if d := cmp.Diff(tt.want, cfg.Warnings); d != "" {
				t.Errorf("warnings mismatch (-want +got):\n%s", d)
			}
		})
	}
}

func TestAccessLogSettings(t *testing.T) {
	f := validFile()
	f.Usage = &config.Usage{AccessLog: config.UsageAccessLog{Dir: "/var/log/llmedge", RetentionDays: 30, MaxFileBytes: 8 << 20}}
	cfg, err := config.Validate(f)
	if err != nil {
		t.Fatal(err)
	}
	want := model.AccessLog{Enabled: true, Dir: "/var/log/llmedge", RetentionDays: 30, MaxFileBytes: 8 << 20}
	if cfg.Usage.AccessLog != want {
		t.Errorf("access log %+v, want %+v", cfg.Usage.AccessLog, want)
	}
	if d := config.DefaultUsage().AccessLog; d != (model.AccessLog{Enabled: true, Dir: "access-log", RetentionDays: 14, MaxFileBytes: 100 << 20}) {
		t.Errorf("default access log %+v", d)
	}
}

// TestValidateErrors covers rules whose input cannot be written in YAML (or is clearer in Go)
// and checks that Validate, like Load, returns Errors.
func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name   string
		modify func(f *config.File)
		want   string
	}{
		{
			name:   "empty document",
			modify: func(f *config.File) { *f = config.File{} },
			want: "regions: at least one region is required\n" +
				"upstreams: at least one upstream is required\n" +
				"version: required; this build reads version 1",
		},
		{
			name: "sub-millisecond timeout",
			modify: func(f *config.File) {
				u := f.Upstreams["openai"]
				u.StreamIdleTimeout = time.Microsecond
				f.Upstreams["openai"] = u
			},
			want: "upstreams.openai.stream_idle_timeout: must be at least 1ms",
		},
		{
			name: "extauthz as a process needs its address",
			modify: func(f *config.File) {
				r := f.Regions["hk"]
				r.ExtAuthz, r.ExtAuthzInEnvoy = "", false
				f.Regions["hk"] = r
			},
			want: "regions.hk.extauthz: required (unless extauthz_in_envoy is true): this region's extauthz service, which checks every request: unix:/abs/path.sock (for example unix:/run/llmedge/extauthz.sock) or host:port",
		},
		{
			// Inside Envoy the address is not needed, but one given is still checked.
			name: "an extauthz address inside Envoy is still checked",
			modify: func(f *config.File) {
				r := f.Regions["hk"]
				r.ExtAuthz, r.ExtAuthzInEnvoy = "unix:relative.sock", true
				f.Regions["hk"] = r
			},
			want: `regions.hk.extauthz: unix socket path "relative.sock" must be absolute`,
		},
		{
			name: "route to an invalid upstream is not also reported as a missing one",
			modify: func(f *config.File) {
				f.Upstreams["openai"] = config.Upstream{URL: "https://api.openai.com", Protocol: "spdy", AllowedRegions: []string{"hk"}}
			},
			want: `upstreams.openai.protocol: must be auto, http1 or http2, not "spdy"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := validFile()
			tt.modify(&f)
			cfg, err := config.Validate(f)
			if err == nil {
				t.Fatalf("Validate succeeded (%+v); want errors", cfg)
			}
			if cfg != nil {
				t.Errorf("Validate returned a model with the error")
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("errors:\n%s\nwant:\n%s", got, tt.want)
			}
			if n := len(config.AsErrors(err)); n != strings.Count(tt.want, "\n")+1 {
				t.Errorf("AsErrors has %d entries", n)
			}
		})
	}
}

// Inside Envoy extauthz serves no gRPC, so a region checked there needs no extauthz
// address; with extauthz as a process it does (TestValidateErrors).
func TestExtAuthzAddressOptionalInsideEnvoy(t *testing.T) {
	f := validFile()
	r := f.Regions["hk"]
	r.ExtAuthz, r.ExtAuthzInEnvoy = "", true
	f.Regions["hk"] = r
	cfg, err := config.Validate(f)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Regions[0]; !got.ExtAuthzInEnvoy || !got.ExtAuthz.IsZero() {
		t.Errorf("region hk: extauthz_in_envoy %v, extauthz %+v; want in Envoy, no address", got.ExtAuthzInEnvoy, got.ExtAuthz)
	}
}
