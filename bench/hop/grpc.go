package main

import (
	"context"
	"net"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/llmedge/llmedge/extauthz"
)

// keyHeader and benchKey are what the check servers put on the upstream request: the
// injected provider key, as extauthz does.
const (
	keyHeader = "authorization"
	benchKey  = "sk-hop-bench"
	// callerToken is what every measured request carries; the servers refuse any other, so
	// a request that reaches the fake through an ext_authz listener proves the check ran.
	callerToken = "caller-token"
)

// serveGRPC answers every Check with one prebuilt allowed response. With asExtAuthz the
// server has extauthz's settings (extauthz.GRPCServerOptions: among them fixed
// flow-control windows, so no BDP ping rides along with the answers); without, gRPC-Go's
// defaults.
func serveGRPC(ln net.Listener, asExtAuthz bool) error {
	resp := &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: keyHeader, Value: "Bearer " + benchKey},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
	}
	var opts []grpc.ServerOption
	if asExtAuthz {
		opts = extauthz.GRPCServerOptions()
	}
	g := grpc.NewServer(opts...)
	denied := &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}}
	authv3.RegisterAuthorizationServer(g, fixed{resp: resp, denied: denied})
	return g.Serve(ln)
}

type fixed struct {
	authv3.UnimplementedAuthorizationServer
	resp, denied *authv3.CheckResponse
}

func (f fixed) Check(_ context.Context, r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if r.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"] != "Bearer "+callerToken {
		return f.denied, nil
	}
	return f.resp, nil
}
