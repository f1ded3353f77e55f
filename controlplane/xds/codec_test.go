package xds

import (
	"bytes"
	"fmt"
	"strconv"
	"testing"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/xds/xdstest"
)

// bigRoutes is enough extra routes for a region's route configuration to pass byReference.
const bigRoutes = 300

// sent is what the codec hands gRPC for v, as one byte slice.
func sent(t *testing.T, c encoding.CodecV2, v any) ([]byte, mem.BufferSlice) {
	t.Helper()
	bs, err := c.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return bs.Materialize(), bs
}

// referenced reports whether one of the buffers is value itself rather than a copy.
func referenced(bs mem.BufferSlice, value []byte) bool {
	for _, b := range bs {
		if d := b.ReadOnlyData(); len(d) == len(value) && unsafe.SliceData(d) == unsafe.SliceData(value) {
			return true
		}
	}
	return false
}

// cacheResponses asks go-control-plane's cache, as len(nonces) streams of region would,
// for typeURL, and returns each stream's DiscoveryResponse with its nonce set as the
// server sets it before sending.
func cacheResponses(t *testing.T, s *Server, region, typeURL string, names []string, nonces ...int) []*discoveryv3.DiscoveryResponse {
	t.Helper()
	var out []*discoveryv3.DiscoveryResponse
	for _, nonce := range nonces {
		ch := make(chan cachev3.Response, 1)
		req := &discoveryv3.DiscoveryRequest{Node: node("n"+strconv.Itoa(nonce), region), TypeUrl: typeURL, ResourceNames: names}
		cancel, err := s.cache.CreateWatch(req, streamv3.NewSotwSubscription(names, true), ch)
		if err != nil {
			t.Fatal(err)
		}
		if cancel != nil {
			defer cancel()
		}
		var raw cachev3.Response
		select {
		case raw = <-ch:
		default:
			t.Fatalf("cache did not answer a %s request for region %s at once", typeURL, region)
		}
		resp, err := raw.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		resp.Nonce = strconv.Itoa(nonce)
		out = append(out, resp)
	}
	return out
}

// TestCodecSendsWhatGRPCWould: for the responses go-control-plane builds (every type the
// control plane serves, large route configurations among them, several streams with their
// own nonces), the codec sends exactly the bytes gRPC's proto codec would, those bytes
// decode to the response, and the large resources are sent from the one shared encoding.
func TestCodecSendsWhatGRPCWould(t *testing.T) {
	s := newServer(t, nil)
	all := resources(t, bigFile(bigRoutes))
	if _, err := s.Update(all); err != nil {
		t.Fatal(err)
	}
	c, std := newCodec(), encoding.GetCodecV2(grpcproto.Name)
	routeName := all["hk"].Routes[0].GetName()
	for _, tc := range []struct {
		typeURL string
		names   []string
		large   bool
	}{
		{resourcev3.RouteType, []string{routeName}, true},
		{resourcev3.ListenerType, nil, false},
		{resourcev3.ClusterType, nil, false},
		{resourcev3.SecretType, nil, false},
		{resourcev3.ExtensionConfigType, nil, false},
		{resourcev3.RateLimitConfigType, nil, false},
	} {
		t.Run(ShortType(tc.typeURL), func(t *testing.T) {
			resps := cacheResponses(t, s, "hk", tc.typeURL, tc.names, 1, 2, 7)
			var shared []byte
			for _, resp := range resps {
				got, bs := sent(t, c, resp)
				want, _ := sent(t, std, resp)
				if !bytes.Equal(got, want) {
					t.Fatalf("nonce %s: the codec's %d bytes differ from gRPC's proto codec's %d", resp.GetNonce(), len(got), len(want))
				}
				back := &discoveryv3.DiscoveryResponse{}
				if err := proto.Unmarshal(got, back); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(resp, back) { // cmp.Diff of a 300-route configuration takes seconds
					t.Fatalf("decoded response differs from go-control-plane's:\n%s", cmp.Diff(resp, back, protocmp.Transform()))
				}
				if back.GetNonce() != resp.GetNonce() || back.GetVersionInfo() != s.Versions()["hk"][ShortType(tc.typeURL)] {
					t.Errorf("decoded nonce %q version %q; want nonce %q and the served version", back.GetNonce(), back.GetVersionInfo(), resp.GetNonce())
				}
				if !tc.large {
					continue
				}
				value := resp.GetResources()[0].GetValue()
				if len(value) < byReference {
					t.Fatalf("route configuration is %d bytes, the test needs at least %d", len(value), byReference)
				}
				if !referenced(bs, value) {
					t.Errorf("nonce %s: the route configuration was copied, want it sent by reference", resp.GetNonce())
				}
				if shared == nil {
					shared = value
				} else if unsafe.SliceData(shared) != unsafe.SliceData(value) {
					t.Errorf("streams got separate copies of the route configuration, want one encoding")
				}
			}
		})
	}
}

// TestCodecEdgeCases covers what go-control-plane does not build today but a response may
// hold: small and large resources mixed, every other field, unknown fields.
func TestCodecEdgeCases(t *testing.T) {
	big := func(b byte) []byte { return bytes.Repeat([]byte{b}, byReference+3) }
	withUnknown := func(m proto.Message) proto.Message {
		var raw []byte
		raw = protowire.AppendTag(raw, 99, protowire.BytesType)
		raw = protowire.AppendString(raw, "future")
		m.ProtoReflect().SetUnknown(protoreflect.RawFields(raw))
		return m
	}
	cases := map[string]proto.Message{
		"mixed": &discoveryv3.DiscoveryResponse{
			VersionInfo: "v1",
			Resources: []*anypb.Any{
				{TypeUrl: resourcev3.RouteType, Value: []byte("small")},
				{TypeUrl: resourcev3.RouteType, Value: big('a')},
				{TypeUrl: resourcev3.RouteType, Value: []byte("small again")},
				withUnknown(&anypb.Any{TypeUrl: resourcev3.RouteType, Value: big('b')}).(*anypb.Any),
				{Value: big('c')},
			},
			Canary:       true,
			TypeUrl:      resourcev3.RouteType,
			Nonce:        "42",
			ControlPlane: &corev3.ControlPlane{Identifier: "llmedge"},
			ResourceErrors: []*discoveryv3.ResourceError{
				{ErrorDetail: &statuspb.Status{Code: 5, Message: "gone"}},
			},
		},
		"unknown fields": withUnknown(&discoveryv3.DiscoveryResponse{
			VersionInfo: "v2", Resources: []*anypb.Any{{TypeUrl: resourcev3.ClusterType, Value: big('d')}}, Nonce: "3",
		}),
		"only large, nothing else": &discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{{Value: big('e')}}},
		"small only":               &discoveryv3.DiscoveryResponse{VersionInfo: "v3", Resources: []*anypb.Any{{Value: []byte("x")}}, Nonce: "1"},
		"not a response":           &discoveryv3.DiscoveryRequest{VersionInfo: "v3", ResourceNames: []string{"a"}},
	}
	c, std := newCodec(), encoding.GetCodecV2(grpcproto.Name)
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			got, bs := sent(t, c, msg)
			want, _ := sent(t, std, msg)
			if !bytes.Equal(got, want) {
				t.Fatalf("the codec's bytes differ from gRPC's proto codec's:\n got %x...\nwant %x...", head(got), head(want))
			}
			back := msg.ProtoReflect().New().Interface()
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(got)}, back); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(msg, back, protocmp.Transform()); diff != "" {
				t.Fatalf("decoded message differs (-sent +decoded):\n%s", diff)
			}
			if resp, ok := msg.(*discoveryv3.DiscoveryResponse); ok {
				for i, r := range resp.GetResources() {
					if large := len(r.GetValue()) >= byReference; large != referenced(bs, r.GetValue()) {
						t.Errorf("resource %d (%d bytes): sent by reference %v, want %v", i, len(r.GetValue()), !large, large)
					}
				}
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 64)] }

// TestADSLargeRoutesOverGRPC serves large route configurations over real ADS streams whose
// nonces differ (one has had two responses before it asks for routes): each decodes the
// translator's route configuration, its own nonce, and its ACK of that nonce is counted;
// after an edit, each gets the new configuration.
func TestADSLargeRoutesOverGRPC(t *testing.T) {
	s := newServer(t, nil)
	base := resources(t, bigFile(bigRoutes))
	if _, err := s.Update(base); err != nil {
		t.Fatal(err)
	}
	conn := serve(t, s)
	name := base["hk"].Routes[0].GetName()
	a, b := xdstest.Open(t, conn), xdstest.Open(t, conn)
	a.Send(t, &discoveryv3.DiscoveryRequest{Node: node("a", "hk"), TypeUrl: resourcev3.ClusterType})
	a.Ack(t, a.Recv(t, waitFor))
	a.Send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	a.Ack(t, a.Recv(t, waitFor))
	b.Send(t, &discoveryv3.DiscoveryRequest{Node: node("b", "hk"), TypeUrl: resourcev3.RouteType, ResourceNames: []string{name}})
	a.Send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{name}})

	check := func(st *xdstest.Stream, id, nonce string, want *routev3.RouteConfiguration) {
		t.Helper()
		resp := st.Recv(t, waitFor)
		v := s.Versions()["hk"]["routes"]
		if resp.GetTypeUrl() != resourcev3.RouteType || resp.GetVersionInfo() != v || resp.GetNonce() != nonce {
			t.Fatalf("%s got %s version %q nonce %q, want routes version %q nonce %q", id, resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce(), v, nonce)
		}
		got := unpack(t, resp, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
		if len(got) != 1 || !proto.Equal(want, got[0]) {
			t.Fatalf("%s: route configuration (-translator +ADS):\n%s", id, cmp.Diff([]*routev3.RouteConfiguration{want}, got, protocmp.Transform()))
		}
		st.Ack(t, resp, name)
		eventually(t, waitFor, func() error {
			n, err := findNode(s, id)
			if err != nil {
				return err
			}
			if n.Acked["routes"] != v {
				return fmt.Errorf("%s acked routes %q, want %q", id, n.Acked["routes"], v)
			}
			return nil
		})
	}
	check(a, "a", "3", base["hk"].Routes[0])
	check(b, "b", "1", base["hk"].Routes[0])
	if proto.Size(base["hk"].Routes[0]) < byReference {
		t.Fatalf("route configuration is %d bytes, the test needs at least %d", proto.Size(base["hk"].Routes[0]), byReference)
	}

	next := resources(t, edited(func(f *config.File) {
		*f = bigFile(bigRoutes + 1)
	}))
	if _, err := s.Update(next); err != nil {
		t.Fatal(err)
	}
	check(a, "a", "4", next["hk"].Routes[0])
	check(b, "b", "2", next["hk"].Routes[0])
}

// wireBytes records what the codec hands a WireDecoder.
type wireBytes struct {
	got []byte
	err error
}

func (w *wireBytes) DecodeWire(b []byte) error {
	w.got = bytes.Clone(b)
	return w.err
}

func TestCodecHandsWireDecodersTheBytes(t *testing.T) {
	c := newCodec()
	// A message split across buffers, as gRPC receives a large one.
	data := mem.BufferSlice{mem.SliceBuffer("first "), mem.SliceBuffer("second")}
	var w wireBytes
	if err := c.Unmarshal(data, &w); err != nil || string(w.got) != "first second" {
		t.Fatalf("decoder got %q, err %v; want the message's bytes in one piece", w.got, err)
	}
	// Its error is the receive's error.
	w = wireBytes{err: fmt.Errorf("malformed")}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer("x")}, &w); err == nil {
		t.Fatal("the decoder's error was dropped")
	}
	// Every other message still goes through protobuf.
	var node corev3.Node
	b, _ := proto.Marshal(&corev3.Node{Id: "e1"})
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &node); err != nil || node.GetId() != "e1" {
		t.Fatalf("protobuf message: %v, err %v", &node, err)
	}
}
