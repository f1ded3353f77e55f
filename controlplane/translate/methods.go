package translate

import (
	"strings"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// AllowedMethods are the HTTP methods the edge forwards: every method the providers' APIs
// and their SDKs use (OPTIONS for browsers' preflights). Anything else — TRACE above all,
// which a server answers by echoing the request, the provider key the edge added included —
// is refused with 405 before anything else reads the request.
var AllowedMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// MethodStatPrefix names the method filter's Envoy stats
// (http.ingress_<region>.rbac.llmedge_methods.denied counts the refusals).
const MethodStatPrefix = "llmedge_methods."

// methodDetails is Envoy's response code details for a request the method filter refused:
// no policy of the allow list matched.
const methodDetails = "rbac_access_denied_matched_policy[none]"

// allowHeader is the Allow header of a 405.
var allowHeader = strings.Join(AllowedMethods, ", ")

// methodFilter admits the AllowedMethods only (Envoy's RBAC filter with one allow policy:
// an exact match on :method, the cheapest check there is). CONNECT never matches a route,
// so without it a CONNECT would be a 404; with it the caller learns what is wrong.
func methodFilter() (*hcmv3.HttpFilter, error) {
	var rules []*rbacconfigv3.Permission
	for _, m := range AllowedMethods {
		rules = append(rules, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: &routev3.HeaderMatcher{
			Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m},
			}},
		}}})
	}
	cfg, err := toAny(&rbacv3.RBAC{
		Rules: &rbacconfigv3.RBAC{
			Action: rbacconfigv3.RBAC_ALLOW,
			Policies: map[string]*rbacconfigv3.Policy{"allowed_methods": {
				Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: rules}}}},
				Principals:  []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
			}},
		},
		RulesStatPrefix: MethodStatPrefix,
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}
