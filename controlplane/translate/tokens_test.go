package translate_test

import (
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"

	"github.com/llmedge/llmedge/controlplane/translate"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Quotas split between extauthz and Envoy: extauthz's policy lists, per upstream, the
// request limits a request counts; Envoy's RateLimitPerRoute holds each token limit twice,
// admission at request time counting nothing and the charge when the stream is done (one
// path, so a caller's next request is checked after its last charge), and no request
// limit (that would be a second side call); a route's own rate_limits stay empty (Envoy
// ignores them next to RateLimitPerRoute); and every descriptor either side sends has an
// entry in the RateLimitConfig, so none is silently unlimited.
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
	var policy authzv1.Policy
	if err := res.Policy.GetTypedConfig().UnmarshalTo(&policy); err != nil {
		t.Fatal(err)
	}
	requestLimits := 0
	for _, uq := range policy.GetRateLimit().GetUpstreams() {
		for _, d := range uq.GetDescriptors() {
			name := d.GetEntries()[0].GetValue()
			switch {
			case !configured[name]:
				t.Errorf("extauthz sends descriptor %s for %s that the RateLimitConfig does not limit", name, uq.GetUpstream())
			case isTokens(name):
				t.Errorf("%s: extauthz checks token descriptor %s; token limits belong to Envoy's filter", uq.GetUpstream(), name)
			}
			requestLimits++
		}
	}
	if requestLimits == 0 {
		t.Error("extauthz's policy has no request limit; the input has one")
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
				switch {
				case !configured[name]:
					t.Errorf("route %s sends descriptor %s that the RateLimitConfig does not limit", r.GetName(), name)
				case !isTokens(name):
					t.Errorf("route %s: Envoy sends request descriptor %s; extauthz checks those", r.GetName(), name)
				case l.GetApplyOnStreamDone():
					charge[name]++
					if l.GetHitsAddend().GetFormat() == "" {
						t.Errorf("route %s: %s charged at stream end without a hits_addend format", r.GetName(), name)
					}
				default:
					admit[name]++
					if n := l.GetHitsAddend().GetNumber(); n == nil || n.GetValue() != 0 {
						t.Errorf("route %s: %s admission counts %v, want 0", r.GetName(), name, n)
					}
				}
			}
			for name := range charge {
				if charge[name] != 1 || admit[name] != 1 {
					t.Errorf("route %s: %s admitted %d and charged %d times", r.GetName(), name, admit[name], charge[name])
				}
			}
			if len(charge) == 0 {
				t.Errorf("route %s sends no token descriptor", r.GetName())
			}
		}
	}
	if routes != 2 {
		t.Fatalf("%d routes, want 2", routes)
	}
}

func isTokens(descriptor string) bool { return strings.Contains(descriptor, "_tokens_") }
