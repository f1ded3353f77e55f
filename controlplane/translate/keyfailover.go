package translate

import (
	"time"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/wire"
)

// Key failover: a retry goes out with the next provider key, so a 429 caused by one key's
// quota is retried on another. The key is injected once per request by the downstream
// ext_authz check, so the choice per try needs a filter that runs per try: an upstream HTTP
// filter on the upstream's cluster (Envoy 1.40 refuses ext_authz there; ext_proc works).
// The router adds x-envoy-attempt-count to every try (the virtual host's
// include_request_attempt_count); on a retry the ext_proc asks extauthz, which sets the key
// header to the key attempt−1 places after the first try's. First tries skip the ext_proc
// through its matcher, so they pay no extra call; the attempt header is removed before the
// request leaves, so the provider never sees it.
//
// With the check inside Envoy (extauthz_in_envoy) the module is the upstream filter
// instead, and the key store is in the same process: a first try costs a header read and
// removal in the module's C code, and a retry sets its key without a side call.

const (
	keyFailoverFilterName = "envoy.filters.http.ext_proc"
	// keyFailoverTimeout bounds the retry's call to extauthz; past it (or on any failure)
	// the retry keeps its first key (failure_mode_allow).
	keyFailoverTimeout = 100 * time.Millisecond
)

// upstreamFilters are the upstream HTTP filters of an upstream cluster whose retries are
// on in r; nil otherwise (Envoy then runs only its codec).
func upstreamFilters(r model.Region, u model.Upstream) ([]*hcmv3.HttpFilter, error) {
	if u.Retries.Attempts < 2 {
		return nil, nil
	}
	codec, err := toAny(&upstreamcodecv3.UpstreamCodec{})
	if err != nil {
		return nil, err
	}
	codecFilter := &hcmv3.HttpFilter{Name: "envoy.filters.http.upstream_codec", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: codec}}
	if r.ExtAuthzInEnvoy {
		mod, err := keyFailoverModuleFilter(r.Name, u.Name)
		if err != nil {
			return nil, err
		}
		return []*hcmv3.HttpFilter{mod, codecFilter}, nil
	}
	proc, err := keyFailoverFilter(u.Name)
	if err != nil {
		return nil, err
	}
	strip, err := toAny(&headermutationv3.HeaderMutation{Mutations: &headermutationv3.Mutations{RequestMutations: []*mutationrulesv3.HeaderMutation{{
		Action: &mutationrulesv3.HeaderMutation_Remove{Remove: wire.AttemptHeader},
	}}}})
	if err != nil {
		return nil, err
	}
	return []*hcmv3.HttpFilter{
		proc,
		{Name: "envoy.filters.http.header_mutation", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: strip}},
		codecFilter,
	}, nil
}

// keyFailoverFilter calls extauthz's ExternalProcessor with the request headers of a retry
// (x-envoy-attempt-count present and not "1"), naming the upstream in gRPC metadata.
func keyFailoverFilter(upstream string) (*hcmv3.HttpFilter, error) {
	cfg, err := toAny(&extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
				ClusterName: wire.ExtAuthzClusterName,
			}},
			Timeout:         durationpb.New(keyFailoverTimeout),
			InitialMetadata: []*corev3.HeaderValue{{Key: wire.ExtProcUpstreamMetadata, Value: upstream}},
		},
		FailureModeAllow: true,
		MessageTimeout:   durationpb.New(keyFailoverTimeout),
		ProcessingMode: &extprocv3.ProcessingMode{
			RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
			ResponseHeaderMode:  extprocv3.ProcessingMode_SKIP,
			RequestBodyMode:     extprocv3.ProcessingMode_NONE,
			ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
			RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
			ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
		},
	})
	if err != nil {
		return nil, err
	}
	// Skipped unless the header is a number other than 1 (an absent header is skipped too).
	wrapped, err := skipUnlessHeader(keyFailoverFilterName, cfg, wire.AttemptHeader, retryAttemptRegex)
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: keyFailoverFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: wrapped}}, nil
}

// retryAttemptRegex matches a try number of 2 or more.
const retryAttemptRegex = `^(?:[2-9]|[1-9][0-9]+)$`
