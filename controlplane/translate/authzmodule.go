package translate

import (
	"encoding/json"

	dynamicmodulesv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/dynamic_modules/v3"
	dynamicmodulefilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_modules/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/internal/wire"
)

// AuthzModuleFilterName names the in-Envoy check in the filter chain (and its stats).
const AuthzModuleFilterName = "llmedge.authz"

// authzModuleConfig is the module's filter_config. It is served over xDS and shown in
// /config_dump, so it names the region and nothing else: the module reads its secrets,
// policy and listen addresses from extauthz's settings in Envoy's environment.
type authzModuleConfig struct {
	Region string `json:"region"`
	// Upstream is set for key failover (keyFailoverModuleFilter) only.
	Upstream string `json:"upstream,omitempty"`
}

// KeyFailoverModuleFilterName names the module's key failover in an upstream cluster's
// upstream HTTP filters.
const KeyFailoverModuleFilterName = "llmedge.key_failover"

// authzModuleFilter checks every request with llmedge's dynamic module (lib<name>.so on
// ENVOY_DYNAMIC_MODULES_SEARCH_PATH): extauthz's decision made in-process, without the
// gRPC side call. It stands where ext_authz would, and its answers look like ext_authz's
// (dynamic metadata under wire.AuthzMetadataNamespace, refusals with the details
// ext_authz_denied), so the filters and mappers after it are the same in both modes.
func authzModuleFilter(region string) (*hcmv3.HttpFilter, error) {
	return moduleFilter(AuthzModuleFilterName, wire.AuthzModuleFilter, authzModuleConfig{Region: region})
}

// keyFailoverModuleFilter is the module as an upstream filter of upstream's cluster: it sets
// each retry's key (extauthz.Main.RetryKey) and removes the router's attempt header from
// every try (keyfailover.go).
func keyFailoverModuleFilter(region, upstream string) (*hcmv3.HttpFilter, error) {
	return moduleFilter(KeyFailoverModuleFilterName, wire.KeyFailoverModuleFilter, authzModuleConfig{Region: region, Upstream: upstream})
}

// moduleFilter is an HTTP filter of llmedge's dynamic module: the module's filter
// filterName with config, named name in the filter chain.
func moduleFilter(name, filterName string, config authzModuleConfig) (*hcmv3.HttpFilter, error) {
	js, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	fc, err := toAny(wrapperspb.String(string(js)))
	if err != nil {
		return nil, err
	}
	cfg, err := toAny(&dynamicmodulefilterv3.DynamicModuleFilter{
		DynamicModuleConfig: &dynamicmodulesv3.DynamicModuleConfig{
			Name: wire.AuthzModuleName,
			// The module runs a Go runtime, which cannot be unloaded: closing the shared
			// object when the last filter config using it goes (a listener update) would
			// pull the code from under its goroutines.
			DoNotClose: true,
		},
		FilterName:   filterName,
		FilterConfig: fc,
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{
		Name:       name,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg},
	}, nil
}
