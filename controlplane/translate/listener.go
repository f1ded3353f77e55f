package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/controlplane/model"
)

func listener(r model.Region, usage usageSettings) (*listenerv3.Listener, error) {
	hcm, err := connectionManager(r, usage)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:                          ListenerName(r.Name),
		Address:                       socketAddress(r.ListenAddress, r.ListenPort),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimitBytes),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
			}},
		}},
	}, nil
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
