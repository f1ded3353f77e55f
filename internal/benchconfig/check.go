package benchconfig

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llmedge/llmedge/internal/wire"
)

// The ext_authz benchmarks check callers of region hk against upstream openai, key
// injected as the OpenAI API expects, through route openai-chat.
const (
	CheckRegion   = "hk"
	CheckUpstream = "openai"
	CheckRoute    = "openai-chat"
	CheckKey      = "sk-bench-key"
)

// CheckRequest is an allowed request shaped like the CheckRequest Envoy sends for an
// OpenAI chat call through the edge: source and destination addresses, request time, id,
// method, path, host, the credential header, and the route's context extensions.
func CheckRequest(tok string) *authv3.CheckRequest {
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Address: addr("10.1.2.3", 51234)},
		Destination:       &authv3.AttributeContext_Peer{Address: addr("127.0.0.1", 10000)},
		ContextExtensions: map[string]string{wire.ContextRegion: CheckRegion, wire.ContextUpstream: CheckUpstream, wire.ContextRoute: CheckRoute},
		Request: &authv3.AttributeContext_Request{Time: timestamppb.Now(), Http: &authv3.AttributeContext_HttpRequest{
			Id:     "5f0c7f1e-7a0d-4f0e-9c1b-1c2d3e4f5a6b",
			Method: "POST",
			// The edge's ext_authz filter sends only the credential headers and x-llmedge-*
			// (allowed_headers in controlplane/translate/extauthz.go).
			Headers:  map[string]string{"authorization": "Bearer " + tok},
			Path:     "/openai/v1/chat/completions",
			Host:     "edge.example.com",
			Scheme:   "https",
			Protocol: "HTTP/1.1",
			Size:     97,
		}},
	}}
}

// CheckRequests is CheckRequest for each token.
func CheckRequests(toks []string) []*authv3.CheckRequest {
	reqs := make([]*authv3.CheckRequest, len(toks))
	for i, t := range toks {
		reqs[i] = CheckRequest(t)
	}
	return reqs
}

// Allowed reports an error unless resp allows the request.
func Allowed(resp *authv3.CheckResponse) error {
	if resp.GetStatus().GetCode() != int32(codes.OK) || resp.GetOkResponse() == nil {
		return fmt.Errorf("check denied: %v", resp)
	}
	return nil
}

// Caller is the name and tenant of the benchmark's i-th caller.
func Caller(i int) (name, tenant string) {
	return fmt.Sprintf("caller-%04d", i), fmt.Sprintf("tenant-%02d", i%50)
}
