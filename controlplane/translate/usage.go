package translate

import (
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/internal/wire"
)

// XDSClusterName is the bootstrap's static cluster to the control plane (ADS, and the
// usage access log over the same socket or mutual-TLS path). The control plane must never
// push a CDS cluster with this name: it would replace the static one.
const XDSClusterName = "llmedge_xds"

// Usage log buffering: Envoy batches entries per worker and sends them when the buffer
// fills or the interval passes, so a request never waits for the ledger; a second keeps
// /usage close to real time at a few messages per second per worker.
const (
	usageLogFlushInterval = time.Second
	usageLogBufferBytes   = 16 * 1024
)

// usageSettings is what a listener takes from the usage section: whether it sends each
// request's record to the ledger (usage.enabled), and whether Envoy's own JSON access log
// lines carry the record's facts too (usage.envoy_access_log), for `llmedge usage import`.
type usageSettings struct{ record, envoyLog bool }

// usageRecording is what a listener carries only for the usage ledger: the llmedge.request
// marker (without it the gRPC access log carries no metadata) and the log itself; neither
// when usage.enabled is false. The request's model and the token extraction stay either
// way: quotas read them too.
func usageRecording(enabled bool) (*hcmv3.HttpFilter, *accesslogv3.AccessLog, error) {
	if !enabled {
		return nil, nil, nil
	}
	marker, err := requestMarker()
	if err != nil {
		return nil, nil, err
	}
	log, err := usageAccessLog()
	if err != nil {
		return nil, nil, err
	}
	return marker, log, nil
}

// present is xs without its nil entries: the pieces a listener leaves out.
func present[T any](xs ...*T) []*T {
	out := make([]*T, 0, len(xs))
	for _, x := range xs {
		if x != nil {
			out = append(out, x)
		}
	}
	return out
}

// usageAccessLog streams one HTTPAccessLogEntry per request admitted to the control plane's
// ledger (docs/USAGE.md). Without a ledger (no --state-dir) the control plane does not
// serve the log service: Envoy's stream fails and entries are dropped, never requests.
func usageAccessLog() (*accesslogv3.AccessLog, error) {
	cfg, err := toAny(&grpcalsv3.HttpGrpcAccessLogConfig{CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{
		LogName: wire.AccessLogName,
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName},
		}},
		TransportApiVersion:     corev3.ApiVersion_V3,
		BufferFlushInterval:     durationpb.New(usageLogFlushInterval),
		BufferSizeBytes:         wrapperspb.UInt32(usageLogBufferBytes),
		FilterStateObjectsToLog: []string{wire.RequestIDState},
	}})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{
		// A request the admission ceiling shed has no caller, upstream or tokens to record;
		// Envoy counts it (overload.go). Past saturation, a record for each would make the
		// ledger the next thing to overload.
		Filter:     cel("response.code_details != '" + overloadDetails + "'"),
		Name:       "envoy.access_loggers.http_grpc",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg},
	}, nil
}
