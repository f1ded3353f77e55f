package translate

import (
	"regexp"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

// retryBodyBufferLimit is how much of a request body Envoy keeps to re-send it. A body
// larger than this still goes upstream, but without retries (the cluster's
// retry_or_shadow_abandoned counter rises): LLM requests with long contexts or images
// reach hundreds of KiB, so the listener's 32 KiB would make most of them unretryable.
const retryBodyBufferLimit = 1 << 20

// routeConfig is one virtual host matching any host, with the routes in the order of the
// model, which is the order Envoy must try them. A route limited to hosts gets an :authority matcher per host instead of a
// virtual host per host: otherwise every route without hosts would be copied into every
// host's virtual host, multiplying the config (1,000 routes and 16 hosts made 15,400).
func routeConfig(r model.Region, routes []model.Route, cfg *model.Config, limits func(upstream string) []*routev3.RateLimit, memo *regionMemo) (*routev3.RouteConfiguration, error) {
	type entry struct {
		rt   model.Route
		host string // "" for any host
	}
	var entries []entry
	for _, rt := range routes {
		if len(rt.Hosts) == 0 {
			entries = append(entries, entry{rt: rt})
		}
		for _, h := range rt.Hosts {
			entries = append(entries, entry{rt: rt, host: h})
		}
	}
	// What routes of one upstream share, computed once per upstream.
	type shared struct {
		u      model.Upstream
		limits []*routev3.RateLimit
		scope  []byte
	}
	byUpstream := map[string]*shared{}
	// No sorting here: routes arrive in the order Envoy must try them, including a route
	// for named hosts before one for any host at equal specificity (config.SortRoutes owns
	// that order), and each route's hosts stay together in that place.
	// Each try carries its number in x-envoy-attempt-count for the key failover filter
	// (keyfailover.go), which removes it before the request leaves.
	vh := &routev3.VirtualHost{Name: "any", Domains: []string{"*"}, IncludeRequestAttemptCount: true}
	vh.Routes = make([]*routev3.Route, 0, len(entries))
	memo.reserve(len(entries))
	for _, e := range entries {
		sh, ok := byUpstream[e.rt.Upstream]
		if !ok {
			u, _ := cfg.Upstream(e.rt.Upstream)
			sh = &shared{u: u, limits: limits(u.Name)}
			sh.scope = memo.routeScope(r, sh.u, sh.limits)
			byUpstream[e.rt.Upstream] = sh
		}
		rr, err := memo.route(sh.scope, r, e.rt, e.host, sh.u, sh.limits)
		if err != nil {
			return nil, err
		}
		vh.Routes = append(vh.Routes, rr)
	}
	return &routev3.RouteConfiguration{
		Name:         RouteConfigName(r.Name),
		VirtualHosts: []*routev3.VirtualHost{vh},
	}, nil
}

// envoyRoute is one entry of the region's route table: rt for one of its hosts ("" for
// any host), pointed at the region's peers when it forwards the upstream. Cache memoises
// it, so it must depend on its arguments alone.
func envoyRoute(r model.Region, rt model.Route, host string, u model.Upstream, limits []*routev3.RateLimit) (*routev3.Route, error) {
	rr, err := route(r, rt, u, limits)
	if err != nil {
		return nil, err
	}
	if host != "" {
		rr.Match.Headers = append([]*routev3.HeaderMatcher{authorityMatcher(host)}, rr.Match.Headers...)
	}
	if err := forwardRoute(r, rr); err != nil {
		return nil, err
	}
	return rr, nil
}

// authorityMatcher matches the request's host (the listener strips any port from it);
// "*.example.com" matches any subdomain.
func authorityMatcher(host string) *routev3.HeaderMatcher {
	sm := &matcherv3.StringMatcher{IgnoreCase: true, MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}}
	if suffix, ok := strings.CutPrefix(host, "*"); ok {
		sm.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: suffix}
	}
	return &routev3.HeaderMatcher{Name: ":authority", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}}
}

func route(r model.Region, rt model.Route, u model.Upstream, limits []*routev3.RateLimit) (*routev3.Route, error) {
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(u.Name)},
		HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{
			HostRewriteLiteral: u.Authority,
		},
		// No total timeout: Envoy's default 15 s would cut every long streamed answer off.
		// The wait for response headers is bounded per attempt (per_try_timeout, which stops
		// once headers arrive) and a stream must keep making progress (idle_timeout).
		Timeout:     durationpb.New(0),
		IdleTimeout: durationpb.New(u.StreamIdleTimeout),
		RetryPolicy: retryPolicy(u),
	}
	match := &routev3.RouteMatch{}
	switch {
	case rt.Path != "":
		match.PathSpecifier = &routev3.RouteMatch_Path{Path: rt.Path}
		if rt.Rewrite != "" {
			action.PrefixRewrite = rt.Rewrite
		}
	case strings.HasSuffix(rt.Prefix, "/"):
		match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: rt.Prefix}
		if rt.Rewrite != "" {
			// Both end in "/" so /p/x becomes /r/x, never /rx.
			action.PrefixRewrite = strings.TrimSuffix(rt.Rewrite, "/") + "/"
		}
	default:
		// "/openai" matches /openai and /openai/..., never /openaix.
		match.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: rt.Prefix}
		if rt.Rewrite != "" {
			action.RegexRewrite = separatedRewrite(rt.Prefix, rt.Rewrite)
		}
	}
	for _, h := range rt.Headers {
		hm := &routev3.HeaderMatcher{Name: h.Name}
		switch {
		case h.Present:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		case h.Prefix != "":
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h.Prefix},
			}}
		default:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h.Exact},
			}}
		}
		match.Headers = append(match.Headers, hm)
	}
	perFilter := map[string]*anypb.Any{}
	if err := addPerRoute(perFilter, rt, limits); err != nil {
		return nil, err
	}
	out := &routev3.Route{
		Name:   rt.Name,
		Match:  match,
		Action: &routev3.Route_Route{Route: action},
		// The API names the error shape of the route's local replies (localReplies).
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			routeMetadataNamespace: {Fields: map[string]*structpb.Value{routeMetadataAPI: structpb.NewStringValue(string(u.API))}},
		}},
		RequestHeadersToAdd:  routeHeadersToAdd(u),
		TypedPerFilterConfig: perFilter,
	}
	if u.Retries.Attempts > 1 {
		out.RequestBodyBufferLimit = wrapperspb.UInt64(retryBodyBufferLimit)
	}
	if err := setRouteAuthz(r, out, authzContext(r.Name, rt.Upstream, rt.Name, "")); err != nil {
		return nil, err
	}
	return out, nil
}

// retryPolicy re-sends transient failures with exponential back-off and jitter, waiting
// as long as the provider's Retry-After asks up to a cap. Envoy's router never retries once
// response headers went to the caller, so a stream that breaks after its first chunk is
// never re-sent (and never duplicated). The retry budget sits on the cluster (cluster.go).
// With retries off the policy stays for per_try_timeout, the bound on waiting for headers.
func retryPolicy(u model.Upstream) *routev3.RetryPolicy {
	r := u.Retries
	p := &routev3.RetryPolicy{
		RetryOn:              strings.Join(r.On, ","),
		NumRetries:           wrapperspb.UInt32(r.Attempts - 1),
		PerTryTimeout:        durationpb.New(u.ResponseTimeout),
		RetriableStatusCodes: r.StatusCodes,
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(r.BackoffBase),
			MaxInterval:  durationpb.New(r.BackoffMax),
		},
	}
	if len(r.StatusCodes) > 0 {
		p.RetryOn = strings.Join(append(slices.Clone(r.On), "retriable-status-codes"), ",")
	}
	if r.RetryAfterMax > 0 {
		// Only Retry-After in seconds: Envoy reads reset headers as seconds or a Unix time,
		// and the providers' own reset headers are neither (OpenAI "6m0s", Anthropic
		// RFC 3339, retry-after-ms milliseconds would be misread as seconds).
		p.RateLimitedRetryBackOff = &routev3.RetryPolicy_RateLimitedRetryBackOff{
			ResetHeaders: []*routev3.RetryPolicy_ResetHeader{{Name: "retry-after", Format: routev3.RetryPolicy_SECONDS}},
			MaxInterval:  durationpb.New(r.RetryAfterMax),
		}
	}
	return p
}

// separatedRewrite rewrites a path-separated prefix: prefix_rewrite cannot, since for
// /groq -> / it would turn /groq/v1 into //v1.
func separatedRewrite(prefix, rewrite string) *matcherv3.RegexMatchAndSubstitute {
	to := strings.TrimSuffix(rewrite, "/")
	if to == "" {
		return &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(prefix) + "/?"},
			Substitution: "/",
		}
	}
	return &matcherv3.RegexMatchAndSubstitute{
		Pattern:      &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(prefix) + "(/|$)"},
		Substitution: to + `\1`,
	}
}
