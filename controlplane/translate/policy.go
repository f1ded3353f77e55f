package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// authzPolicy is the caller policy a region's extauthz enforces, packed as an
// ExtensionConfig resource so it travels in the region's snapshot: one content-hashed
// version, ACKed and tracked like the Envoy resources. Only callers that may use at least
// one upstream of the region are included; upstream keys are not part of it.
func authzPolicy(cfg *model.Config, r model.Region, rlc *rlsconfv3.RateLimitConfig) (*corev3.TypedExtensionConfig, error) {
	served := map[string]bool{}
	p := &authzv1.Policy{Region: r.Name}
	for _, name := range r.AllUpstreams() {
		u, _ := cfg.Upstream(name)
		served[name] = true
		p.Upstreams = append(p.Upstreams, &authzv1.Upstream{
			Name: u.Name, KeyHeader: u.KeyHeader, KeyFormat: u.KeyFormat, Api: string(u.API),
		})
	}
	for _, c := range cfg.Callers {
		var allowed []string
		for _, u := range c.Upstreams {
			if served[u] {
				allowed = append(allowed, u)
			}
		}
		if len(allowed) == 0 {
			continue
		}
		pc := &authzv1.Caller{
			Name:             c.Name,
			Tenant:           c.Tenant,
			TokenSha256:      c.TokenSHA256,
			AllowedUpstreams: allowed,
			Disabled:         c.Disabled,
			BringYourOwnKey:  c.BYOK,
		}
		if !c.ExpiresAt.IsZero() {
			pc.ExpiresAt = timestamppb.New(c.ExpiresAt)
		}
		for _, pf := range c.AllowCIDRs {
			pc.AllowCidrs = append(pc.AllowCidrs, pf.String())
		}
		for _, pf := range c.DenyCIDRs {
			pc.DenyCidrs = append(pc.DenyCidrs, pf.String())
		}
		p.Callers = append(p.Callers, pc)
	}
	if rlc != nil {
		q := quotasFor(cfg, r)
		limits, err := anypb.New(rlc)
		if err != nil {
			return nil, err
		}
		rl := &authzv1.RateLimit{Config: limits, Domain: wire.RateLimitDomain, FailClosed: r.RateLimitFailClosed}
		for _, name := range r.AllUpstreams() {
			if ds := quotaDescriptors(q, name); len(ds) > 0 {
				rl.Upstreams = append(rl.Upstreams, &authzv1.UpstreamQuotas{Upstream: name, Descriptors: ds})
			}
		}
		p.RateLimit = rl
	}
	a, err := toAny(p)
	if err != nil {
		return nil, err
	}
	return &corev3.TypedExtensionConfig{Name: wire.PolicyResourceName, TypedConfig: a}, nil
}
