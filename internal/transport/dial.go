package transport

import (
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// GRPCClient returns the gRPC target and transport credentials to reach a: a unix socket
// as is, a TCP address with mutual TLS when f is set (the server's certificate must name
// a.Host), plain otherwise.
func GRPCClient(a Address, f Files, log *slog.Logger) (string, grpc.DialOption, error) {
	if a.IsUnix() || f.IsZero() {
		return a.DialTarget(), grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	cfg, err := ClientConfig(f, a.Host, log)
	if err != nil {
		return "", nil, err
	}
	return a.DialTarget(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}
