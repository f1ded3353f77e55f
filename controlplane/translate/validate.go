package translate

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

type allValidator interface{ ValidateAll() error }

// ValidateDeep runs the generated protoc-gen-validate rules on m and on every message
// packed in an Any anywhere inside it. go-control-plane's ValidateAll stops at Any fields,
// which is where all of Envoy's filter and transport socket configs live.
func ValidateDeep(m proto.Message) error {
	if v, ok := m.(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	return walkAnys(m.ProtoReflect())
}

func walkAnys(m protoreflect.Message) error {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
		}
		return ValidateDeep(inner)
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = walkAnys(l.Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				err = walkAnys(mv.Message())
				return err == nil
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			err = walkAnys(v.Message())
		}
		return err == nil
	})
	return err
}

// toAny validates m and packs it deterministically. Validating here, bottom-up, is how
// every typed_config gets checked without the cost of unpacking each Any again afterwards
// (Resources.Validate then checks the outer messages), so the translator makes all its
// Anys here and nowhere else; the golden tests also run the full ValidateDeep walk over
// every output.
//
// Deterministic packing matters too: anypb.New does not sort map fields (the access log's
// JSON format is a Struct), so every rebuild would get a new content hash and push an
// unchanged listener again.
func toAny(m proto.Message) (*anypb.Any, error) {
	if v, ok := m.(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, err
	}
	return a, nil
}
