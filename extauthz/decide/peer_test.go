package decide

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/internal/wire"
)

// On a forwarded route (an entry region, or a standby region's first hop) the caller is
// authenticated as usual, no key is looked up, and the caller is named for the next hop;
// a forged identity header is overwritten, never trusted.
func TestDecideForward(t *testing.T) {
	c := compiled(t)
	keys := newKeys()
	r := Request{Region: "hk", Upstream: "openai", Route: "openai-chat", Hop: wire.HopForward, Path: "/v1/chat",
		Headers:  map[string]string{"authorization": "Bearer " + tokAlice, wire.HeaderCaller: "frank", "x-llmedge-other": "x"},
		SourceIP: netip.MustParseAddr("10.0.0.1"), Now: now}
	d := c.Decide(r, keys)
	if !d.Allow || d.Caller != "alice" {
		t.Fatalf("decision %+v, want alice allowed", d)
	}
	if keys.calls != 0 {
		t.Errorf("the key store was asked %d times on a forwarded route", keys.calls)
	}
	want := map[string]string{wire.HeaderCaller: "alice", wire.HeaderTenant: "team-a", wire.HeaderUpstream: "openai"}
	if len(d.SetHeaders) != len(want) {
		t.Errorf("set headers %v, want %v", d.SetHeaders, want)
	}
	for k, v := range want {
		if d.SetHeaders[k] != v {
			t.Errorf("set %s = %q, want %q", k, d.SetHeaders[k], v)
		}
	}
	if !slices.Contains(d.RemoveHeaders, "authorization") || !slices.Contains(d.RemoveHeaders, "x-llmedge-other") || slices.Contains(d.RemoveHeaders, wire.HeaderCaller) {
		t.Errorf("remove headers %v: want the token and x-llmedge-other removed, the caller header set instead", d.RemoveHeaders)
	}
	// Without a token, a forged identity gets nothing.
	r.Headers = map[string]string{wire.HeaderCaller: "alice"}
	if d := c.Decide(r, keys); d.Allow || d.Status != 401 {
		t.Errorf("forged identity without a token: %+v", d)
	}
	// A bring-your-own-key caller's key is not carried to another region.
	r.Headers = map[string]string{wire.TokenHeader: tokByok, "authorization": "Bearer sk-own"}
	if d := c.Decide(r, keys); d.Allow || d.Status != 403 {
		t.Errorf("BYOK on a forwarded route: %+v", d)
	}
}

// On the peer listener the identity header names the caller, this region's policy decides,
// and this region's key is injected.
func TestDecidePeer(t *testing.T) {
	c := compiled(t)
	req := func(h map[string]string, upstream string) Request {
		return Request{Region: "hk", Upstream: upstream, Route: "peer:" + upstream, Hop: wire.HopPeer, Path: "/v1/chat", Headers: h, Now: now}
	}
	keys := newKeys()
	d := c.Decide(req(map[string]string{wire.HeaderCaller: "alice", wire.HeaderTenant: "team-a", wire.HeaderUpstream: "openai"}, "openai"), keys)
	if !d.Allow || d.Caller != "alice" || d.Tenant != "team-a" || d.SetHeaders["authorization"] != "Bearer "+keyOpenAI {
		t.Fatalf("decision %+v, want alice with this region's key", d)
	}
	for _, h := range []string{wire.HeaderCaller, wire.HeaderTenant, wire.HeaderUpstream} {
		if !slices.Contains(d.RemoveHeaders, h) {
			t.Errorf("%s is not removed before the provider: %v", h, d.RemoveHeaders)
		}
	}
	tests := []struct {
		name, caller, upstream string
		status                 int
	}{
		{"no caller", "", "openai", 401},
		{"unknown caller", "mallory", "openai", 403},
		{"disabled", "bob", "openai", 401},
		{"expired", "carol", "openai", 401},
		{"upstream not allowed here", "frank", "openai", 403},
		{"bring your own key", "byok", "openai", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.caller != "" {
				h[wire.HeaderCaller] = tt.caller
			}
			r := req(h, tt.upstream)
			if tt.name == "expired" {
				r.Now = expiry.Add(time.Hour)
			}
			d := c.Decide(r, newKeys())
			if d.Allow || d.Status != tt.status {
				t.Errorf("decision %+v, want %d", d, tt.status)
			}
			if strings.Contains(string(d.Body), keyOpenAI) {
				t.Error("the body carries the key")
			}
		})
	}
}
