package translate

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitconfv3 "github.com/envoyproxy/go-control-plane/envoy/config/ratelimit/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

// Descriptors: every request sends at most one descriptor per window and scope, whatever
// the number of callers, because the caller is a descriptor value read from extauthz's
// dynamic metadata, never a header a client could set:
//
//	(llmedge=caller_<unit>, caller=<name>)
//	(llmedge=caller_upstream_<unit>, caller=<name>, upstream=<name>)
//	(llmedge=upstream_<unit>, upstream=<name>)
//
// The RateLimitConfig built below from the same model holds one entry per configured limit
// under those keys, so route actions and service config cannot drift apart.
const (
	descScope    = "llmedge"
	descCaller   = "caller"
	descUpstream = "upstream"

	scopeCaller         = "caller"
	scopeCallerUpstream = "caller_upstream"
	scopeUpstream       = "upstream"

	rateLimitFilterName = "envoy.filters.http.ratelimit"
	// The service sits next to Envoy; a decision is a Redis round trip. Past 100 ms the
	// region's failure mode decides instead of making the caller wait.
	rateLimitTimeout = 100 * time.Millisecond
	// The grpc.health.v1 service name under which envoyproxy/ratelimit reports its overall
	// health (src/server/server_impl.go); the empty name is always SERVING.
	rateLimitHealthService = "ratelimit"
)

// rateLimitFilter enforces the region's quotas after ext_authz (which names the caller).
func rateLimitFilter(r model.Region) (*hcmv3.HttpFilter, error) {
	cfg, err := toAny(&ratelimitv3.RateLimit{
		Domain:          wire.RateLimitDomain,
		Timeout:         durationpb.New(rateLimitTimeout),
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

// routeRateLimits are the descriptor actions of one route: only the windows some limit in
// the region uses, so a config without quotas sends nothing.
func routeRateLimits(q regionQuotas, upstream string) []*routev3.RateLimit {
	var out []*routev3.RateLimit
	for _, unit := range model.Units {
		if q.caller[unit] {
			out = append(out, &routev3.RateLimit{Actions: []*routev3.RateLimit_Action{
				generic(descScope, scopeCaller+"_"+string(unit)), callerAction(),
			}})
		}
		if q.callerUpstream[upstream][unit] {
			out = append(out, &routev3.RateLimit{Actions: []*routev3.RateLimit_Action{
				generic(descScope, scopeCallerUpstream+"_"+string(unit)), callerAction(), generic(descUpstream, upstream),
			}})
		}
		if q.upstream[upstream][unit] {
			out = append(out, &routev3.RateLimit{Actions: []*routev3.RateLimit_Action{
				generic(descScope, scopeUpstream+"_"+string(unit)), generic(descUpstream, upstream),
			}})
		}
	}
	return out
}

func generic(key, value string) *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{
		GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorKey: key, DescriptorValue: value},
	}}
}

// callerAction reads the caller extauthz authenticated. extauthz always sets it on the
// requests it allows, so the descriptor is never missing for a request that got this far.
func callerAction() *routev3.RateLimit_Action {
	return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_Metadata{
		Metadata: &routev3.RateLimit_Action_MetaData{
			DescriptorKey: descCaller,
			MetadataKey: &metadatav3.MetadataKey{
				Key:  wire.MetadataNamespace,
				Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: wire.MetadataCaller}}},
			},
			Source: routev3.RateLimit_Action_MetaData_DYNAMIC,
		},
	}}
}

// regionQuotas records which windows are limited, per scope, in one region. It is the one
// place that decides which limits a region enforces: route actions, the RateLimitConfig and
// /status (Quotas) all read it.
type regionQuotas struct {
	caller         map[model.Unit]bool
	callerUpstream map[string]map[model.Unit]bool
	upstream       map[string]map[model.Unit]bool
	callers        []model.Caller // those with limits on something the region serves
	upstreams      []model.Upstream
	served         map[string]bool
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
	q := regionQuotas{caller: map[model.Unit]bool{}, callerUpstream: map[string]map[model.Unit]bool{}, upstream: map[string]map[model.Unit]bool{}}
	served := map[string]bool{}
	q.served = served
	for _, name := range r.AllUpstreams() {
		served[name] = true
		u, _ := cfg.Upstream(name)
		if len(u.Limits) > 0 {
			q.upstreams = append(q.upstreams, u)
		}
		for _, l := range u.Limits {
			mark(q.upstream, name, l.Unit)
		}
	}
	for _, c := range cfg.Callers {
		uses := false
		for _, u := range c.Upstreams {
			uses = uses || served[u]
		}
		if !uses || len(c.Limits) == 0 {
			continue
		}
		q.callers = append(q.callers, c)
		for _, l := range c.Limits {
			switch {
			case !q.applies(l):
			case l.Upstream == "":
				q.caller[l.Unit] = true
			default:
				mark(q.callerUpstream, l.Upstream, l.Unit)
			}
		}
	}
	return q
}

func mark(m map[string]map[model.Unit]bool, k string, u model.Unit) {
	if m[k] == nil {
		m[k] = map[model.Unit]bool{}
	}
	m[k][u] = true
}

var rlsUnits = map[model.Unit]rlsconfv3.RateLimitUnit{
	model.Second: rlsconfv3.RateLimitUnit_SECOND,
	model.Minute: rlsconfv3.RateLimitUnit_MINUTE,
	model.Hour:   rlsconfv3.RateLimitUnit_HOUR,
	model.Day:    rlsconfv3.RateLimitUnit_DAY,
}

// rateLimitConfig is what the region's envoyproxy/ratelimit enforces for those descriptors.
func rateLimitConfig(region string, q regionQuotas) (*rlsconfv3.RateLimitConfig, error) {
	top := map[string]*rlsconfv3.RateLimitDescriptor{}
	var order []string
	scope := func(name string) *rlsconfv3.RateLimitDescriptor {
		if d, ok := top[name]; ok {
			return d
		}
		d := &rlsconfv3.RateLimitDescriptor{Key: descScope, Value: name}
		top[name] = d
		order = append(order, name)
		return d
	}
	policy := func(l model.Limit) *rlsconfv3.RateLimitPolicy {
		return &rlsconfv3.RateLimitPolicy{Name: l.Name, Unit: rlsUnits[l.Unit], RequestsPerUnit: l.Requests}
	}
	for _, unit := range model.Units {
		for _, c := range q.callers {
			var scoped []*rlsconfv3.RateLimitDescriptor
			for _, l := range c.Limits {
				if l.Unit != unit || !q.applies(l) {
					continue
				}
				if l.Upstream == "" {
					d := scope(scopeCaller + "_" + string(unit))
					d.Descriptors = append(d.Descriptors, &rlsconfv3.RateLimitDescriptor{
						Key: descCaller, Value: c.Name, RateLimit: policy(l), ShadowMode: l.Shadow,
					})
				} else {
					scoped = append(scoped, &rlsconfv3.RateLimitDescriptor{
						Key: descUpstream, Value: l.Upstream, RateLimit: policy(l), ShadowMode: l.Shadow,
					})
				}
			}
			if len(scoped) > 0 {
				d := scope(scopeCallerUpstream + "_" + string(unit))
				d.Descriptors = append(d.Descriptors, &rlsconfv3.RateLimitDescriptor{Key: descCaller, Value: c.Name, Descriptors: scoped})
			}
		}
		for _, u := range q.upstreams {
			for _, l := range u.Limits {
				if l.Unit == unit {
					d := scope(scopeUpstream + "_" + string(unit))
					d.Descriptors = append(d.Descriptors, &rlsconfv3.RateLimitDescriptor{
						Key: descUpstream, Value: u.Name, RateLimit: policy(l), ShadowMode: l.Shadow,
					})
				}
			}
		}
	}
	rc := &rlsconfv3.RateLimitConfig{Name: "llmedge-" + region, Domain: wire.RateLimitDomain}
	for _, name := range order {
		rc.Descriptors = append(rc.Descriptors, top[name])
	}
	if err := checkRateLimitConfig(rc); err != nil {
		return nil, err
	}
	return rc, nil
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
// region answers at normal speed instead of waiting rateLimitTimeout on every request,
// and a fail-closed one refuses at once.
func rateLimitCluster(r model.Region, secrets secretSet) (*clusterv3.Cluster, error) {
	c, err := grpcCluster(wire.RateLimitClusterName, r.RateLimit, r.InternalTLS, secrets)
	if err != nil {
		return nil, err
	}
	withGRPCHealthCheck(c, rateLimitHealthService)
	return c, nil
}
