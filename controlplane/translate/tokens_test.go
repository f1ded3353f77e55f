package translate_test

import (
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"

	"github.com/llmedge/llmedge/controlplane/translate"
)

// Every route's limits live in its RateLimitPerRoute (Envoy ignores a route's own
// rate_limits once that exists, and hits_addend works nowhere else); each token descriptor
// is sent twice, at admission counting nothing and at stream end counting the tokens; and
// every descriptor a route sends has an entry in the RateLimitConfig, so none is silently
// unlimited.
func TestTokenLimitsAreChargedAtStreamEnd(t *testing.T) {
	cfg := load(t, "testdata/in/token-quotas.yaml")
	res, err := translate.Region(cfg, "hk")
	if err != nil {
		t.Fatal(err)
	}
	configured := map[string]bool{}
	for _, rl := range res.RateLimits {
		for _, d := range rl.GetDescriptors() {
			configured[d.GetValue()] = true
		}
	}
	routes := 0
	for _, vh := range res.Routes[0].GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			routes++
			if len(r.GetRoute().GetRateLimits()) > 0 {
				t.Errorf("route %s has route-level rate_limits, which Envoy ignores next to RateLimitPerRoute", r.GetName())
			}
			a := r.GetTypedPerFilterConfig()["envoy.filters.http.ratelimit"]
			if a == nil {
				t.Errorf("route %s has no RateLimitPerRoute", r.GetName())
				continue
			}
			var per ratelimitv3.RateLimitPerRoute
			if err := a.UnmarshalTo(&per); err != nil {
				t.Fatal(err)
			}
			admit, charge := map[string]int{}, map[string]int{}
			for _, l := range per.GetRateLimits() {
				name := l.GetActions()[0].GetGenericKey().GetDescriptorValue()
				if !configured[name] {
					t.Errorf("route %s sends descriptor %s that the RateLimitConfig does not limit", r.GetName(), name)
				}
				switch {
				case l.GetApplyOnStreamDone():
					charge[name]++
					if l.GetHitsAddend().GetFormat() == "" {
						t.Errorf("route %s: %s charged at stream end without a hits_addend format", r.GetName(), name)
					}
				case l.GetHitsAddend() != nil:
					admit[name]++
					if n := l.GetHitsAddend().GetNumber(); n == nil || n.GetValue() != 0 {
						t.Errorf("route %s: %s admission counts %v, want 0", r.GetName(), name, n)
					}
				default:
					if isTokens(name) {
						t.Errorf("route %s: token descriptor %s counted as a request", r.GetName(), name)
					}
				}
			}
			for name := range admit {
				if charge[name] != 1 || admit[name] != 1 || !isTokens(name) {
					t.Errorf("route %s: %s admitted %d and charged %d times", r.GetName(), name, admit[name], charge[name])
				}
			}
			if len(admit) == 0 {
				t.Errorf("route %s sends no token descriptor", r.GetName())
			}
		}
	}
	if routes != 2 {
		t.Fatalf("%d routes, want 2", routes)
	}
}

func isTokens(descriptor string) bool { return strings.Contains(descriptor, "_tokens_") }
