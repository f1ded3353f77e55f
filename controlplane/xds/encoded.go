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

func encodeOnce(rc *routev3.RouteConfiguration, routes routeEncodings) (*encodedRoutes, error) {
	b, err := encodeRouteConfig(rc, routes)
	if err != nil {
		return nil, err
	}
	// The name is the encoding's first field (deterministic marshalling writes fields in
	// number order) and absent when empty; the rest is shared, not copied.
	rest := b
	if num, typ, n := protowire.ConsumeTag(b); n > 0 && num == routeConfigNameField {
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		rest = b[n+m : len(b) : len(b)]
	}
	stub := &routev3.RouteConfiguration{Name: rc.GetName()}
	stub.ProtoReflect().SetUnknown(protoreflect.RawFields(rest))
	e := &encodedRoutes{stub: stub, enc: b[:len(b):len(b)]}
	// No Size method: proto.Marshal would allocate a buffer of that size to marshal into.
	// Without one, proto.Size asks Marshal, which costs nothing here.
	e.methods = protoiface.Methods{Flags: protoiface.SupportMarshalDeterministic, Marshal: e.marshal}
	return e, nil
}

// routeEncodings are the deterministic encodings of routes, by identity: prev from the
// last Update (read only), next what this one used. A route's encoding can be kept from
// one reload to the next because the translator hands out the same route for the same
// inputs (translate.Cache) and nothing modifies a translated resource. A nil next keeps
// nothing.
type routeEncodings struct {
	prev, next map[*routev3.Route][]byte
}

func (r routeEncodings) encode(rt *routev3.Route) ([]byte, error) {
	if b, ok := r.prev[rt]; ok {
		if r.next != nil {
			r.next[rt] = b
		}
		return b, nil
	}
	if b, ok := r.next[rt]; ok {
		return b, nil
	}
	b, err := deterministic.Marshal(rt)
	if err != nil {
		return nil, err
	}
	if r.next != nil {
		r.next[rt] = b
	}
	return b, nil
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// encodeRouteConfig is rc's deterministic encoding, assembled from its routes' encodings
// (most of the bytes, and the same from one reload to the next) and the rest of rc.
// Deterministic marshalling writes a message's fields in field-number order, so a
// message's encoding is that of its other fields with the repeated field's elements
// inserted after the fields numbered below it; the tests compare the result with
// proto.Marshal byte for byte. The sizes are known before anything is copied, so the
// encoding is written once, into a buffer of its size.
func encodeRouteConfig(rc *routev3.RouteConfiguration, routes routeEncodings) ([]byte, error) {
	type vhost struct {
		before, after []byte   // the virtual host's other fields, around its routes
		routes        [][]byte // each route's encoding
		size          int      // of the virtual host's encoding
	}
	before, after, err := encodeWithout(rc, routeConfigVirtualHostsField)
	if err != nil {
		return nil, err
	}
	size := len(before) + len(after)
	vhs := make([]vhost, len(rc.GetVirtualHosts()))
	for i, vh := range rc.GetVirtualHosts() {
		v := &vhs[i]
		if v.before, v.after, err = encodeWithout(vh, virtualHostRoutesField); err != nil {
			return nil, err
		}
		v.size = len(v.before) + len(v.after)
		v.routes = make([][]byte, len(vh.GetRoutes()))
		for j, rt := range vh.GetRoutes() {
			if v.routes[j], err = routes.encode(rt); err != nil {
				return nil, err
			}
			v.size += protowire.SizeTag(virtualHostRoutesField) + protowire.SizeBytes(len(v.routes[j]))
		}
		size += protowire.SizeTag(routeConfigVirtualHostsField) + protowire.SizeBytes(v.size)
	}
	out := make([]byte, 0, size)
	out = append(out, before...)
	for _, v := range vhs {
		out = protowire.AppendTag(out, routeConfigVirtualHostsField, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(v.size))
		out = append(out, v.before...)
		for _, r := range v.routes {
			out = protowire.AppendTag(out, virtualHostRoutesField, protowire.BytesType)
			out = protowire.AppendBytes(out, r)
		}
		out = append(out, v.after...)
	}
	return append(out, after...), nil
}

// Field numbers of RouteConfiguration.virtual_hosts and VirtualHost.routes.
const (
	routeConfigVirtualHostsField = 2
	virtualHostRoutesField       = 3
)

// encodeWithout is m's deterministic encoding without field num, split where that field
// goes: the fields numbered below it, and those above.
func encodeWithout(m proto.Message, num protowire.Number) (before, after []byte, err error) {
	src := m.ProtoReflect()
	others := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Number() != num {
			others.Set(fd, v) // shares v: others is only read
		}
		return true
	})
	enc, err := deterministic.Marshal(others.Interface())
	if err != nil {
		return nil, nil, err
	}
	for in := enc; len(in) > 0; {
		n, typ, tl := protowire.ConsumeTag(in)
		if tl < 0 {
			return nil, nil, protowire.ParseError(tl)
		}
		if n > num {
			break
		}
		fl := protowire.ConsumeFieldValue(n, typ, in[tl:])
		if fl < 0 {
			return nil, nil, protowire.ParseError(fl)
		}
		in = in[tl+fl:]
		before = enc[:len(enc)-len(in)]
	}
	return before, enc[len(before):], nil
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
