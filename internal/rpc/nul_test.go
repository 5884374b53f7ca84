package rpc

import (
	"errors"
	"strings"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// TestNULErrorFindsEveryShape checks the walk on the shapes Parley's requests
// do not use yet: structpb nests messages in map values, oneofs and lists.
func TestNULErrorFindsEveryShape(t *testing.T) {
	t.Parallel()
	str := structpb.NewStringValue
	list := func(vs ...*structpb.Value) *structpb.Value {
		return structpb.NewListValue(&structpb.ListValue{Values: vs})
	}
	obj := func(fields map[string]*structpb.Value) *structpb.Struct { return &structpb.Struct{Fields: fields} }
	tests := []struct {
		name   string
		msg    proto.Message
		path   string // "" for clean
		forKey bool
	}{
		{name: "clean request", msg: &parleyv1.SaveTurnRequest{ConversationId: "c", UserMessage: "hi", AssistantMessage: "hello"}},
		{name: "clean nested", msg: obj(map[string]*structpb.Value{"a": list(str("x"), structpb.NewNumberValue(1)), "b": structpb.NewStructValue(obj(map[string]*structpb.Value{"c": str("y")}))})},
		{name: "top-level field", msg: &parleyv1.SaveTurnRequest{UserMessage: "hi", AssistantMessage: "a\x00b"}, path: "assistant_message"},
		{name: "map value in a oneof", msg: obj(map[string]*structpb.Value{"k": str("\x00")}), path: `fields["k"].string_value`},
		{name: "map key", msg: obj(map[string]*structpb.Value{"k\x00": structpb.NewNullValue()}), path: `fields["k\x00"]`, forKey: true},
		{name: "list element", msg: obj(map[string]*structpb.Value{"l": list(structpb.NewBoolValue(true), str("ok"), str("x\x00"))}), path: `fields["l"].list_value.values[2].string_value`},
		{name: "deep", msg: obj(map[string]*structpb.Value{"a": structpb.NewStructValue(obj(map[string]*structpb.Value{"b": list(list(str("\x00")))}))}),
			path: `fields["a"].struct_value.fields["b"].list_value.values[0].list_value.values[0].string_value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := nulError(tt.msg.ProtoReflect())
			if tt.path == "" {
				if err != nil {
					t.Fatalf("nulError = %v, want nil", err)
				}
				return
			}
			var verr *protovalidate.ValidationError
			if !errors.As(err, &verr) || len(verr.Violations) != 1 {
				t.Fatalf("nulError = %v, want one violation", err)
			}
			v := verr.Violations[0].Proto
			if got := protovalidate.FieldPathString(v.GetField()); got != tt.path {
				t.Errorf("path = %q, want %q", got, tt.path)
			}
			if v.GetForKey() != tt.forKey || v.GetRuleId() != nulRuleID {
				t.Errorf("violation %v: want for_key %v, rule %s", v, tt.forKey, nulRuleID)
			}
		})
	}
}

// TestValidatorRefusesNULWithADetail checks what a client gets: invalid
// argument, the field named in the message and a buf.validate.Violations
// detail, as for any protovalidate rule.
func TestValidatorRefusesNULWithADetail(t *testing.T) {
	t.Parallel()
	v, err := newValidator()
	if err != nil {
		t.Fatal(err)
	}
	err = v.validate(&parleyv1.CreateRoomRequest{Name: "room\x00"})
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeInvalidArgument || !strings.Contains(cerr.Message(), "name: ") {
		t.Fatalf("validate = %v, want invalid_argument naming name", err)
	}
	if len(cerr.Details()) != 1 {
		t.Fatalf("details = %v, want one", cerr.Details())
	}
	d, err := cerr.Details()[0].Value()
	if err != nil {
		t.Fatal(err)
	}
	vs, ok := d.(*validate.Violations)
	if !ok || len(vs.GetViolations()) != 1 || protovalidate.FieldPathString(vs.GetViolations()[0].GetField()) != "name" {
		t.Fatalf("detail = %v, want the violation of name", d)
	}
}

// TestNULErrorDoesNotAllocate: the walk runs on every request, SaveTurn's
// included, so the clean case must cost no garbage.
func TestNULErrorDoesNotAllocate(t *testing.T) {
	for _, msg := range cleanRequests() {
		m := msg.ProtoReflect()
		if n := testing.AllocsPerRun(100, func() { _ = nulError(m) }); n != 0 {
			t.Errorf("%s: %v allocations per clean walk, want 0", m.Descriptor().FullName(), n)
		}
	}
}

func cleanRequests() []proto.Message {
	return []proto.Message{
		&parleyv1.SaveTurnRequest{ConversationId: "0b8f6f0e-7a4e-4c51-9d2b-8c1f4b7e2a10", TurnId: "turn-1",
			UserMessage: strings.Repeat("What is the weather like? ", 40), AssistantMessage: strings.Repeat("Sunny and warm. ", 60)},
		&parleyv1.RegisterRequest{Email: "a@example.com", Password: "correct horse", DisplayName: "A"},
		&parleyv1.ListMessagesRequest{ConversationId: "0b8f6f0e-7a4e-4c51-9d2b-8c1f4b7e2a10", PageSize: 50, PageToken: "abc"},
	}
}

// BenchmarkNULCheck measures the walk of a clean SaveTurn request (about
// 2 KB of text), beside protovalidate's own validation of it for scale.
func BenchmarkNULCheck(b *testing.B) {
	msg := cleanRequests()[0]
	b.Run("nul", func(b *testing.B) {
		m := msg.ProtoReflect()
		b.ReportAllocs()
		for b.Loop() {
			if err := nulError(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protovalidate", func(b *testing.B) {
		v, err := protovalidate.New()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := v.Validate(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}
