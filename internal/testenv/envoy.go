package testenv

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvoyStartTimeout bounds how long StartEnvoy waits for the admin API.
const EnvoyStartTimeout = 30 * time.Second

// EnvoyProcess is a running envoy started by StartEnvoy.
type EnvoyProcess struct {
	*Process
	adminURL string
}

// adminClient ignores proxy settings: the admin API is always local.
var adminClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{Proxy: nil},
}

// StartEnvoy runs the real Envoy on bootstrapPath and returns once its admin
// API answers. Use an admin port of 0 in the bootstrap
// (bootstrap.EphemeralAdminPort) so parallel tests never collide; the chosen
// address is read back from --admin-address-path.
func StartEnvoy(t testing.TB, name, bootstrapPath string, extraArgs ...string) *EnvoyProcess {
	t.Helper()
	adminPath := filepath.Join(t.TempDir(), "admin")
	args := []string{
		"-c", bootstrapPath,
		// Hot restart needs a shared-memory region keyed by --base-id; two
		// Envoys in one test run would clash on it.
		"--disable-hot-restart",
		"--concurrency", "1",
		"--admin-address-path", adminPath,
		"-l", "info",
	}
	cmd := exec.Command(Envoy(t), append(args, extraArgs...)...)
	p := Start(t, name, cmd)
	e := &EnvoyProcess{Process: p}
	Eventually(t, EnvoyStartTimeout, 50*time.Millisecond, func() error {
		if p.Exited() {
			t.Fatalf("testenv: envoy %s exited during startup (%v):\n%s", name, p.waitErr, tail(p.Log(), logTailLines))
		}
		// Envoy writes the file only once the admin listener is bound.
		b, err := os.ReadFile(adminPath)
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			return fmt.Errorf("envoy %s has not written %s yet", name, adminPath)
		}
		url := "http://" + strings.TrimSpace(string(b))
		// /ready is 503 until the first ADS response arrives (PRE_INITIALIZING),
		// so any HTTP answer proves the admin API is up.
		resp, err := adminClient.Get(url + "/ready")
		if err != nil {
			return fmt.Errorf("envoy %s admin API: %w", name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		e.adminURL = url
		return nil
	})
	return e
}

// AdminURL returns the admin API base URL, e.g. http://127.0.0.1:40123.
func (e *EnvoyProcess) AdminURL() string { return e.adminURL }

// AdminGet GETs path (e.g. "/stats?filter=xds") from the admin API.
func (e *EnvoyProcess) AdminGet(t testing.TB, path string) (status int, body []byte) {
	t.Helper()
	resp, err := adminClient.Get(e.adminURL + path)
	if err != nil {
		t.Fatalf("testenv: envoy %s GET %s: %v", e.Name, path, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("testenv: envoy %s GET %s: %v", e.Name, path, err)
	}
	return resp.StatusCode, body
}

// ConfigDump returns the admin /config_dump JSON.
func (e *EnvoyProcess) ConfigDump(t testing.TB) []byte {
	t.Helper()
	status, body := e.AdminGet(t, "/config_dump")
	if status != http.StatusOK {
		t.Fatalf("testenv: envoy %s /config_dump: HTTP %d: %s", e.Name, status, body)
	}
	return body
}
