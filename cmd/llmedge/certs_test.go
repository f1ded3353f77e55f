package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCertsWalkthrough runs the commands docs/CONFIG.md shows: a CA, a control plane
// certificate and a region certificate, renewed from a timer. Nothing secret reaches the
// terminal.
func TestCertsWalkthrough(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"certs", "init", "--dir", dir}, "CA certificate: " + filepath.Join(dir, "ca.pem")},
		{[]string{"certs", "init", "--dir", dir}, "left unchanged"},
		{[]string{"certs", "issue", "--dir", dir, "--component", "controlplane", "--dns", "xds.example.net", "--ip", "127.0.0.1"}, "identity:    spiffe://llmedge/controlplane"},
		{[]string{"certs", "issue", "--dir", dir, "--region", "hk", "--component", "envoy"}, "identity:    spiffe://llmedge/region/hk/envoy"},
		{[]string{"certs", "issue", "--dir", dir, "--region", "hk", "--component", "envoy", "--renew"}, "nothing to do"},
		{[]string{"certs", "issue", "--dir", dir, "--region", "sg", "--component", "extauthz", "--dns", "a.example,b.example", "--days", "7"}, "sg-extauthz.pem"},
	}
	for _, s := range steps {
		code, out, errs := runCLI(t, s.args...)
		if code != 0 || !strings.Contains(out, s.want) {
			t.Errorf("%v: exit %d, stdout:\n%s\nstderr:\n%s\nwant %q", s.args, code, out, errs, s.want)
		}
		if strings.Contains(out+errs, "PRIVATE KEY") || strings.Contains(out+errs, "BEGIN") {
			t.Errorf("%v printed PEM data", s.args)
		}
	}
	for _, f := range []string{"ca-key.pem", "controlplane-key.pem", "hk-envoy-key.pem", "sg-extauthz-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %#o, want 0600", f, fi.Mode().Perm())
		}
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"certs"}, 2, "usage:"},
		{[]string{"certs", "issue", "--dir", dir, "--component", "envoy"}, 2, "--region required"},
		{[]string{"certs", "issue", "--dir", dir, "--region", "hk", "--component", "envoy"}, 1, "already exists; use --renew"},
		{[]string{"certs", "issue", "--dir", dir, "--region", "hk", "--component", "proxy"}, 1, `component "proxy"`},
		{[]string{"certs", "issue", "--dir", dir, "--region", "hk", "--component", "ratelimit", "--ip", "nope"}, 1, `--ip "nope"`},
		{[]string{"certs", "issue", "--dir", dir, "--component", "controlplane"}, 1, "give --dns and/or --ip"},
	} {
		code, _, errs := runCLI(t, tt.args...)
		if code != tt.code || !strings.Contains(errs, tt.want) {
			t.Errorf("%v: exit %d, stderr:\n%s\nwant exit %d and %q", tt.args, code, errs, tt.code, tt.want)
		}
	}
}
