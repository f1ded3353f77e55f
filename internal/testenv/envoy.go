package testenv

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// EnvoyStartTimeout bounds how long StartEnvoy waits for the admin API.
const EnvoyStartTimeout = stack.EnvoyStartTimeout

// DrainTime is how long a stopping test Envoy keeps its listeners open (stack's default
// is for a load balancer's health check; nothing in a test needs that long).
const DrainTime = time.Second

// EnvoyProcess is a running envoy started by StartEnvoy.
type EnvoyProcess struct {
	*Process
	e *stack.EnvoyProcess
}

// Drain runs the drain steps of Stop (stack.EnvoyProcess.Drain) without stopping Envoy.
func (e *EnvoyProcess) Drain(t testing.TB) error {
	t.Helper()
	return e.e.Drain(t.Context())
}

// DrainErr returns what went wrong when Stop drained Envoy (nil if nothing did).
func (e *EnvoyProcess) DrainErr() error { return e.e.DrainErr() }

// StartEnvoy runs the real Envoy on bootstrapPath and returns once its admin
// API answers. Use an admin port of 0 in the bootstrap
// (bootstrap.EphemeralAdminPort) so parallel tests never collide; the chosen
// address is read back from --admin-address-path.
func StartEnvoy(t testing.TB, name, bootstrapPath string, extraArgs ...string) *EnvoyProcess {
	t.Helper()
	r := runner(t, stack.Paths{Envoy: Envoy(t)})
	e, err := r.StartEnvoy(t.Context(), name, stack.Envoy{Bootstrap: bootstrapPath, LogLevel: "info", DrainTime: DrainTime, Extra: extraArgs})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return &EnvoyProcess{Process: adopt(t, e.Process), e: e}
}

// AdminURL returns the admin API base URL, e.g. http://127.0.0.1:40123.
func (e *EnvoyProcess) AdminURL() string { return e.e.AdminURL() }

// AdminGet GETs path (e.g. "/stats?filter=xds") from the admin API.
func (e *EnvoyProcess) AdminGet(t testing.TB, path string) (status int, body []byte) {
	t.Helper()
	status, body, err := e.e.AdminGet(context.Background(), path)
	if err != nil {
		t.Fatalf("testenv: envoy %s GET %s: %v", e.Name, path, err)
	}
	return status, body
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
