package rpc

import (
	"strings"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// U+0000 is valid UTF-8, so a proto string may hold it, but PostgreSQL text
// cannot: a request carrying one would fail deep in a store as an internal
// error. The validator refuses it in every string of every request (nested
// messages, list elements, map keys and values, oneofs), so no field, present
// or future, depends on someone remembering a rule for it.

// nulRuleID is the protovalidate rule the refusal reads as: every string
// field behaves as if it declared `string.not_contains = "\u0000"`.
const nulRuleID = "string.not_contains"

// nulError returns a *protovalidate.ValidationError naming the first string
// of m that contains U+0000, or nil when there is none. The clean case walks
// the message without allocating: it runs on every request.
func nulError(m protoreflect.Message) error {
	h := findNUL(m)
	if h == nil {
		return nil
	}
	// findNUL builds the path innermost first, on its way out.
	for i, j := 0, len(h.path)-1; i < j; i, j = i+1, j-1 {
		h.path[i], h.path[j] = h.path[j], h.path[i]
	}
	v := validate.Violation_builder{
		Field:   validate.FieldPath_builder{Elements: h.path}.Build(),
		RuleId:  new(nulRuleID),
		Message: new("value must not contain the NUL character (U+0000)"),
	}.Build()
	if h.forKey {
		v.SetForKey(true)
	}
	return &protovalidate.ValidationError{Violations: []*protovalidate.Violation{{
		Proto:           v,
		FieldValue:      h.value,
		FieldDescriptor: h.field,
	}}}
}

// nulHit is where findNUL found U+0000.
type nulHit struct {
	path   []*validate.FieldPathElement // innermost element first
	field  protoreflect.FieldDescriptor
	value  protoreflect.Value
	forKey bool // the map key holds it, not the value
}

func findNUL(m protoreflect.Message) *nulHit {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !mayHoldString(fd) {
			continue
		}
		// An unset string reads as "", and Get is cheaper than Has; other
		// unset fields are not worth reading.
		singularString := fd.Kind() == protoreflect.StringKind && !fd.IsList()
		if !singularString && !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		var h *nulHit
		switch {
		case fd.IsMap():
			h = mapNUL(fd, v.Map())
		case fd.IsList():
			h = listNUL(fd, v.List())
		default:
			if h = valueNUL(fd, v); h != nil {
				h.path = append(h.path, pathElement(fd))
			}
		}
		if h != nil {
			return h
		}
	}
	return nil
}

// valueNUL looks into one value of fd: a string, or a message to walk.
func valueNUL(fd protoreflect.FieldDescriptor, v protoreflect.Value) *nulHit {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if strings.IndexByte(v.String(), 0) >= 0 {
			return &nulHit{field: fd, value: v}
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return findNUL(v.Message())
	}
	return nil
}

func listNUL(fd protoreflect.FieldDescriptor, l protoreflect.List) *nulHit {
	for i := range l.Len() {
		if h := valueNUL(fd, l.Get(i)); h != nil {
			e := pathElement(fd)
			e.SetIndex(uint64(i))
			h.path = append(h.path, e)
			return h
		}
	}
	return nil
}

func mapNUL(fd protoreflect.FieldDescriptor, m protoreflect.Map) *nulHit {
	var h *nulHit
	var key protoreflect.MapKey
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		if kd := fd.MapKey(); kd.Kind() == protoreflect.StringKind && strings.IndexByte(k.String(), 0) >= 0 {
			h = &nulHit{field: fd, value: k.Value(), forKey: true}
		} else {
			h = valueNUL(fd.MapValue(), v)
		}
		key = k
		return h == nil
	})
	if h == nil {
		return nil
	}
	e := pathElement(fd)
	kd, vd := fd.MapKey(), fd.MapValue()
	e.SetKeyType(descriptorpb.FieldDescriptorProto_Type(kd.Kind()))
	e.SetValueType(descriptorpb.FieldDescriptorProto_Type(vd.Kind()))
	switch kd.Kind() {
	case protoreflect.StringKind:
		e.SetStringKey(key.String())
	case protoreflect.BoolKind:
		e.SetBoolKey(key.Bool())
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		e.SetUintKey(key.Uint())
	default:
		e.SetIntKey(key.Int())
	}
	h.path = append(h.path, e)
	return h
}

// mayHoldString reports whether a value of fd can contain a string, so that
// fields that cannot (numbers, bytes, enums) cost no Get.
func mayHoldString(fd protoreflect.FieldDescriptor) bool {
	if fd.IsMap() {
		return fd.MapKey().Kind() == protoreflect.StringKind || mayHoldString(fd.MapValue())
	}
	switch fd.Kind() {
	case protoreflect.StringKind, protoreflect.MessageKind, protoreflect.GroupKind:
		return true
	}
	return false
}

// pathElement names fd the way protovalidate's violations do.
func pathElement(fd protoreflect.FieldDescriptor) *validate.FieldPathElement {
	e := &validate.FieldPathElement{}
	e.SetFieldNumber(int32(fd.Number()))
	e.SetFieldType(descriptorpb.FieldDescriptorProto_Type(fd.Kind()))
	e.SetFieldName(string(fd.Name()))
	return e
}
