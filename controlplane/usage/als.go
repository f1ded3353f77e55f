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

// Register adds the service to g, which must decode with the xDS server's codec
// (xds.ServerOptions): it hands this service each message's bytes undecoded.
func (s *Service) Register(g *grpc.Server) { g.RegisterService(&serviceDesc, s) }

// serviceDesc is Envoy's AccessLogService, with a handler that reads each message from its
// wire form (entrywire.go) instead of through the generated types.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: accesslogv3.AccessLogService_ServiceDesc.ServiceName,
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "StreamAccessLogs",
		Handler:       func(srv any, stream grpc.ServerStream) error { return srv.(*Service).streamAccessLogs(stream) },
		ClientStreams: true,
	}},
	Metadata: accesslogv3.AccessLogService_ServiceDesc.Metadata,
}

// rawLogs receives one StreamAccessLogsMessage: the codec passes its bytes to DecodeWire.
type rawLogs struct {
	id      *accesslogv3.StreamAccessLogsMessage_Identifier
	entries []logEntry
}

// DecodeWire implements xds.WireDecoder.
func (m *rawLogs) DecodeWire(b []byte) (err error) {
	m.id, m.entries, err = decodeLogs(b, m.entries[:0])
	return err
}

// streamAccessLogs reads one Envoy's stream. The identifier (its node) comes with the
// first message only; the region is the node's, as for xDS.
func (s *Service) streamAccessLogs(stream grpc.ServerStream) error {
	region := ""
	var msg rawLogs
	for {
		err := stream.RecvMsg(&msg)
		if errors.Is(err, io.EOF) {
			return stream.SendMsg(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		if msg.id != nil {
			region = xds.NodeRegion(msg.id.GetNode())
		}
		if region == "" {
			return status.Error(codes.InvalidArgument, "access log stream: the first message must carry an identifier whose node names its region (locality.region)")
		}
		for i := range msg.entries {
			e := &msg.entries[i]
			r, fresh := s.ledger.Add(e.record(region))
			if fresh && s.log != nil {
				s.log.Add(e.line(r))
			}
		}
	}
}
