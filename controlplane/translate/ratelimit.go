package translate

import (
	"cmp"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitconfv3 "github.com/envoyproxy/go-control-plane/envoy/config/ratelimit/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Descriptors: every request sends at most one descriptor per window and scope, whatever
// the number of callers, because the caller is a descriptor value read from extauthz's
// dynamic metadata, never a header a client could set:
//
//	(llmedge=caller_<unit>, caller=<name>)
//	(llmedge=caller_upstream_<unit>, caller=<name>, upstream=<name>)
//	(llmedge=upstream_<unit>, upstream=<name>)
//
// A limit with a model adds (model=<requested model>) last and "_model" to the scope; a
// token limit adds "_tokens" (caller_model_tokens_minute), and sends its descriptor twice:
// at request time counting nothing, and when the stream is done counting the tokens used.
//
// The RateLimitConfig built below from the same model holds one entry per configured limit
// under those keys, so route actions and service config cannot drift apart.
const (
	descScope    = "llmedge"
	descCaller   = "caller"
	descUpstream = "upstream"
	descModel    = "model"

	scopeCaller         = "caller"
	scopeCallerUpstream = "caller_upstream"
	scopeUpstream       = "upstream"

	rateLimitFilterName = "envoy.filters.http.ratelimit"
	// The grpc.health.v1 service name under which envoyproxy/ratelimit reports its overall
	// health (src/server/server_impl.go); the empty name is always SERVING.
	rateLimitHealthService = "ratelimit"
)

// rateLimitFilter enforces the region's quotas after ext_authz (which names the caller).
func rateLimitFilter(r model.Region) (*hcmv3.HttpFilter, error) {
	cfg, err := toAny(&ratelimitv3.RateLimit{
		Domain:          wire.RateLimitDomain,
		Timeout:         durationpb.New(wire.RateLimitTimeout),
		FailureModeDeny: r.RateLimitFailClosed,
		RateLimitService: &ratelimitconfv3.RateLimitServiceConfig{
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: wire.RateLimitClusterName},
			}},
			TransportApiVersion: corev3.ApiVersion_V3,
		},
		EnableXRatelimitHeaders: ratelimitv3.RateLimit_DRAFT_VERSION_03,
		// Retry-After from the window's reset, on the 429 only.
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "retry-after", Value: "%RESP(X-RATELIMIT-RESET)%"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: rateLimitFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// routeRateLimits are the descriptor actions Envoy's rate-limit filter runs for one route:
// token limits only, each twice: at request time counting nothing (a spent window refuses)
// and when the stream is done counting the tokens used. Both go through the same
// ratelimit service, in that order for each request, so a caller's next request is checked
// after its previous request's charge: the overshoot stays within what the requests in
// flight use. Request limits are checked by extauthz in the call that authenticates the
// request (quotaDescriptors), so a route without token limits costs Envoy one side call.
// They go into the route's RateLimitPerRoute, never the route's own rate_limits: a token
// limit's hits_addend works only there.
func routeRateLimits(q regionQuotas, upstream string) []*routev3.RateLimit {
	var out []*routev3.RateLimit
	for _, sh := range q.shapesFor(upstream) {
		if !sh.tokens {
			continue
		}
		actions := []*routev3.RateLimit_Action{generic(descScope, sh.descriptor())}
		for _, e := range sh.entries(upstream)[1:] {
			switch e.GetSource() {
			case authzv1.Entry_CALLER:
				actions = append(actions, callerAction())
			case authzv1.Entry_MODEL:
				actions = append(actions, modelAction())
			default:
				actions = append(actions, generic(e.GetKey(), e.GetValue()))
			}
		}
		out = append(out,
			&routev3.RateLimit{Actions: actions, HitsAddend: &routev3.RateLimit_HitsAddend{Number: wrapperspb.UInt64(0)}},
			&routev3.RateLimit{Actions: actions, ApplyOnStreamDone: true, HitsAddend: &routev3.RateLimit_HitsAddend{Format: tokensUsedFormat}},
		)
	}
	return out
}

// shapesFor lists the shapes a request to upstream sends, in order.
func (q regionQuotas) shapesFor(upstream string) []shape {
	var out []shape
	for _, sh := range q.shapes {
		if sh.upstream == "" || sh.upstream == upstream {
			out = append(out, sh)
		}
	}
	return out
}

// quotaDescriptors are the descriptors extauthz sends for a request to upstream: its
// request limits, each counting one. Token limits stay with Envoy's rate-limit filter
// (routeRateLimits), whose admission check and stream-end charge share one path.
func quotaDescriptors(q regionQuotas, upstream string) []*authzv1.Descriptor {
	var out []*authzv1.Descriptor
	for _, sh := range q.shapesFor(upstream) {
		if !sh.tokens {
			out = append(out, &authzv1.Descriptor{Entries: sh.entries(upstream)})
		}
	}
	return out
}

// tokensUsedFormat is what a finished request charges to its token windows: the total
// Envoy's ai_protocol_manager extracted from the answer; with no usage reported (an
// OpenAI stream without stream_options.include_usage, a malformed answer) an estimate of
// a quarter of the bytes exchanged for a 2xx answer, and nothing for a refused or failed
// one. The typed TokenUsage is only readable through CEL (%DYNAMIC_METADATA% cannot see
// typed metadata).
const tokensUsedFormat = "%CEL(" +
	"'" + wire.TokenUsageNamespace + "' in metadata.typed_filter_metadata && " +
	"has(metadata.typed_filter_metadata['" + wire.TokenUsageNamespace + "'].total_tokens) ? " +
	"uint(metadata.typed_filter_metadata['" + wire.TokenUsageNamespace + "'].total_tokens) : " +
	"(response.code >= 200 && response.code < 300 ? uint((request.total_size + response.total_size) / 4) : uint(0))" +
	")%"

func generic(key, value string) *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{
		GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorKey: key, DescriptorValue: value},
	}}
}

// callerAction reads the caller extauthz authenticated. extauthz always sets it on the
// requests it allows, so the descriptor is never missing for a request that got this far.
func callerAction() *routev3.RateLimit_Action {
	return metadataAction(descCaller, wire.MetadataNamespace, wire.MetadataCaller)
}

// modelAction reads the requested model (json_to_metadata, or Gemini's path). A request
// naming none sends no model descriptor, so model-scoped limits do not count it.
func modelAction() *routev3.RateLimit_Action {
	return metadataAction(descModel, wire.RequestMetadataNamespace, wire.RequestMetadataModel)
}

func metadataAction(descriptor, namespace, key string) *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_Metadata{
		Metadata: &routev3.RateLimit_Action_MetaData{
			DescriptorKey: descriptor,
			MetadataKey: &metadatav3.MetadataKey{
				Key:  namespace,
				Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: key}}},
			},
			Source: routev3.RateLimit_Action_MetaData_DYNAMIC,
		},
	}}
}

// shape is one descriptor a route sends: which scope, whether it names an upstream and
// a model, which kind and window.
type shape struct {
	scope    string // scopeCaller, scopeCallerUpstream or scopeUpstream
	upstream string // the upstream counted, for the two upstream scopes
	model    bool
	tokens   bool
	unit     model.Unit
}

// descriptor is the shape's value of the top-level llmedge key, e.g. "caller_hour" or
// "caller_upstream_model_tokens_minute".
func (s shape) descriptor() string {
	d := s.scope
	if s.model {
		d += "_model"
	}
	if s.tokens {
		d += "_tokens"
	}
	return d + "_" + string(s.unit)
}

// entries are the shape's descriptor entries for a request to upstream, as the
// RateLimitConfig nests them: scope, caller, upstream, model. The caller is the one
// extauthz authenticated and the model the one the request names: never a header a
// client could set.
func (s shape) entries(upstream string) []*authzv1.Entry {
	out := []*authzv1.Entry{{Key: descScope, Value: s.descriptor()}}
	if s.scope != scopeUpstream {
		out = append(out, &authzv1.Entry{Key: descCaller, Source: authzv1.Entry_CALLER})
	}
	if s.upstream != "" {
		out = append(out, &authzv1.Entry{Key: descUpstream, Value: upstream})
	}
	if s.model {
		out = append(out, &authzv1.Entry{Key: descModel, Source: authzv1.Entry_MODEL})
	}
	return out
}

// regionQuotas records which descriptor shapes are limited in one region. It is the one
// place that decides which limits a region enforces: route actions, the RateLimitConfig and
// /status (Quotas) all read it.
type regionQuotas struct {
	shapes    []shape        // in the order routes send them
	callers   []model.Caller // those with limits on something the region serves
	upstreams []model.Upstream
	served    map[string]bool
}

// applies reports whether a caller's limit counts in the region: a caller-wide limit does,
// a limit on one upstream only where that upstream is served.
func (q regionQuotas) applies(l model.Limit) bool {
	return l.Upstream == "" || q.served[l.Upstream]
}

// Quota is one limit a region's ratelimit enforces, with the scope it counts in.
type Quota struct {
	// Caller is the caller the limit belongs to; "" for an upstream's own limit.
	Caller string
	// Upstream is the upstream counted: the one a caller's limit names ("" for a
	// caller-wide limit), or the upstream whose own limit it is.
	Upstream string
	Limit    model.Limit
}

// Quotas lists the limits in force in a region, callers first, as the region's ratelimit
// enforces them; none when the region has no rate-limit service.
func Quotas(cfg *model.Config, region string) []Quota {
	r, ok := cfg.Region(region)
	if !ok || r.RateLimit.IsZero() {
		return nil
	}
	q := quotasFor(cfg, r)
	var out []Quota
	for _, c := range q.callers {
		for _, l := range c.Limits {
			if q.applies(l) {
				out = append(out, Quota{Caller: c.Name, Upstream: l.Upstream, Limit: l})
			}
		}
	}
	for _, u := range q.upstreams {
		for _, l := range u.Limits {
			out = append(out, Quota{Upstream: u.Name, Limit: l})
		}
	}
	return out
}

func quotasFor(cfg *model.Config, r model.Region) regionQuotas {
	q := regionQuotas{served: map[string]bool{}}
	seen := map[shape]bool{}
	var shapes []shape
	add := func(sh shape) {
		if !seen[sh] {
			seen[sh] = true
			shapes = append(shapes, sh)
		}
	}
	for _, name := range r.AllUpstreams() {
		q.served[name] = true
		u, _ := cfg.Upstream(name)
		if len(u.Limits) > 0 {
			q.upstreams = append(q.upstreams, u)
		}
		for _, l := range u.Limits {
			add(shape{scope: scopeUpstream, upstream: name, model: l.Model != "", tokens: l.Tokens > 0, unit: l.Unit})
		}
	}
	for _, c := range cfg.Callers {
		uses := false
		for _, u := range c.Upstreams {
			uses = uses || q.served[u]
		}
		if !uses || len(c.Limits) == 0 {
			continue
		}
		q.callers = append(q.callers, c)
		for _, l := range c.Limits {
			sh := shape{scope: scopeCaller, model: l.Model != "", tokens: l.Tokens > 0, unit: l.Unit}
			switch {
			case !q.applies(l):
				continue
			case l.Upstream != "":
				sh.scope, sh.upstream = scopeCallerUpstream, l.Upstream
			}
			add(sh)
		}
	}
	// Windows in order, then callers before caller+upstream before upstream, requests
	// before tokens: the order routes send descriptors in and golden files show.
	scopeOrder := map[string]int{scopeCaller: 0, scopeCallerUpstream: 1, scopeUpstream: 2}
	slices.SortStableFunc(shapes, func(a, b shape) int {
		return cmp.Or(
			cmp.Compare(slices.Index(model.Units, a.unit), slices.Index(model.Units, b.unit)),
			cmp.Compare(scopeOrder[a.scope], scopeOrder[b.scope]),
			cmp.Compare(a.upstream, b.upstream),
			boolCompare(a.model, b.model),
			boolCompare(a.tokens, b.tokens),
		)
	})
	q.shapes = shapes
	return q
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	default:
		return 1
	}
}

var rlsUnits = map[model.Unit]rlsconfv3.RateLimitUnit{
	model.Second: rlsconfv3.RateLimitUnit_SECOND,
	model.Minute: rlsconfv3.RateLimitUnit_MINUTE,
	model.Hour:   rlsconfv3.RateLimitUnit_HOUR,
	model.Day:    rlsconfv3.RateLimitUnit_DAY,
}

// rateLimitConfig is what the region's envoyproxy/ratelimit enforces for those descriptors:
// one tree per top-level descriptor value, caller, then upstream, then model, as the
// route actions send them.
func rateLimitConfig(region string, q regionQuotas) (*rlsconfv3.RateLimitConfig, error) {
	top := map[string]*rlsconfv3.RateLimitDescriptor{}
	for _, sh := range q.shapes {
		top[sh.descriptor()] = &rlsconfv3.RateLimitDescriptor{Key: descScope, Value: sh.descriptor()}
	}
	child := func(parent *rlsconfv3.RateLimitDescriptor, key, value string) *rlsconfv3.RateLimitDescriptor {
		for _, d := range parent.Descriptors {
			if d.Key == key && d.Value == value {
				return d
			}
		}
		d := &rlsconfv3.RateLimitDescriptor{Key: key, Value: value}
		parent.Descriptors = append(parent.Descriptors, d)
		return d
	}
	place := func(caller, upstream string, l model.Limit) {
		sh := shape{scope: scopeUpstream, upstream: upstream, model: l.Model != "", tokens: l.Tokens > 0, unit: l.Unit}
		if caller != "" {
			sh.scope = scopeCaller
			if upstream != "" {
				sh.scope = scopeCallerUpstream
			}
		}
		d := top[sh.descriptor()]
		if caller != "" {
			d = child(d, descCaller, caller)
		}
		if upstream != "" {
			d = child(d, descUpstream, upstream)
		}
		if l.Model != "" {
			d = child(d, descModel, l.Model)
		}
		d.RateLimit = &rlsconfv3.RateLimitPolicy{Name: l.Name, Unit: rlsUnits[l.Unit], RequestsPerUnit: l.Amount()}
		d.ShadowMode = l.Shadow
	}
	for _, c := range q.callers {
		for _, l := range c.Limits {
			if q.applies(l) {
				place(c.Name, l.Upstream, l)
			}
		}
	}
	for _, u := range q.upstreams {
		for _, l := range u.Limits {
			place("", u.Name, l)
		}
	}
	rc := &rlsconfv3.RateLimitConfig{Name: "llmedge-" + region, Domain: wire.RateLimitDomain}
	for _, sh := range q.shapes {
		if d := top[sh.descriptor()]; d != nil {
			rc.Descriptors = append(rc.Descriptors, d)
			delete(top, sh.descriptor())
		}
	}
	if err := checkRateLimitConfig(rc); err != nil {
		return nil, err
	}
	return rc, nil
}

// rateLimitPerRoute carries a route's descriptor actions (routeRateLimits); nil when the
// route has none.
func rateLimitPerRoute(limits []*routev3.RateLimit) (*anypb.Any, error) {
	if len(limits) == 0 {
		return nil, nil
	}
	return toAny(&ratelimitv3.RateLimitPerRoute{RateLimits: limits})
}

// checkRateLimitConfig does by hand what the ratelimit module's missing validate code would:
// envoyproxy/ratelimit rejects (or worse, ignores) a config with an empty name, domain or
// descriptor key, or a limit without a unit.
func checkRateLimitConfig(rc *rlsconfv3.RateLimitConfig) error {
	if rc.GetName() == "" || rc.GetDomain() == "" {
		return fmt.Errorf("rate limit config needs a name and a domain")
	}
	var walk func(path string, ds []*rlsconfv3.RateLimitDescriptor) error
	walk = func(path string, ds []*rlsconfv3.RateLimitDescriptor) error {
		for _, d := range ds {
			p := path + "/" + d.GetKey() + "=" + d.GetValue()
			if d.GetKey() == "" {
				return fmt.Errorf("rate limit descriptor %s has no key", p)
			}
			if rl := d.GetRateLimit(); rl != nil && !rl.GetUnlimited() &&
				(rl.GetUnit() == rlsconfv3.RateLimitUnit_UNKNOWN || rl.GetRequestsPerUnit() == 0) {
				return fmt.Errorf("rate limit descriptor %s needs a unit and requests_per_unit", p)
			}
			if err := walk(p, d.GetDescriptors()); err != nil {
				return err
			}
		}
		return nil
	}
	return walk("", rc.GetDescriptors())
}

// rateLimitCluster reaches the region's rate-limit service over HTTP/2 (gRPC). Its health
// check follows envoyproxy/ratelimit's own verdict, which turns NOT_SERVING when the
// service has lost Redis (REDIS_HEALTH_CHECK_ACTIVE_CONNECTION, set by internal/stack),
// has no limits loaded, or is shutting down: Envoy then stops calling it, so a fail-open
// region answers at normal speed instead of waiting wire.RateLimitTimeout on every request,
// and a fail-closed one refuses at once.
func rateLimitCluster(r model.Region, secrets secretSet) (*clusterv3.Cluster, error) {
	c, err := grpcCluster(wire.RateLimitClusterName, r.RateLimit, r.InternalTLS, secrets)
	if err != nil {
		return nil, err
	}
	withGRPCHealthCheck(c, rateLimitHealthService)
	return c, nil
}
