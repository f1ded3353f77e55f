package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/extauthz"
	"github.com/llmedge/llmedge/internal/benchconfig"
	"github.com/llmedge/llmedge/internal/wire"
)

// serveFloor answers every Check with the same allowed response, shaped like extauthz's
// (the injected key header, dynamic metadata caller/tenant/upstream), on a gRPC server set
// up as extauthz's. Run like extauthz, it is the floor under extauthz's figures: gRPC,
// HTTP/2 and protobuf for this RPC on this machine, with no decision.
func serveFloor(grpcAddr, httpAddr string, workers int) error {
	ln, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}
	md, err := structpb.NewStruct(map[string]any{wire.MetadataCaller: "caller-0001", wire.MetadataTenant: "tenant-01", wire.MetadataUpstream: "openai"})
	if err != nil {
		return err
	}
	resp := &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "authorization", Value: "Bearer " + benchconfig.CheckKey},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
		DynamicMetadata: md,
	}
	opts := extauthz.GRPCServerOptions()
	if workers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(uint32(workers)))
	}
	g := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(g, floorServer{resp: resp})
	go func() {
		_ = http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	}()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		g.Stop()
	}()
	return g.Serve(ln)
}

type floorServer struct {
	authv3.UnimplementedAuthorizationServer
	resp *authv3.CheckResponse
}

func (f floorServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return f.resp, nil
}
