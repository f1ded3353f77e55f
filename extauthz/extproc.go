package extauthz

import (
	"errors"
	"io"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/llmedge/llmedge/internal/wire"
)

// keyFailover serves envoy.service.ext_proc.v3.ExternalProcessor for the upstream filter
// Envoy runs on each try of a request to an upstream whose retries are on. Envoy only
// calls it on a retry (its matcher skips first tries), and the retry's headers carry the
// key the previous try went out with (upstream filters change the request's own headers):
// the answer overwrites the key header with the next key (decide.Compiled.RetryKey).
// Anything unexpected keeps
// the request as it is, so a retry at worst reuses its first key.
type keyFailover struct {
	extprocv3.UnimplementedExternalProcessorServer
	m *Main
}

func (k keyFailover) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	upstream := ""
	if md, ok := metadata.FromIncomingContext(stream.Context()); ok {
		if v := md.Get(wire.ExtProcUpstreamMetadata); len(v) == 1 {
			upstream = v[0]
		}
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &extprocv3.ProcessingResponse{}
		switch r := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
				Response: k.retryHeaders(upstream, r.RequestHeaders.GetHeaders().GetHeaders()),
			}}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp.Response = &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp.Response = &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp.Response = &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// retryHeaders is the header mutation of one try, nil to leave the headers alone.
func (k keyFailover) retryHeaders(upstream string, hs []*corev3.HeaderValue) *extprocv3.CommonResponse {
	attempt := 0
	for _, h := range hs {
		if h.GetKey() == wire.AttemptHeader {
			attempt, _ = strconv.Atoi(headerValue(h))
		}
	}
	name, value, ok := k.m.RetryKey(upstream, attempt, func(header string) string {
		current := ""
		for _, h := range hs {
			if h.GetKey() == header {
				current = headerValue(h)
			}
		}
		return current
	})
	if !ok {
		return nil
	}
	return &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: name, RawValue: []byte(value)},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}}
}

// RetryKey is the key header a try of a request to upstream goes out with: on a retry
// (attempt 2 or more) the key attempt−1 places after the first try's, found from current
// (which reads a header of the try: the previous try's key is still in it), by
// decide.Compiled.RetryKey. ok is false to leave the try as it is: a first try, no policy,
// an upstream without a key header, or a key not found, so a retry at worst reuses its
// first key. The ext_proc upstream filter (extauthz as a process) and the module's own
// upstream filter (extauthz inside Envoy) both answer with it.
func (m *Main) RetryKey(upstream string, attempt int, current func(header string) string) (name, value string, ok bool) {
	p := m.policy.Load()
	if p == nil || upstream == "" || attempt < 2 {
		return "", "", false
	}
	header, ok := p.KeyHeader(upstream)
	if !ok {
		return "", "", false
	}
	name, value, ok = p.RetryKey(upstream, current(header), attempt, keyRing{m.keys})
	if !ok {
		m.retryKeys.WithLabelValues(upstream, "kept").Inc()
		return "", "", false
	}
	m.retryKeys.WithLabelValues(upstream, "next").Inc()
	return name, value, true
}

// headerValue reads a header Envoy sent as raw_value (its default) or value.
func headerValue(h *corev3.HeaderValue) string {
	if len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}
