package translate

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

const (
	extAuthzFilterName = "envoy.filters.http.ext_authz"
	// extauthz runs next to Envoy (same host or region): a check takes well under a
	// millisecond, so 250 ms only trips when it is stuck, and then the request fails
	// closed with 503 rather than waiting.
	extAuthzTimeout = 250 * time.Millisecond
)

// extAuthzFilter checks every request with the region's extauthz over gRPC. It fails
// closed: when extauthz cannot answer, the caller gets 503 and nothing goes upstream.
func extAuthzFilter() (*hcmv3.HttpFilter, error) {
	patterns := []*matcherv3.StringMatcher{
		{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: wire.InternalHeaderPrefix}},
	}
	for _, h := range wire.CredentialHeaders {
		patterns = append(patterns, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h}})
	}
	cfg, err := toAny(&extauthzv3.ExtAuthz{
		Services: &extauthzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
				ClusterName: wire.ExtAuthzClusterName,
			}},
			Timeout: durationpb.New(extAuthzTimeout),
		}},
		TransportApiVersion: corev3.ApiVersion_V3,
		FailureModeAllow:    false,
		StatusOnError:       &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		// Only what the decision needs: the credential headers and internal headers (to
		// strip them). The path, with its query, always travels in the check request.
		AllowedHeaders: &matcherv3.ListStringMatcher{Patterns: patterns},
		// The requested model (json_to_metadata, or Gemini's path), for model-scoped quotas
		// extauthz checks with the rate-limit service.
		MetadataContextNamespaces: []string{wire.RequestMetadataNamespace},
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{
		Name:       extAuthzFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg},
	}, nil
}

// authzContext is what a route tells the region's authz about itself: its region,
// upstream and route, and the hop (wire.HopForward, wire.HopPeer) when the route is on one
// ("" for an ordinary route), so extauthz never guesses the route from the path. The same
// keys and values reach extauthz as ext_authz context extensions and the in-Envoy module as
// route metadata (setRouteAuthz).
func authzContext(region, upstream, route, hop string) map[string]string {
	ctx := map[string]string{
		wire.ContextRegion:   region,
		wire.ContextUpstream: upstream,
		wire.ContextRoute:    route,
	}
	if hop != "" {
		ctx[wire.ContextHop] = hop
	}
	return ctx
}

// setRouteAuthz hands ctx to the filter that checks rt's requests in r, replacing what rt
// had: ext_authz's per-route check settings, or, with the check inside Envoy, the route
// metadata the module reads (a dynamic module filter has no per-route config of its own
// that could carry it). Only one of the two is ever set, so nothing suggests a second
// checker.
func setRouteAuthz(r model.Region, rt *routev3.Route, ctx map[string]string) error {
	if r.ExtAuthzInEnvoy {
		fields := make(map[string]*structpb.Value, len(ctx))
		for k, v := range ctx {
			fields[k] = structpb.NewStringValue(v)
		}
		if rt.Metadata == nil {
			rt.Metadata = &corev3.Metadata{}
		}
		if rt.Metadata.FilterMetadata == nil {
			rt.Metadata.FilterMetadata = map[string]*structpb.Struct{}
		}
		rt.Metadata.FilterMetadata[wire.AuthzRouteMetadata] = &structpb.Struct{Fields: fields}
		return nil
	}
	a, err := toAny(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: ctx},
	}})
	if err != nil {
		return err
	}
	if rt.TypedPerFilterConfig == nil {
		rt.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	rt.TypedPerFilterConfig[extAuthzFilterName] = a
	return nil
}

// authzFilter is the filter that checks every request in r: the ext_authz side call to the
// region's extauthz, or the same decision made in-process by llmedge's dynamic module.
func authzFilter(r model.Region) (*hcmv3.HttpFilter, error) {
	if r.ExtAuthzInEnvoy {
		return authzModuleFilter(r.Name)
	}
	return extAuthzFilter()
}

// extAuthzCluster reaches the region's extauthz over HTTP/2 (gRPC).
func extAuthzCluster(r model.Region, secrets secretSet) (*clusterv3.Cluster, error) {
	return grpcCluster(wire.ExtAuthzClusterName, r.ExtAuthz, r.InternalTLS, secrets)
}
