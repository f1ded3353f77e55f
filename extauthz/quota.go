package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Request-time quotas: an allowed request's descriptors go to the region's
// envoyproxy/ratelimit from here, in the ext_authz call Envoy already makes, instead of
// from a second side call of Envoy's rate-limit filter. The service, its limits (served by
// the control plane), Redis and the counters are the same; Envoy's filter is left with
// charging the tokens a request used when its stream is done.

// rateLimitHealthService is the grpc.health.v1 service under which envoyproxy/ratelimit
// reports its overall health; it turns NOT_SERVING once Redis is gone.
const rateLimitHealthService = "ratelimit"

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
	headers []*corev3.HeaderValueOption
	// limit and reset are the x-ratelimit-limit and x-ratelimit-reset values, for the
	// refusal's message.
	limit, reset string
}

// quotas is one policy's rate-limit settings.
type quotas struct {
	domain     string
	failClosed bool
	byUpstream map[string][]*authzv1.Descriptor
	svc        *rlConn
}

// rlConn is a connection to the region's rate-limit service, kept across policies that
// name the same address.
type rlConn struct {
	address string
	conn    *grpc.ClientConn
	client  rlsv3.RateLimitServiceClient
	// serving is the service's own health verdict, watched over the same connection: while
	// it reports NOT_SERVING (Redis gone) requests get the failure mode at once instead of
	// waiting for an error or the timeout.
	serving atomic.Bool
	stop    context.CancelFunc
}

// newQuotas reads a policy's rate-limit settings, reusing old's connection when the
// address is unchanged. A nil p (no rate-limit service in the region) gives nil.
func newQuotas(p *authzv1.RateLimit, old *quotas, tlsFiles transport.Files, log *slog.Logger) (*quotas, error) {
	if p == nil || p.GetAddress() == "" {
		return nil, nil
	}
	q := &quotas{domain: p.GetDomain(), failClosed: p.GetFailClosed(), byUpstream: map[string][]*authzv1.Descriptor{}}
	for _, u := range p.GetUpstreams() {
		q.byUpstream[u.GetUpstream()] = u.GetDescriptors()
	}
	if old != nil && old.svc.address == p.GetAddress() {
		q.svc = old.svc
		return q, nil
	}
	addr, err := transport.Parse(p.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("rate_limit.address %q: %w", p.GetAddress(), err)
	}
	target, creds, err := transport.GRPCClient(addr, tlsFiles, log)
	if err != nil {
		return nil, fmt.Errorf("rate-limit service %s: %w", p.GetAddress(), err)
	}
	// Reconnect within a second of the service coming back (gRPC's default backoff grows
	// to two minutes); until then requests get the failure mode at once.
	conn, err := grpc.NewClient(target, creds, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: time.Second,
	}))
	if err != nil {
		return nil, fmt.Errorf("rate-limit service %s: %w", p.GetAddress(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &rlConn{address: p.GetAddress(), conn: conn, client: rlsv3.NewRateLimitServiceClient(conn), stop: cancel}
	c.serving.Store(true)
	conn.Connect()
	go c.watch(ctx, healthpb.NewHealthClient(conn), log.With("ratelimit", p.GetAddress()))
	q.svc = c
	return q, nil
}

// close ends the connection and its health watch.
func (c *rlConn) close() {
	c.stop()
	_ = c.conn.Close()
}

func (c *rlConn) watch(ctx context.Context, hc healthpb.HealthClient, log *slog.Logger) {
	for ctx.Err() == nil {
		if stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: rateLimitHealthService}); err == nil {
			for {
				resp, err := stream.Recv()
				if err != nil {
					break
				}
				ok := resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
				if c.serving.Swap(ok) != ok {
					log.Warn("rate-limit service health changed", "serving", ok)
				}
			}
		}
		// A broken watch says nothing about the service: calls still find out for
		// themselves. Watch again after a pause.
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// check asks the service about a request to upstream by caller, naming model ("" if the
// request names none).
func (q *quotas) check(ctx context.Context, caller, upstream, model string) quotaAnswer {
	templates := q.byUpstream[upstream]
	if len(templates) == 0 {
		return quotaAnswer{result: quotaNone}
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
		if t.GetCheckOnly() {
			d.HitsAddend = wrapperspb.UInt64(0)
		}
		req.Descriptors = append(req.Descriptors, d)
	}
	if len(req.Descriptors) == 0 {
		return quotaAnswer{result: quotaNone}
	}
	if !q.svc.serving.Load() {
		return quotaAnswer{result: quotaUnavailable}
	}
	ctx, cancel := context.WithTimeout(ctx, wire.RateLimitTimeout)
	defer cancel()
	resp, err := q.svc.client.ShouldRateLimit(ctx, req)
	if err != nil {
		return quotaAnswer{result: quotaUnavailable}
	}
	a := quotaAnswer{result: quotaOK}
	if resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
		a.result = quotaOver
	}
	a.headers, a.limit, a.reset = rateLimitHeaders(resp.GetStatuses())
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
// until its window resets.
func rateLimitHeaders(statuses []*rlsv3.RateLimitResponse_DescriptorStatus) (h []*corev3.HeaderValueOption, limit, reset string) {
	var least *rlsv3.RateLimitResponse_DescriptorStatus
	var policy strings.Builder
	for _, s := range statuses {
		cl := s.GetCurrentLimit()
		if cl == nil {
			continue
		}
		if least == nil || s.GetLimitRemaining() < least.GetLimitRemaining() {
			least = s
		}
		if w := windowSeconds[cl.GetUnit()]; w > 0 {
			fmt.Fprintf(&policy, ", %d;w=%d", cl.GetRequestsPerUnit(), w)
			if cl.GetName() != "" {
				fmt.Fprintf(&policy, ";name=%q", cl.GetName())
			}
		}
	}
	if least == nil {
		return nil, "", ""
	}
	limit = strconv.FormatUint(uint64(least.GetCurrentLimit().GetRequestsPerUnit()), 10) + policy.String()
	reset = strconv.FormatInt(least.GetDurationUntilReset().GetSeconds(), 10)
	set := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	return []*corev3.HeaderValueOption{
		set("x-ratelimit-limit", limit),
		set("x-ratelimit-remaining", strconv.FormatUint(uint64(least.GetLimitRemaining()), 10)),
		set("x-ratelimit-reset", reset),
	}, limit, reset
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
