package usage

import (
	"errors"
	"io"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llmedge/llmedge/controlplane/xds"
)

// Service is Envoy's Access Log Service on the control plane's gRPC server (the xDS
// listeners: unix sockets or mutual TLS), so the access log travels the same
// authenticated path as the configuration. Envoy's gRPC access log is asynchronous: a
// request never waits for it.
type Service struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	ledger *Ledger
	log    *AccessLog
}

// NewService serves l and writes each new record's access log line to a (nil: no files).
func NewService(l *Ledger, a *AccessLog) *Service { return &Service{ledger: l, log: a} }

// Register adds the service to g.
func (s *Service) Register(g *grpc.Server) { accesslogv3.RegisterAccessLogServiceServer(g, s) }

// StreamAccessLogs reads one Envoy's stream. The identifier (its node) comes with the
// first message only; the region is the node's, as for xDS.
func (s *Service) StreamAccessLogs(stream grpc.ClientStreamingServer[accesslogv3.StreamAccessLogsMessage, accesslogv3.StreamAccessLogsResponse]) error {
	region := ""
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		if id := msg.GetIdentifier(); id != nil {
			region = xds.NodeRegion(id.GetNode())
		}
		if region == "" {
			return status.Error(codes.InvalidArgument, "access log stream: the first message must carry an identifier whose node names its region (locality.region)")
		}
		for _, e := range msg.GetHttpLogs().GetLogEntry() {
			r, fresh := s.ledger.Add(RecordFromEntry(region, e))
			if fresh && s.log != nil {
				s.log.Add(LineFromEntry(r, e))
			}
		}
	}
}
