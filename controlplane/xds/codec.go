package xds

import (
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// ServerOptions are the gRPC server options the xDS services need: a codec that sends the
// large resources of a DiscoveryResponse by reference, and hands a WireDecoder its bytes.
// Every other message goes through gRPC's own proto codec.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(newCodec())}
}

// codec is gRPC's proto codec, except that a DiscoveryResponse's resources of at least
// byReference bytes are not copied into the message's buffer but sent from where they are.
//
// gRPC's codec marshals each response into a pooled buffer of the next power-of-two size
// (1 MiB for a 350 KiB route configuration), held until the stream's flow control has let
// the whole message go: with 1,000 Envoys taking a push, a GiB. Here a stream holds a few
// hundred bytes of its own (version, nonce, type URL, framing) and references to the
// resources' encodings, which for route configurations are one per region (encoded.go).
//
// Safe because nothing writes to those bytes while the stream holds them: gRPC forbids
// modifying a message after SendMsg, go-control-plane never writes to a response's Any
// values (it caches the response and only sets the nonce, before sending), and the bytes
// are ordinary garbage-collected memory handed to gRPC as mem.SliceBuffer, which is never
// returned to a pool or reused, so they live exactly as long as a stream references them.
//
// The result is byte for byte what gRPC's codec would send (fields in number order, as
// protobuf-go writes them): codec_test.go checks it.
type codec struct {
	fallback encoding.CodecV2
}

// byReference is the size from which a resource is sent by reference: below it a copy is
// cheaper than the extra buffer.
const byReference = 16 << 10

// Field numbers: DiscoveryResponse.resources, Any.value.
const (
	responseResourcesField = 2
	anyValueField          = 2
)

func newCodec() codec { return codec{fallback: encoding.GetCodecV2(grpcproto.Name)} }

func (c codec) Name() string { return c.fallback.Name() }

// WireDecoder is a received message that reads its own wire bytes: the usage ledger's
// access log messages, whose entries it reads field by field (usage/entrywire.go).
type WireDecoder interface {
	DecodeWire(b []byte) error
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if d, ok := v.(WireDecoder); ok {
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		return d.DecodeWire(buf.ReadOnlyData()) // DecodeWire keeps no reference to the bytes
	}
	return c.fallback.Unmarshal(data, v)
}

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if resp, ok := v.(*discoveryv3.DiscoveryResponse); ok && hasLarge(resp.GetResources()) {
		return marshalByReference(resp)
	}
	return c.fallback.Marshal(v)
}

func hasLarge(rs []*anypb.Any) bool {
	for _, r := range rs {
		if len(r.GetValue()) >= byReference {
			return true
		}
	}
	return false
}

// marshalByReference writes the fields before resources, each resource (the large values
// as references), then the fields after resources and any unknown fields.
func marshalByReference(resp *discoveryv3.DiscoveryResponse) (mem.BufferSlice, error) {
	before, after := &discoveryv3.DiscoveryResponse{}, &discoveryv3.DiscoveryResponse{}
	src := resp.ProtoReflect()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Number() < responseResourcesField:
			before.ProtoReflect().Set(fd, v)
		case fd.Number() > responseResourcesField:
			after.ProtoReflect().Set(fd, v)
		}
		return true
	})
	after.ProtoReflect().SetUnknown(src.GetUnknown())

	var out mem.BufferSlice
	var opts proto.MarshalOptions // gRPC's codec's, which keeps fields in number order
	buf, err := opts.Marshal(before)
	if err != nil {
		return nil, err
	}
	for _, r := range resp.GetResources() {
		value := r.GetValue()
		if len(value) < byReference {
			buf = protowire.AppendTag(buf, responseResourcesField, protowire.BytesType)
			buf = protowire.AppendVarint(buf, uint64(proto.Size(r)))
			if buf, err = opts.MarshalAppend(buf, r); err != nil {
				return nil, err
			}
			continue
		}
		// The Any as protobuf-go writes it: type_url, value, then unknown fields.
		head, err := opts.Marshal(&anypb.Any{TypeUrl: r.GetTypeUrl()})
		if err != nil {
			return nil, err
		}
		unknown := r.ProtoReflect().GetUnknown()
		size := len(head) + protowire.SizeTag(anyValueField) + protowire.SizeBytes(len(value)) + len(unknown)
		buf = protowire.AppendTag(buf, responseResourcesField, protowire.BytesType)
		buf = protowire.AppendVarint(buf, uint64(size))
		buf = append(buf, head...)
		buf = protowire.AppendTag(buf, anyValueField, protowire.BytesType)
		buf = protowire.AppendVarint(buf, uint64(len(value)))
		out = append(out, mem.SliceBuffer(buf), mem.SliceBuffer(value))
		buf = append([]byte(nil), unknown...)
	}
	if buf, err = opts.MarshalAppend(buf, after); err != nil {
		return nil, err
	}
	if len(buf) > 0 {
		out = append(out, mem.SliceBuffer(buf))
	}
	return out, nil
}
