package testenv

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/controlplane/bootstrap"
)

func TestStartEnvoy(t *testing.T) {
	t.Parallel()
	cfg, err := bootstrap.Render(bootstrap.Options{
		NodeID:    "envoy-test-1",
		Region:    "test",
		AdminPort: bootstrap.EphemeralAdminPort,
		XDSPort:   FreePort(t), // nothing listens: Envoy keeps retrying ADS
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "envoy.yaml")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}

	e := StartEnvoy(t, "envoy", path)
	if !strings.HasPrefix(e.AdminURL(), "http://127.0.0.1:") {
		t.Errorf("AdminURL() = %q", e.AdminURL())
	}
	// Without an ADS server the LDS/CDS init never completes.
	if status, body := e.AdminGet(t, "/ready"); status != http.StatusServiceUnavailable {
		t.Errorf("/ready = %d %s, want 503 before xDS arrives", status, body)
	}
	dump := string(e.ConfigDump(t))
	for _, want := range []string{`"envoy-test-1"`, `"llmedge_xds"`, "BootstrapConfigDump"} {
		if !strings.Contains(dump, want) {
			t.Errorf("config_dump lacks %s", want)
		}
	}
	e.Stop()
	if !strings.Contains(e.Log(), "caught ENVOY_SIGTERM") {
		t.Errorf("envoy log lacks the SIGTERM line; was it stopped gracefully?\n%s", e.LogTail(20))
	}
}
