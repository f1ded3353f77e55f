// Package xdstest is a minimal ADS client for tests of the control plane: it speaks to the
// server as an Envoy would (request, ACK with the response's nonce) and lets a test wait for
// a response with a deadline, or assert that none comes.
package xdstest

import (
	"context"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
)

// Stream is one ADS stream; a goroutine moves every response into a buffer so tests can
// wait for one with a deadline instead of blocking in Recv.
type Stream struct {
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
	resps  chan *discoveryv3.DiscoveryResponse
	ended  chan error // receives the Recv error that ended the stream
}

// Open starts an ADS stream on conn, ended when the test ends (or by Close).
func Open(t testing.TB, conn *grpc.ClientConn) *Stream {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &Stream{stream: st, cancel: cancel, resps: make(chan *discoveryv3.DiscoveryResponse, 16), ended: make(chan error, 1)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				s.ended <- err
				return
			}
			select {
			case s.resps <- r:
			case <-ctx.Done():
				s.ended <- ctx.Err()
				return
			}
		}
	}()
	t.Cleanup(cancel)
	return s
}

// Close cancels the stream, as an Envoy that goes away does.
func (s *Stream) Close() { s.cancel() }

// CloseSend half-closes the stream, as an Envoy that shuts down cleanly does.
func (s *Stream) CloseSend() error { return s.stream.CloseSend() }

// Send sends req.
func (s *Stream) Send(t testing.TB, req *discoveryv3.DiscoveryRequest) {
	t.Helper()
	if err := s.stream.Send(req); err != nil {
		t.Fatalf("send %s: %v", req.GetTypeUrl(), err)
	}
}

// Recv returns the next response, failing the test if none arrives within timeout.
func (s *Stream) Recv(t testing.TB, timeout time.Duration) *discoveryv3.DiscoveryResponse {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-s.resps:
		return r
	case err := <-s.ended:
		t.Fatalf("stream ended while waiting for a response: %v", err)
	case <-timer.C:
		t.Fatalf("no response within %s", timeout)
	}
	return nil
}

// ExpectNone asserts that no response arrives within window: an assertion of absence, the
// one place a bounded wait is the point of the test.
func (s *Stream) ExpectNone(t testing.TB, window time.Duration) {
	t.Helper()
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case r := <-s.resps:
		t.Fatalf("unexpected response: type %s version %s with %d resources", r.GetTypeUrl(), r.GetVersionInfo(), len(r.GetResources()))
	case err := <-s.ended:
		t.Fatalf("stream ended: %v", err)
	case <-timer.C:
	}
}

// Ack accepts resp, as Envoy does: same version, the response's nonce.
func (s *Stream) Ack(t testing.TB, resp *discoveryv3.DiscoveryResponse, names ...string) {
	t.Helper()
	s.Send(t, &discoveryv3.DiscoveryRequest{
		TypeUrl:       resp.GetTypeUrl(),
		VersionInfo:   resp.GetVersionInfo(),
		ResponseNonce: resp.GetNonce(),
		ResourceNames: names,
	})
}

// RequestAndAck sends req, waits up to timeout for a response of its type with at least
// one resource, ACKs it and returns it.
func (s *Stream) RequestAndAck(t testing.TB, req *discoveryv3.DiscoveryRequest, timeout time.Duration) *discoveryv3.DiscoveryResponse {
	t.Helper()
	s.Send(t, req)
	resp := s.Recv(t, timeout)
	if resp.GetTypeUrl() != req.GetTypeUrl() || len(resp.GetResources()) == 0 {
		t.Fatalf("asked for %s, got %s with %d resources", req.GetTypeUrl(), resp.GetTypeUrl(), len(resp.GetResources()))
	}
	s.Ack(t, resp, req.GetResourceNames()...)
	return resp
}
