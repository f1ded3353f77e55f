package testenv

import (
	"testing"

	"github.com/llmedge/llmedge/internal/stack"
)

// StartControlPlane runs `llmedge controlplane` (the binary at llmedge) with settings c
// and returns once its HTTP API answers.
func StartControlPlane(t testing.TB, llmedge, name string, c stack.ControlPlane) *Process {
	t.Helper()
	p, err := runner(t, stack.Paths{Llmedge: llmedge}).StartControlPlane(t.Context(), name, c)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return adopt(t, p)
}

// StartExtAuthz runs `llmedge extauthz` with settings e and returns once it holds its
// region's policy (/readyz 200).
func StartExtAuthz(t testing.TB, llmedge, name string, e stack.ExtAuthz) *Process {
	t.Helper()
	p, err := runner(t, stack.Paths{Llmedge: llmedge}).StartExtAuthz(t.Context(), name, e)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return adopt(t, p)
}

// StartRegionEnvoy renders a region's bootstrap with `llmedge bootstrap` (the binary at
// llmedge) from e and runs Envoy on it, returning once its admin API answers. An
// AdminPort of 0 lets the kernel choose, so parallel tests never collide. Stop (and the
// test's cleanup) drains it first (stack.EnvoyProcess.Drain), for DrainTime unless e
// sets its own.
func StartRegionEnvoy(t testing.TB, llmedge, name string, e stack.Envoy) *EnvoyProcess {
	t.Helper()
	if e.LogLevel == "" {
		e.LogLevel = "info"
	}
	if e.DrainTime == 0 {
		e.DrainTime = DrainTime
	}
	r := runner(t, stack.Paths{Envoy: Envoy(t), Llmedge: llmedge})
	ep, err := r.StartEnvoy(t.Context(), name, e)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return &EnvoyProcess{Process: adopt(t, ep.Process), e: ep}
}
