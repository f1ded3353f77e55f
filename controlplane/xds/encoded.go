package xds

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"
)

// encodedRoutes is a region's RouteConfiguration, encoded once per reload, that marshals to
// that one encoding instead of a copy of it.
//
// go-control-plane marshals a resource again for every stream it sends it on (a cached
// resource lives in one stream's response), and the route configuration is by far the
// largest (hundreds of KiB at 1,000 routes). With a copy per stream, a push to 1,000 Envoys
// copied and held 1,000 copies until each stream's flow control let it go. Marshal here
// returns the encoding itself, so every stream's Any holds the same bytes, and the server's
// codec (codec.go) sends them by reference: one encoding in memory however many streams.
//
// The encoding is never written after encodeOnce returns, and its only readers are
// go-control-plane (it wraps what Marshal returns in an Any and never writes to it), gRPC
// (through the codec) and contentVersion (a hash): so handing out the slice, against
// proto.Marshal's usual "the caller owns the result", is safe here. The capacity is capped at
// the length, so a caller appending to it gets a new array. Like every snapshot resource it
// must not be modified through reflection.
type encodedRoutes struct {
	// stub is what reflection shows: the name as a field (the cache indexes resources by
	// it) and every other field as unknown bytes, so it decodes to the same message.
	stub    *routev3.RouteConfiguration
	enc     []byte
	methods protoiface.Methods
}

func encodeOnce(rc *routev3.RouteConfiguration) (*encodedRoutes, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(rc)
	if err != nil {
		return nil, err
	}
	var rest []byte
	for in := b; len(in) > 0; {
		num, typ, n := protowire.ConsumeTag(in)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, in[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		if num != routeConfigNameField {
			rest = append(rest, in[:n+m]...)
		}
		in = in[n+m:]
	}
	stub := &routev3.RouteConfiguration{Name: rc.GetName()}
	stub.ProtoReflect().SetUnknown(protoreflect.RawFields(rest))
	e := &encodedRoutes{stub: stub, enc: b[:len(b):len(b)]}
	// No Size method: proto.Marshal would allocate a buffer of that size to marshal into.
	// Without one, proto.Size asks Marshal, which costs nothing here.
	e.methods = protoiface.Methods{Flags: protoiface.SupportMarshalDeterministic, Marshal: e.marshal}
	return e, nil
}

// routeConfigNameField is RouteConfiguration.name's field number.
const routeConfigNameField = 1

// GetName is what go-control-plane indexes the resource by.
func (e *encodedRoutes) GetName() string { return e.stub.GetName() }

func (e *encodedRoutes) ProtoReflect() protoreflect.Message {
	return encodedReflect{e.stub.ProtoReflect(), e}
}

func (e *encodedRoutes) marshal(in protoiface.MarshalInput) (protoiface.MarshalOutput, error) {
	if len(in.Buf) == 0 {
		return protoiface.MarshalOutput{Buf: e.enc}, nil
	}
	return protoiface.MarshalOutput{Buf: append(in.Buf, e.enc...)}, nil
}

// encodedReflect is the stub's reflection with encodedRoutes' marshalling.
type encodedReflect struct {
	protoreflect.Message
	e *encodedRoutes
}

func (r encodedReflect) Interface() protoreflect.ProtoMessage { return r.e }

func (r encodedReflect) ProtoMethods() *protoiface.Methods { return &r.e.methods }
