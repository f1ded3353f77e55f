// Package translate turns the validated model into the Envoy resources of one region:
// its listener, its route configuration and one cluster per upstream it serves. It is pure
// (no I/O, no clock) and deterministic, so golden files pin its output and an unchanged
// routes YAML yields byte-identical resources. Every resource is validated deeply before it
// leaves this package, including the typed_config Any fields that ValidateAll skips.
package translate

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Resources is everything one region's Envoys receive over ADS.
type Resources struct {
	Region    string
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	// Secrets are the certificates and CA bundles the clusters reference over SDS, as
	// file names on the Envoy host: Envoy watches the files and uses new contents without
	// any other config change. Sorted by name.
	Secrets []*tlsv3.Secret
	// Policy is served to the region's extauthz, not to Envoy.
	Policy *corev3.TypedExtensionConfig
	// RateLimits is served to the region's envoyproxy/ratelimit; empty when the region has
	// no rate-limit service.
	RateLimits []*rlsconfv3.RateLimitConfig
}

// Names derived from the model. They appear in Envoy stats and config dumps, so they are
// stable and carry the region where one Envoy could otherwise not tell them apart.
func ListenerName(region string) string    { return "llmedge-" + region }
func RouteConfigName(region string) string { return "llmedge-" + region }
func ClusterName(upstream string) string   { return "upstream_" + upstream }

// Region translates the model for one region.
func Region(cfg *model.Config, region string) (*Resources, error) {
	return translateRegion(cfg, region, nil)
}

// translateRegion is Region, taking routes from memo when it holds them (nil: none).
func translateRegion(cfg *model.Config, region string, memo *regionMemo) (*Resources, error) {
	r, ok := cfg.Region(region)
	if !ok {
		return nil, fmt.Errorf("translate: unknown region %q", region)
	}
	served := map[string]bool{}
	secrets := secretSet{}
	var clusters []*clusterv3.Cluster
	for _, name := range r.AllUpstreams() {
		u, ok := cfg.Upstream(name)
		if !ok {
			return nil, fmt.Errorf("translate region %q: unknown upstream %q", region, name)
		}
		served[name] = true
		if r.Serves(name) {
			c, err := cluster(r, u, secrets)
			if err != nil {
				return nil, fmt.Errorf("translate region %q upstream %q: %w", region, name, err)
			}
			clusters = append(clusters, c)
		}
		pcs, err := peerClusters(cfg, r, u, secrets)
		if err != nil {
			return nil, fmt.Errorf("translate region %q upstream %q: %w", region, name, err)
		}
		clusters = append(clusters, pcs...)
	}
	// Inside Envoy, extauthz serves no gRPC: nothing in the region calls it.
	if !r.ExtAuthzInEnvoy {
		authz, err := extAuthzCluster(r, secrets)
		if err != nil {
			return nil, fmt.Errorf("translate region %q: %w", region, err)
		}
		clusters = append(clusters, authz)
	}
	var routes []model.Route
	for _, rt := range cfg.Routes {
		if served[rt.Upstream] {
			routes = append(routes, rt)
		}
	}
	quotas := quotasFor(cfg, r)
	limits := func(string) []*routev3.RateLimit { return nil }
	var rlc *rlsconfv3.RateLimitConfig
	if !r.RateLimit.IsZero() {
		limits = func(upstream string) []*routev3.RateLimit { return routeRateLimits(quotas, upstream) }
		c, err := rateLimitCluster(r, secrets)
		if err != nil {
			return nil, fmt.Errorf("translate region %q: %w", region, err)
		}
		clusters = append(clusters, c)
		if rlc, err = rateLimitConfig(r.Name, quotas); err != nil {
			return nil, fmt.Errorf("translate region %q: %w", region, err)
		}
	}
	rc, err := routeConfig(r, routes, cfg, limits, memo)
	if err != nil {
		return nil, fmt.Errorf("translate region %q: %w", region, err)
	}
	l, err := memo.listener(r, usageSettings{record: cfg.Usage.Enabled, envoyLog: cfg.Usage.Enabled && cfg.Usage.EnvoyAccessLog})
	if err != nil {
		return nil, fmt.Errorf("translate region %q: %w", region, err)
	}
	listeners := []*listenerv3.Listener{l}
	routeConfigs := []*routev3.RouteConfiguration{rc}
	pl, prc, err := peerListener(cfg, r, secrets)
	if err != nil {
		return nil, fmt.Errorf("translate region %q peer listener: %w", region, err)
	}
	if pl != nil {
		listeners = append(listeners, pl)
		routeConfigs = append(routeConfigs, prc)
	}
	ll, lrc, err := localListener(cfg, r)
	if err != nil {
		return nil, fmt.Errorf("translate region %q local listener: %w", region, err)
	}
	if ll != nil {
		listeners = append(listeners, ll)
		routeConfigs = append(routeConfigs, lrc)
	}
	policy, err := authzPolicy(cfg, r, rlc)
	if err != nil {
		return nil, fmt.Errorf("translate region %q: %w", region, err)
	}
	res := &Resources{
		Region:    region,
		Listeners: listeners,
		Routes:    routeConfigs,
		Clusters:  clusters,
		Secrets:   secrets.sorted(),
		Policy:    policy,
	}
	if rlc != nil {
		res.RateLimits = []*rlsconfv3.RateLimitConfig{rlc}
	}
	if err := res.validate(memo.reused()); err != nil {
		return nil, fmt.Errorf("translate region %q: %w", region, err)
	}
	return res, nil
}

// All translates every region of the model. Regions are independent, so they are
// translated in parallel: a reload is on the path from a saved edit to every Envoy.
func All(cfg *model.Config) (map[string]*Resources, error) {
	return all(cfg, func(int) *regionMemo { return nil })
}

// all is All with memo(i) the route memo of the i-th region.
func all(cfg *model.Config, memo func(i int) *regionMemo) (map[string]*Resources, error) {
	results := make([]*Resources, len(cfg.Regions))
	errs := make([]error, len(cfg.Regions))
	var wg sync.WaitGroup
	for i, r := range cfg.Regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = translateRegion(cfg, r.Name, memo(i))
		}()
	}
	wg.Wait()
	out := make(map[string]*Resources, len(cfg.Regions))
	for i, r := range cfg.Regions {
		if errs[i] != nil {
			return nil, errs[i]
		}
		out[r.Name] = results[i]
	}
	return out, nil
}

// Validate checks every resource with Envoy's field rules. The messages packed in Any
// fields were checked when toAny packed them, so together every typed_config is covered
// without unpacking them again; ValidateDeep does the full walk for tests.
func (r *Resources) Validate() error {
	for _, m := range r.messages() {
		if v, ok := m.(allValidator); ok {
			if err := v.ValidateAll(); err != nil {
				return fmt.Errorf("invalid resource %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
			}
		}
	}
	return nil
}

// validate is Validate, trusting the routes for which valid reports true: they passed
// it in an earlier translation (Cache). Any failure is reported as Validate reports it.
func (r *Resources) validate(valid func(*routev3.Route) bool) error {
	if valid == nil {
		return r.Validate()
	}
	for _, m := range r.messages() {
		var err error
		switch m := m.(type) {
		case *routev3.RouteConfiguration:
			err = validateRouteConfig(m, valid)
		case allValidator:
			err = m.ValidateAll()
		}
		if err != nil {
			return r.Validate()
		}
	}
	return nil
}

// validateRouteConfig validates rc field by field as ValidateAll does (Envoy's rules for a
// route configuration and a virtual host check each route on its own), skipping the
// routes for which valid reports true.
func validateRouteConfig(rc *routev3.RouteConfiguration, valid func(*routev3.Route) bool) error {
	shell := without(rc, routeConfigVirtualHostsField).(*routev3.RouteConfiguration)
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			if !valid(rt) {
				if err := rt.ValidateAll(); err != nil {
					return err
				}
			}
		}
		shell.VirtualHosts = append(shell.VirtualHosts, without(vh, virtualHostRoutesField).(*routev3.VirtualHost))
	}
	return shell.ValidateAll()
}

// Field numbers of RouteConfiguration.virtual_hosts and VirtualHost.routes.
const (
	routeConfigVirtualHostsField = 2
	virtualHostRoutesField       = 3
)

// without is a shallow copy of m without one field, for reading only: it shares every
// other field's value with m.
func without(m proto.Message, field protoreflect.FieldNumber) proto.Message {
	src := m.ProtoReflect()
	dst := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Number() != field {
			dst.Set(fd, v)
		}
		return true
	})
	return dst.Interface()
}

// ValidateDeep checks every resource and every message packed anywhere inside it.
func (r *Resources) ValidateDeep() error {
	for _, m := range r.messages() {
		if err := ValidateDeep(m); err != nil {
			return fmt.Errorf("invalid resource: %w", err)
		}
	}
	return nil
}

func (r *Resources) messages() []proto.Message {
	ms := slices.Concat(protos(r.Listeners), protos(r.Routes), protos(r.Clusters), protos(r.Secrets))
	if r.Policy != nil {
		ms = append(ms, r.Policy)
	}
	return append(ms, protos(r.RateLimits)...)
}

// protos is xs as proto messages, nil when xs is empty.
func protos[T proto.Message](xs []T) []proto.Message {
	var ms []proto.Message
	for _, x := range xs {
		ms = append(ms, x)
	}
	return ms
}

// YAML renders each resource list as YAML (protojson field names), for golden files and
// for operators comparing what the control plane emits with Envoy's /config_dump.
func (r *Resources) YAML() (listeners, routes, clusters, secrets, policy, ratelimits []byte, err error) {
	render := func(items []proto.Message) ([]byte, error) {
		var docs []any
		for _, m := range items {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				return nil, err
			}
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				return nil, err
			}
			docs = append(docs, v)
		}
		return yaml.Marshal(docs)
	}
	if listeners, err = render(protos(r.Listeners)); err != nil {
		return nil, nil, nil, nil, nil, nil, err
	}
	if routes, err = render(protos(r.Routes)); err != nil {
		return nil, nil, nil, nil, nil, nil, err
	}
	if clusters, err = render(protos(r.Clusters)); err != nil {
		return nil, nil, nil, nil, nil, nil, err
	}
	if secrets, err = render(protos(r.Secrets)); err != nil {
		return nil, nil, nil, nil, nil, nil, err
	}
	var ps []proto.Message
	if r.Policy != nil {
		ps = append(ps, r.Policy)
	}
	if policy, err = render(ps); err != nil {
		return nil, nil, nil, nil, nil, nil, err
	}
	ratelimits, err = render(protos(r.RateLimits))
	return listeners, routes, clusters, secrets, policy, ratelimits, err
}
