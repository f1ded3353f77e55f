package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
	"github.com/llmedge/llmedge/internal/testenv"
)

// withExtraRoutes adds n routes on openai to a routes YAML: at 400 the regions' route
// configurations are tens of KiB, past the size from which the control plane's codec sends
// a resource from its shared encoding instead of copying it into each stream's message.
func withExtraRoutes(doc string, n int) string {
	var b strings.Builder
	b.WriteString("routes:\n")
	for i := range n {
		fmt.Fprintf(&b, "  extra%04d:\n    match: {prefix: /extra%04d/}\n    upstream: openai\n    prefix_rewrite: /v1/\n", i, i)
	}
	return strings.Replace(doc, "routes:\n", b.String(), 1)
}

// TestLargeRouteConfigReachesEnvoy: the real Envoy accepts a large route configuration sent
// by reference, serves its last route, and accepts the next version after an edit.
func TestLargeRouteConfigReachesEnvoy(t *testing.T) {
	t.Parallel()
	const n = 400
	s := newStack(t, startUpstream(t, fakellm.Options{}), withExtraRoutes(twoRegions, n), "hk", "sg")
	serves := func(path string) {
		t.Helper()
		testenv.Eventually(t, applyBound, 5*time.Millisecond, func() error {
			resp, body := post(t, s.edgeURL("hk", path), chatBody, s.auth(nil))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: status %d: %s", path, resp.StatusCode, body)
			}
			return nil
		})
	}
	inSync := func(notRoutes string) {
		t.Helper()
		testenv.Eventually(t, applyBound, 5*time.Millisecond, func() error {
			st := s.status()
			for _, r := range []string{"hk", "sg"} {
				if !s.region(st, r).InSync {
					return fmt.Errorf("region %s not in sync", r)
				}
			}
			if v := s.region(st, "hk").Versions["routes"]; v == notRoutes {
				return fmt.Errorf("routes still at version %s", v)
			}
			return nil
		})
	}
	inSync("")
	serves(fmt.Sprintf("/extra%04d/chat/completions", n-1))

	before := s.region(s.status(), "hk").Versions["routes"]
	s.writeRoutes(withExtraRoutes(twoRegions, n+1))
	inSync(before)
	serves(fmt.Sprintf("/extra%04d/chat/completions", n))
}
