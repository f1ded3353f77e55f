package translate

import (
	"regexp"
	"sort"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Retries only where the request cannot have reached the provider: a POST that reached it
// may have been billed, so 5xx and timeouts are not retried here.
const (
	retryOn       = "connect-failure,refused-stream,reset-before-request"
	numRetries    = 2
	retryBase     = 100 * time.Millisecond
	retryMaxDelay = time.Second
)

func routeConfig(r model.Region, routes []model.Route, cfg *model.Config, limits func(upstream string) []*routev3.RateLimit) (*routev3.RouteConfiguration, error) {
	hostSet := map[string]bool{}
	var wildcard []model.Route
	for _, rt := range routes {
		if len(rt.Hosts) == 0 {
			wildcard = append(wildcard, rt)
		}
		for _, h := range rt.Hosts {
			hostSet[h] = true
		}
	}
	hosts := make([]string, 0, len(hostSet))
	for h := range hostSet {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)

	// One virtual host per host name, never one per host list: Envoy rejects a domain that
	// appears in two virtual hosts. Routes without hosts apply under every host too, after
	// the host's own routes of the same specificity.
	var vhosts []*routev3.VirtualHost
	for _, h := range hosts {
		var own []model.Route
		for _, rt := range routes {
			for _, rh := range rt.Hosts {
				if rh == h {
					own = append(own, rt)
				}
			}
		}
		vh, err := virtualHost(r.Name, h, []string{h}, append(own, wildcard...), cfg, limits)
		if err != nil {
			return nil, err
		}
		vhosts = append(vhosts, vh)
	}
	vh, err := virtualHost(r.Name, "any", []string{"*"}, wildcard, cfg, limits)
	if err != nil {
		return nil, err
	}
	vhosts = append(vhosts, vh)
	return &routev3.RouteConfiguration{
		Name:         RouteConfigName(r.Name),
		VirtualHosts: vhosts,
	}, nil
}

func virtualHost(region, name string, domains []string, routes []model.Route, cfg *model.Config, limits func(string) []*routev3.RateLimit) (*routev3.VirtualHost, error) {
	ordered := append([]model.Route(nil), routes...)
	// Stable on purpose: at equal specificity host-specific routes (listed first) win.
	sort.SliceStable(ordered, func(i, j int) bool {
		a, b := ordered[i], ordered[j]
		if (a.Path != "") != (b.Path != "") {
			return a.Path != ""
		}
		if la, lb := len(a.Path)+len(a.Prefix), len(b.Path)+len(b.Prefix); la != lb {
			return la > lb
		}
		return len(a.Headers) > len(b.Headers)
	})
	vh := &routev3.VirtualHost{Name: name, Domains: domains}
	for _, rt := range ordered {
		u, _ := cfg.Upstream(rt.Upstream)
		r, err := route(region, rt, u, limits(u.Name))
		if err != nil {
			return nil, err
		}
		vh.Routes = append(vh.Routes, r)
	}
	return vh, nil
}

func route(region string, rt model.Route, u model.Upstream, limits []*routev3.RateLimit) (*routev3.Route, error) {
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
		RetryPolicy: &routev3.RetryPolicy{
			RetryOn:       retryOn,
			NumRetries:    wrapperspb.UInt32(numRetries),
			PerTryTimeout: durationpb.New(u.ResponseTimeout),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
				BaseInterval: durationpb.New(retryBase),
				MaxInterval:  durationpb.New(retryMaxDelay),
			},
		},
		RateLimits: limits,
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
	authz, err := extAuthzPerRoute(region, rt)
	if err != nil {
		return nil, err
	}
	return &routev3.Route{
		Name:                 rt.Name,
		Match:                match,
		Action:               &routev3.Route_Route{Route: action},
		TypedPerFilterConfig: map[string]*anypb.Any{extAuthzFilterName: authz},
	}, nil
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
