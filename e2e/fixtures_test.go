package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// providerHosts are the provider host names the fake upstream's certificate covers, by the
// upstream name the routes templates give them; the key header and error shape follow
// from the name (api: anthropic, api: gemini).
var providerHosts = map[string]string{"openai": "api.openai.test", "anthropic": "api.anthropic.test", "gemini": "gemini.test"}

// Provider renders one TLS upstream of the fake provider for a routes template, allowed in
// the given regions: {{.Provider "anthropic" "hk" "sg"}}. Further fields of the upstream
// (limits:, timeouts) may follow it in the template at the same indentation.
func (d routesData) Provider(name string, regions ...string) string {
	host, ok := providerHosts[name]
	if !ok {
		panic(fmt.Sprintf("e2e: no provider %q in providerHosts", name))
	}
	api := ""
	if name != "openai" {
		api = "    api: " + name + "\n"
	}
	return fmt.Sprintf("  %s:\n    url: https://%s\n%s    endpoint: %s\n    tls: {ca_file: %s}\n    allowed_regions: [%s]",
		name, host, api, d.Upstream(), d.CA(), strings.Join(regions, ", "))
}

// Route renders the route /<name> → upstream <name>, as every template names them.
func (d routesData) Route(name string) string {
	return fmt.Sprintf("  %[1]s: {match: {prefix: /%[1]s}, upstream: %[1]s, prefix_rewrite: /}", name)
}

// writeKey stores key as provider key name of upstream in the extauthz keys directory dir
// (<dir>/<upstream>/<name>, private to this user).
func writeKey(t *testing.T, dir, upstream, name, key string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, upstream), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, upstream, name), []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
}

// quotaRegionHK is region hk with its ratelimit serving the fake provider's openai; a
// template appends its callers.
const quotaRegionHK = `
version: 1
regions:
  hk:
    listen: 127.0.0.1:{{.Port "hk"}}
    extauthz: {{.ExtAuthz "hk"}}
    ratelimit: {{.RateLimit "hk"}}
    upstreams: [openai]
upstreams:
{{.Provider "openai" "hk"}}
routes:
{{.Route "openai"}}
`
