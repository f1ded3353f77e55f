package extauthz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// fakeRLS stands in for the in-process limiter: it records what it is asked and answers
// as told.
type fakeRLS struct {
	mu     sync.Mutex
	got    []*rlsv3.RateLimitRequest
	answer *rlsv3.RateLimitResponse
	fail   bool
	config *rlsconfv3.RateLimitConfig
}

func (f *fakeRLS) setConfig(_ string, rc *rlsconfv3.RateLimitConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.config = rc
	return nil
}

func (f *fakeRLS) ShouldRateLimit(_ context.Context, r *rlsv3.RateLimitRequest, _ time.Duration) (*rlsv3.RateLimitResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, r)
	if f.fail {
		return nil, errors.New("redis is gone")
	}
	return f.answer, nil
}

func (f *fakeRLS) giveBackLent(*lending, uint64) {}

func (f *fakeRLS) answerLocally(*rlsv3.RateLimitRequest, *planSlot, *lending) (*rlsv3.RateLimitResponse, bool) {
	return nil, false
}

func (f *fakeRLS) set(answer *rlsv3.RateLimitResponse, fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer, f.fail = answer, fail
}

func (f *fakeRLS) requests() []*rlsv3.RateLimitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*rlsv3.RateLimitRequest(nil), f.got...)
}

// withFakeRLS gives m a fake limiter.
func withFakeRLS(m *Main) *fakeRLS {
	f := &fakeRLS{answer: &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}}
	m.limiter = f
	return f
}

// quotaPolicy is policyResource's policy with a caller-wide request limit and a
// model-scoped request limit on openai.
func quotaPolicy(t *testing.T, tok string, failClosed bool) []*anypb.Any {
	t.Helper()
	limits, err := anypb.New(&rlsconfv3.RateLimitConfig{Name: "llmedge-hk", Domain: "llmedge"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := anypb.New(&authzv1.Policy{
		Region:    "hk",
		Upstreams: []*authzv1.Upstream{{Name: "openai", KeyHeader: "authorization", KeyFormat: "Bearer {key}", Api: "openai"}},
		Callers:   []*authzv1.Caller{{Name: "app", TokenSha256: []string{token.Digest(tok)}, AllowedUpstreams: []string{"openai"}}},
		RateLimit: &authzv1.RateLimit{Config: limits, Domain: "llmedge", FailClosed: failClosed, Upstreams: []*authzv1.UpstreamQuotas{{
			Upstream: "openai",
			Descriptors: []*authzv1.Descriptor{
				{Entries: []*authzv1.Entry{{Key: "llmedge", Value: "caller_minute"}, {Key: "caller", Source: authzv1.Entry_CALLER}}},
				{Entries: []*authzv1.Entry{{Key: "llmedge", Value: "upstream_model_day"}, {Key: "upstream", Value: "openai"}, {Key: "model", Source: authzv1.Entry_MODEL}}},
			},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ext, err := anypb.New(&corev3.TypedExtensionConfig{Name: wire.PolicyResourceName, TypedConfig: p})
	if err != nil {
		t.Fatal(err)
	}
	return []*anypb.Any{ext}
}

func withModel(req *authv3.CheckRequest, model string) *authv3.CheckRequest {
	req.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		wire.RequestMetadataNamespace: {Fields: map[string]*structpb.Value{wire.RequestMetadataModel: structpb.NewStringValue(model)}},
	}}
	return req
}

func header(hs []*corev3.HeaderValueOption, name string) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == name {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

func TestQuotaDescriptorsCarryCallerAndModel(t *testing.T) {
	m := newMain(t)
	rls := withFakeRLS(m)
	const tok = "llme_quota_test_token_aaaaaaaaaaaaaaaaaaaaaaaaaa"
	if err := m.apply("v1", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	rls.set(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
		{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: 7, DurationUntilReset: durationpb.New(42 * time.Second),
			CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{Name: "callers.app.limits[0]", RequestsPerUnit: 10, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE}},
		{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: 900, DurationUntilReset: durationpb.New(3000 * time.Second),
			CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: 1000, Unit: rlsv3.RateLimitResponse_RateLimit_DAY}},
	}}, false)

	resp, err := m.Check(t.Context(), withModel(checkRequest(tok), "gpt-4o"))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check = %v, %v; want allowed", resp, err)
	}
	got := rls.requests()
	if len(got) != 1 || len(got[0].GetDescriptors()) != 2 {
		t.Fatalf("service asked %v; want one request with two descriptors", got)
	}
	d0, d1 := got[0].GetDescriptors()[0], got[0].GetDescriptors()[1]
	if e := d0.GetEntries(); len(e) != 2 || e[1].GetKey() != "caller" || e[1].GetValue() != "app" || d0.GetHitsAddend() != nil {
		t.Errorf("request descriptor %v: want caller=app counting the request", d0)
	}
	if e := d1.GetEntries(); len(e) != 3 || e[2].GetValue() != "gpt-4o" || d1.GetHitsAddend() != nil {
		t.Errorf("model descriptor %v: want model=gpt-4o counting the request", d1)
	}
	if got[0].GetDomain() != "llmedge" || got[0].GetHitsAddend() != 1 {
		t.Errorf("domain %q hits %d", got[0].GetDomain(), got[0].GetHitsAddend())
	}
	added := resp.GetOkResponse().GetResponseHeadersToAdd()
	if v := header(added, "x-ratelimit-limit"); v != `10, 10;w=60;name="callers.app.limits[0]", 1000;w=86400` {
		t.Errorf("x-ratelimit-limit = %q", v)
	}
	if header(added, "x-ratelimit-remaining") != "7" || header(added, "x-ratelimit-reset") != "42" {
		t.Errorf("x-ratelimit headers %v: want the limit with the least remaining", added)
	}

	// Without a model the model-scoped descriptor is not sent, as Envoy's metadata action
	// sends none for an absent value.
	if _, err := m.Check(t.Context(), checkRequest(tok)); err != nil {
		t.Fatal(err)
	}
	if got := rls.requests(); len(got) != 2 || len(got[1].GetDescriptors()) != 1 {
		t.Errorf("request without a model sent %v; want only the caller descriptor", got[len(got)-1].GetDescriptors())
	}
}

func TestQuotaOverLimitIs429WithHeaders(t *testing.T) {
	m := newMain(t)
	rls := withFakeRLS(m)
	const tok = "llme_quota_test_token_bbbbbbbbbbbbbbbbbbbbbbbbbb"
	if err := m.apply("v1", quotaPolicy(t, tok, false)); err != nil {
		t.Fatal(err)
	}
	rls.set(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
		{Code: rlsv3.RateLimitResponse_OVER_LIMIT, DurationUntilReset: durationpb.New(13 * time.Second),
			CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{Name: "callers.app.limits[0]", RequestsPerUnit: 3, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE}},
	}}, false)
	resp, err := m.Check(t.Context(), checkRequest(tok))
	if err != nil {
		t.Fatal(err)
	}
	denied := resp.GetDeniedResponse()
	if denied == nil || denied.GetStatus().GetCode() != 429 {
		t.Fatalf("Check = %v; want a 429 denial", resp)
	}
	hs := denied.GetHeaders()
	if header(hs, "retry-after") != "13" || header(hs, "x-ratelimit-remaining") != "0" || !strings.Contains(header(hs, "x-ratelimit-limit"), `name="callers.app.limits[0]"`) {
		t.Errorf("429 headers %v: want Retry-After 13 and the limit named", hs)
	}
	if b := denied.GetBody(); !strings.Contains(b, "caller app") || !strings.Contains(b, "callers.app.limits[0]") || strings.Contains(b, tok) {
		t.Errorf("429 body %q: want the caller and the limit named, and never the token", b)
	}
}

func TestQuotaServiceDownFollowsTheFailureMode(t *testing.T) {
	for _, failClosed := range []bool{false, true} {
		m := newMain(t)
		rls := withFakeRLS(m)
		rls.set(nil, true)
		const tok = "llme_quota_test_token_cccccccccccccccccccccccccc"
		if err := m.apply("v1", quotaPolicy(t, tok, failClosed)); err != nil {
			t.Fatal(err)
		}
		resp, err := m.Check(t.Context(), checkRequest(tok))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !failClosed && resp.GetOkResponse() == nil:
			t.Errorf("fail open: %v; want allowed when the service errs", resp)
		case failClosed && (resp.GetDeniedResponse().GetStatus().GetCode() != 500 || !strings.Contains(resp.GetDeniedResponse().GetBody(), "rate_limit_unavailable")):
			t.Errorf("fail closed: %v; want 500 rate_limit_unavailable", resp)
		}

	}
}

// With Redis absent the limiter answers an error at once and then skips Redis for a while,
// so a fail-open region does not make each request wait for a dial.
func TestLimiterSkipsAnAbsentRedis(t *testing.T) {
	reg := prometheus.NewRegistry()
	lim := newLimiter(transport.Address{Path: filepath.Join(t.TempDir(), "no-redis.sock")}, reg, slog.New(slog.DiscardHandler))
	if err := lim.setConfig("v1", &rlsconfv3.RateLimitConfig{Name: "llmedge-hk", Domain: "llmedge", Descriptors: []*rlsconfv3.RateLimitDescriptor{{
		Key: "llmedge", Value: "caller_minute", Descriptors: []*rlsconfv3.RateLimitDescriptor{{
			Key: "caller", Value: "app", RateLimit: &rlsconfv3.RateLimitPolicy{Unit: rlsconfv3.RateLimitUnit_MINUTE, RequestsPerUnit: 3},
		}},
	}}}); err != nil {
		t.Fatal(err)
	}
	req := &rlsv3.RateLimitRequest{Domain: "llmedge", HitsAddend: 1}
	if _, err := lim.ShouldRateLimit(t.Context(), req, 100*time.Millisecond); err == nil {
		t.Fatal("no Redis, yet the check succeeded")
	}
	_, err := lim.ShouldRateLimit(t.Context(), req, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "retrying shortly") {
		t.Errorf("second check: %v; want Redis skipped after the first failure", err)
	}
}

// A config the module refuses is an error (the policy is NACKed), not a panic.
func TestLimiterRefusesABadConfig(t *testing.T) {
	lim := newLimiter(transport.Address{Path: "/nonexistent"}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	bad := &rlsconfv3.RateLimitConfig{Name: "llmedge-hk", Domain: "llmedge", Descriptors: []*rlsconfv3.RateLimitDescriptor{{
		Key: "llmedge", Value: "caller_minute", RateLimit: &rlsconfv3.RateLimitPolicy{Unit: rlsconfv3.RateLimitUnit_MINUTE, RequestsPerUnit: 3},
	}, {
		Key: "llmedge", Value: "caller_minute", RateLimit: &rlsconfv3.RateLimitPolicy{Unit: rlsconfv3.RateLimitUnit_MINUTE, RequestsPerUnit: 5},
	}}}
	if err := lim.setConfig("v1", bad); err == nil {
		t.Error("a duplicate descriptor was accepted")
	}
}

// The X-RateLimit headers name the limit with the least left, then each limit's policy
// (window in seconds, its name quoted as a Go string would be).
func TestRateLimitHeaders(t *testing.T) {
	st := func(perUnit, left uint32, unit rlsv3.RateLimitResponse_RateLimit_Unit, name string, reset int64) *rlsv3.RateLimitResponse_DescriptorStatus {
		return &rlsv3.RateLimitResponse_DescriptorStatus{
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: perUnit, Unit: unit, Name: name},
			LimitRemaining:     left,
			DurationUntilReset: durationpb.New(time.Duration(reset) * time.Second),
		}
	}
	h, limit, reset, _ := rateLimitHeaders([]*rlsv3.RateLimitResponse_DescriptorStatus{
		st(600, 500, rlsv3.RateLimitResponse_RateLimit_MINUTE, "", 42),
		{}, // no current limit: skipped
		st(10000, 7, rlsv3.RateLimitResponse_RateLimit_DAY, `per "day"`, 3600),
		st(50, 50, rlsv3.RateLimitResponse_RateLimit_UNKNOWN, "", 1), // no window: not in the policy
	})
	want := []Header{
		{"x-ratelimit-limit", `10000, 600;w=60, 10000;w=86400;name="per \"day\""`},
		{"x-ratelimit-remaining", "7"},
		{"x-ratelimit-reset", "3600"},
	}
	if fmt.Sprint(h) != fmt.Sprint(want) || limit != want[0].Value || reset != "3600" {
		t.Errorf("headers %v (limit %q, reset %q), want %v", h, limit, reset, want)
	}
	if h, _, _, _ := rateLimitHeaders(nil); h != nil {
		t.Errorf("no statuses: %v, want none", h)
	}
}

func BenchmarkRateLimitHeaders(b *testing.B) {
	sts := []*rlsv3.RateLimitResponse_DescriptorStatus{{
		CurrentLimit:   &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: 600, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE, Name: "demo"},
		LimitRemaining: 599, DurationUntilReset: durationpb.New(42 * time.Second),
	}}
	b.ReportAllocs()
	for b.Loop() {
		rateLimitHeaders(sts)
	}
}
