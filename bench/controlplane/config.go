package main

import (
	"fmt"
	"os"
	"strings"
)

// The benchmark config has the shape of benchFile in controlplane/xds/bench_test.go (and
// benchRoutesTemplate in e2e/bench_test.go), written here as YAML because those generators
// live in test files: 5 regions, each naming an extauthz address and serving all of
// 20 https upstreams (endpoint override, ca_file, every fourth with a base path); 1,000
// routes r0000..r0999 with distinct prefixes, alternating "/rNNNN" (prefix_rewrite /) and
// "/rNNNN/" (prefix_rewrite /v1/); every 10th route bound to one of 4 host names, every 7th
// matching a header. No callers, no quotas.
const (
	numRoutes    = 1000
	numUpstreams = 20
	numHosts     = 4
)

var regionNames = []string{"eu", "hk", "jp", "sg", "us"}

// routesYAML renders the config. rename, when set, replaces the name (and so the prefix)
// of route 0, which every region serves: the smallest edit that changes the routes
// version of every region.
func routesYAML(rename string) []byte {
	ups := make([]string, numUpstreams)
	for i := range ups {
		ups[i] = fmt.Sprintf("up%02d", i)
	}
	var b strings.Builder
	b.WriteString("version: 1\nregions:\n")
	for i, r := range regionNames {
		fmt.Fprintf(&b, "  %s:\n    listen: 127.0.0.1:%d\n    extauthz: 127.0.0.1:10100\n    upstreams: [%s]\n", r, 10000+i, strings.Join(ups, ", "))
	}
	b.WriteString("upstreams:\n")
	for i, u := range ups {
		url := "https://" + u + ".llmedge.test"
		if i%4 == 3 {
			url += "/v1beta"
		}
		fmt.Fprintf(&b, "  %s:\n    url: %s\n    endpoint: 127.0.0.1:8443\n    tls: {ca_file: /etc/llmedge/upstream-ca.pem}\n    allowed_regions: [%s]\n",
			u, url, strings.Join(regionNames, ", "))
	}
	b.WriteString("routes:\n")
	for i := 0; i < numRoutes; i++ {
		name := fmt.Sprintf("r%04d", i)
		if i == 0 && rename != "" {
			name = rename
		}
		prefix, rewrite := "/"+name, "/"
		if i%2 == 1 {
			prefix, rewrite = "/"+name+"/", "/v1/"
		}
		fmt.Fprintf(&b, "  %s:\n    match: {prefix: %s", name, prefix)
		if i%10 == 0 {
			fmt.Fprintf(&b, ", hosts: [tenant-%d.llmedge.test]", (i/10)%numHosts)
		}
		if i%7 == 0 {
			fmt.Fprintf(&b, ", headers: [{name: x-llmedge-tenant, exact: t%d}]", i)
		}
		fmt.Fprintf(&b, "}\n    upstream: %s\n    prefix_rewrite: %s\n", ups[i%len(ups)], rewrite)
	}
	return []byte(b.String())
}

// replaceFile writes doc to a temporary file and renames it over path, as editors do.
func replaceFile(path string, doc []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, doc, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
