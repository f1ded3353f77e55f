package translate_test

import (
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"

	"github.com/llmedge/llmedge/controlplane/translate"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Request-time checks and stream-end charges split between extauthz and Envoy: extauthz's
// policy lists, per upstream, every descriptor a request sends (requests counting one,
// token limits checked without counting); Envoy's RateLimitPerRoute charges each token
// descriptor once, when the stream is done, and nothing else (a request-time entry there
// would be a second side call); a route's own rate_limits stay empty (Envoy ignores them
// next to RateLimitPerRoute); and every descriptor either side sends has an entry in the
// RateLimitConfig, so none is silently unlimited.
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
	admitted := map[string]map[string]bool{} // upstream -> token descriptors checked at request time
	for _, uq := range policy.GetRateLimit().GetUpstreams() {
		admitted[uq.GetUpstream()] = map[string]bool{}
		for _, d := range uq.GetDescriptors() {
			name := d.GetEntries()[0].GetValue()
			if !configured[name] {
				t.Errorf("extauthz sends descriptor %s for %s that the RateLimitConfig does not limit", name, uq.GetUpstream())
			}
			if d.GetCheckOnly() != isTokens(name) {
				t.Errorf("%s: descriptor %s check_only=%v; want token limits checked without counting and request limits counted", uq.GetUpstream(), name, d.GetCheckOnly())
			}
			if d.GetCheckOnly() {
				admitted[uq.GetUpstream()][name] = true
			}
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
			charged := map[string]int{}
			for _, l := range per.GetRateLimits() {
				name := l.GetActions()[0].GetGenericKey().GetDescriptorValue()
				switch {
				case !configured[name]:
					t.Errorf("route %s sends descriptor %s that the RateLimitConfig does not limit", r.GetName(), name)
				case !l.GetApplyOnStreamDone() || l.GetHitsAddend().GetFormat() == "" || !isTokens(name):
					t.Errorf("route %s: Envoy sends %s at request time or without the tokens used; only stream-end token charges belong there", r.GetName(), name)
				}
				charged[name]++
			}
			up := r.GetName() // routes are named after their upstream in this input
			for name := range admitted[up] {
				if charged[name] != 1 {
					t.Errorf("route %s: %s admitted by extauthz but charged %d times at stream end", r.GetName(), name, charged[name])
				}
			}
			for name := range charged {
				if !admitted[up][name] {
					t.Errorf("route %s: %s charged at stream end but never checked at admission", r.GetName(), name)
				}
			}
			if len(charged) == 0 {
				t.Errorf("route %s sends no token descriptor", r.GetName())
			}
		}
	}
	if routes != 2 {
		t.Fatalf("%d routes, want 2", routes)
	}
}

func isTokens(descriptor string) bool { return strings.Contains(descriptor, "_tokens_") }
