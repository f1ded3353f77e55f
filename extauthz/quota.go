package extauthz

import (
	"context"
	"fmt"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Request-time quotas: an allowed request's descriptors go to envoyproxy/ratelimit's
// limiter, in process (limiter.go), during the ext_authz call Envoy already makes, instead
// of in a second side call of Envoy's rate-limit filter. The limits (served by the control
// plane), Redis and the counters are the region's ratelimit's own; Envoy's filter keeps
// the token limits (checked at request time, charged when the stream is done).

// quotaResult is what the rate-limit service said about one request.
type quotaResult int

const (
	quotaNone        quotaResult = iota // no descriptor applies: the service was not asked
	quotaOK                             // within every limit
	quotaOver                           // some limit is spent
	quotaUnavailable                    // no answer (error, timeout, or reported unhealthy)
)

func (r quotaResult) String() string {
	return [...]string{"none", "ok", "over_limit", "unavailable"}[r]
}

// quotaAnswer is a quotaResult with the X-RateLimit headers Envoy's rate-limit filter
// would have added (draft 03).
type quotaAnswer struct {
	result  quotaResult
	headers []Header
	// limit and reset are the x-ratelimit-limit and x-ratelimit-reset values, for the
	// refusal's message.
	limit, reset string
	// remaining and resetIn are the x-ratelimit-remaining and x-ratelimit-reset values as
	// numbers (headers set): a lending's later uses count down from them.
	remaining uint64
	resetIn   int64
}

// quotas is one policy's rate-limit settings.
type quotas struct {
	domain     string
	failClosed bool
	byUpstream map[string][]*authzv1.Descriptor
	lim        rateLimiter // nil: extauthz has no Redis (--redis), so every check is unavailable
}

// rateLimiter decides quotas: the in-process limiter (limiter.go), or a fake in tests.
type rateLimiter interface {
	setConfig(version string, rc *rlsconfv3.RateLimitConfig) error
	ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest, timeout time.Duration) (*rlsv3.RateLimitResponse, error)
	// answerLocally answers without waiting on Redis (a lease, lease.go), if it can;
	// slot, if not nil, keeps what it looked up for req being asked again (a Replay's).
	// lend, if not nil, asks it to lend hits to req's later replays (lease.go, lending).
	answerLocally(req *rlsv3.RateLimitRequest, slot *planSlot, lend *lending) (*rlsv3.RateLimitResponse, bool)
	// giveBackLent returns n unused hits of a lending.
	giveBackLent(ld *lending, n uint64)
}

// newQuotas reads a policy's rate-limit settings and hands its limits to lim. A nil p (no
// rate limits in the region) gives nil.
func newQuotas(version string, p *authzv1.RateLimit, lim rateLimiter) (*quotas, error) {
	if p == nil {
		return nil, nil
	}
	q := &quotas{domain: p.GetDomain(), failClosed: p.GetFailClosed(), byUpstream: map[string][]*authzv1.Descriptor{}, lim: lim}
	for _, u := range p.GetUpstreams() {
		q.byUpstream[u.GetUpstream()] = u.GetDescriptors()
	}
	rc := &rlsconfv3.RateLimitConfig{}
	if err := p.GetConfig().UnmarshalTo(rc); err != nil {
		return nil, fmt.Errorf("rate_limit.config: %w", err)
	}
	if lim != nil {
		if err := lim.setConfig(version, rc); err != nil {
			return nil, err
		}
	}
	return q, nil
}

// request is the rate-limit request for a request to upstream by caller, naming model
// ("" if the request names none); nil when no limit applies, and the service need not be
// asked.
func (q *quotas) request(caller, upstream, model string) *rlsv3.RateLimitRequest {
	templates := q.byUpstream[upstream]
	if len(templates) == 0 {
		return nil
	}
	req := &rlsv3.RateLimitRequest{Domain: q.domain, HitsAddend: 1}
	for _, t := range templates {
		d := &rlcommonv3.RateLimitDescriptor{}
		for _, e := range t.GetEntries() {
			v := e.GetValue()
			switch e.GetSource() {
			case authzv1.Entry_CALLER:
				v = caller
			case authzv1.Entry_MODEL:
				v = model
			}
			if v == "" { // Envoy sends no descriptor for an absent value either
				d = nil
				break
			}
			d.Entries = append(d.Entries, &rlcommonv3.RateLimitDescriptor_Entry{Key: e.GetKey(), Value: v})
		}
		if d == nil {
			continue
		}
		req.Descriptors = append(req.Descriptors, d)
	}
	if len(req.Descriptors) == 0 {
		return nil
	}
	return req
}

// ask puts a request to the rate-limit service.
func (q *quotas) ask(ctx context.Context, req *rlsv3.RateLimitRequest) quotaAnswer {
	if q.lim == nil {
		return quotaAnswer{result: quotaUnavailable}
	}
	resp, err := q.lim.ShouldRateLimit(ctx, req, wire.RateLimitTimeout)
	if err != nil {
		return quotaAnswer{result: quotaUnavailable}
	}
	return answerOf(resp)
}

// answerLocally is ask's answer when this edge's leases can give it without Redis; slot
// as the limiter's.
func (q *quotas) answerLocally(req *rlsv3.RateLimitRequest, slot *planSlot, lend *lending) (quotaAnswer, bool) {
	if q.lim == nil {
		return quotaAnswer{}, false
	}
	resp, ok := q.lim.answerLocally(req, slot, lend)
	if !ok {
		return quotaAnswer{}, false
	}
	return answerOf(resp), true
}

func answerOf(resp *rlsv3.RateLimitResponse) quotaAnswer {
	a := quotaAnswer{result: quotaOK}
	if resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
		a.result = quotaOver
	}
	var least *rlsv3.RateLimitResponse_DescriptorStatus
	a.headers, a.limit, a.reset, least = rateLimitHeaders(resp.GetStatuses())
	if least != nil {
		a.remaining, a.resetIn = uint64(least.GetLimitRemaining()), least.GetDurationUntilReset().GetSeconds()
	}
	return a
}

// windowSeconds are the windows of the units llmedge's limits use.
var windowSeconds = map[rlsv3.RateLimitResponse_RateLimit_Unit]int{
	rlsv3.RateLimitResponse_RateLimit_SECOND: 1,
	rlsv3.RateLimitResponse_RateLimit_MINUTE: 60,
	rlsv3.RateLimitResponse_RateLimit_HOUR:   3600,
	rlsv3.RateLimitResponse_RateLimit_DAY:    86400,
}

// rateLimitHeaders are the X-RateLimit headers of draft 03, as Envoy's rate-limit filter
// writes them: the limit with the least remaining, then every limit's quota policy
// ("10, 10;w=60;name=\"callers.a.limits[0]\", 1000;w=3600"), its remaining and the seconds
// until its window resets. least is the status they report (nil: no headers).
func rateLimitHeaders(statuses []*rlsv3.RateLimitResponse_DescriptorStatus) (h []Header, limit, reset string, least *rlsv3.RateLimitResponse_DescriptorStatus) {
	var policy []byte // appended to, not formatted: this runs on every request under a limit
	for _, s := range statuses {
		cl := s.GetCurrentLimit()
		if cl == nil {
			continue
		}
		if least == nil || s.GetLimitRemaining() < least.GetLimitRemaining() {
			least = s
		}
		if w := windowSeconds[cl.GetUnit()]; w > 0 {
			policy = append(policy, ", "...)
			policy = strconv.AppendUint(policy, uint64(cl.GetRequestsPerUnit()), 10)
			policy = append(policy, ";w="...)
			policy = strconv.AppendInt(policy, int64(w), 10)
			if cl.GetName() != "" {
				policy = append(policy, ";name="...)
				policy = strconv.AppendQuote(policy, cl.GetName())
			}
		}
	}
	if least == nil {
		return nil, "", "", nil
	}
	b := strconv.AppendUint(make([]byte, 0, 10+len(policy)), uint64(least.GetCurrentLimit().GetRequestsPerUnit()), 10)
	limit = string(append(b, policy...))
	reset = strconv.FormatInt(least.GetDurationUntilReset().GetSeconds(), 10)
	return []Header{
		{"x-ratelimit-limit", limit},
		{"x-ratelimit-remaining", strconv.FormatUint(uint64(least.GetLimitRemaining()), 10)},
		{"x-ratelimit-reset", reset},
	}, limit, reset, least
}

// requestedModel is the model json_to_metadata (or Gemini's path) recorded before ext_authz.
func requestedModel(md *corev3.Metadata) string {
	s := md.GetFilterMetadata()[wire.RequestMetadataNamespace]
	if s == nil {
		return ""
	}
	v, ok := s.GetFields()[wire.RequestMetadataModel]
	if !ok {
		return ""
	}
	if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return sv.StringValue
	}
	return ""
}
