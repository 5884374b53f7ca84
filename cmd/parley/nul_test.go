package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestNULRefusedInEveryRequestString finds every string field of every
// request of every service in the generated descriptors (nested messages,
// lists and maps included), sends each request with U+0000 in that one
// string over Connect (JSON and binary), gRPC, gRPC-Web and, where the
// method has a REST path, REST, and expects invalid_argument naming the
// field. PostgreSQL text cannot hold U+0000, so anything else would reach a
// store and fail there.
func TestNULRefusedInEveryRequestString(t *testing.T) {
	s := startServer(t, baseEnv(t, testenv.DatabaseURL(t)))
	ctx := context.Background()
	auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base)
	reg, err := auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: "nul@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	refresh := reg.Msg.GetTokens().GetRefreshToken()
	// Each case gets an access token of its own, so that a Logout that
	// wrongly went through spoils no other case.
	accessToken := func(t *testing.T) string {
		t.Helper()
		res, err := auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: refresh}))
		if err != nil {
			t.Fatal(err)
		}
		refresh = res.Msg.GetTokens().GetRefreshToken()
		return res.Msg.GetTokens().GetAccessToken()
	}

	seen, seenREST := map[string]bool{}, map[string]bool{} // "Method path"
	var services int
	protoregistry.GlobalFiles.RangeFilesByPackage("parley.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			services++
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				for _, c := range nulCases(m.Input(), 0) {
					seen[string(m.Name())+" "+c.path] = true
					t.Run(fmt.Sprintf("%s/%s/%s", svc.Name(), m.Name(), c.path), func(t *testing.T) {
						tok := accessToken(t)
						for _, p := range protocols {
							if c.binaryOnly && p.name == "connect-json" {
								continue
							}
							err := callDynamic(ctx, p.client(), s.base, m, c.msg, tok, p.opts...)
							checkNULRefusal(t, p.name, err, c.path)
						}
						if rule, ok := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule); ok && rule != nil && !c.binaryOnly {
							checkRESTNULRefusal(t, s.base, rule, c, tok)
							seenREST[string(m.Name())+" "+c.path] = true
						}
					})
				}
			}
		}
		return true
	})
	// The walk must not be vacuous: these are the strings the issue named.
	if services != len(serviceNamesForTest) {
		t.Errorf("found %d services, want %d", services, len(serviceNamesForTest))
	}
	for _, want := range []string{
		"SaveTurn user_message", "SaveTurn assistant_message", "SaveTurn turn_id", "CreateConversation title",
		"UpdateProfile display_name", "CreateRoom name", "Register email", "Login email", "UploadFile filename",
		"WatchMessages conversation_id", "ListMessages page_token", "Logout refresh_token",
	} {
		if !seen[want] {
			t.Errorf("no case for %s (cases: %v)", want, seen)
		}
	}
	// REST carries a string in the path, the query or the body.
	for _, want := range []string{"ListMessages conversation_id", "ListMessages page_token", "SaveTurn user_message"} {
		if !seenREST[want] {
			t.Errorf("no REST case for %s (cases: %v)", want, seenREST)
		}
	}
}

// nulCase is a request with U+0000 in the string at path, protovalidate's
// name for it.
type nulCase struct {
	path string
	msg  *dynamicpb.Message
	// binaryOnly marks a string the JSON form cannot carry: protojson
	// refuses to write a FieldMask path that is not a lower_snake name, so
	// only the binary protocols can send U+0000 in one.
	binaryOnly bool
}

// nulCases returns one request of type md per string field it can hold, to a
// depth that recursive types (google.protobuf.Struct) cannot exhaust.
func nulCases(md protoreflect.MessageDescriptor, depth int) []nulCase {
	if depth > 3 {
		return nil
	}
	var cases []nulCase
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := string(fd.Name())
		with := func(path string, set func(m *dynamicpb.Message)) {
			m := dynamicpb.NewMessage(md)
			set(m)
			cases = append(cases, nulCase{path: path, msg: m})
		}
		switch {
		case fd.IsMap():
			kd, vd := fd.MapKey(), fd.MapValue()
			if kd.Kind() == protoreflect.StringKind {
				with(name+"["+strconv.Quote("a\x00b")+"]", func(m *dynamicpb.Message) {
					mp := m.Mutable(fd).Map()
					mp.Set(protoreflect.ValueOfString("a\x00b").MapKey(), mp.NewValue())
				})
			}
			key, keyText := mapKey(kd)
			for _, sub := range valueCases(vd, depth) {
				with(name+"["+keyText+"]"+sub.path, func(m *dynamicpb.Message) { m.Mutable(fd).Map().Set(key, sub.value) })
			}
		case fd.IsList():
			for _, sub := range valueCases(fd, depth) {
				with(name+"[0]"+sub.path, func(m *dynamicpb.Message) { m.Mutable(fd).List().Append(sub.value) })
				if md.FullName() == "google.protobuf.FieldMask" || sub.binaryOnly {
					cases[len(cases)-1].binaryOnly = true
				}
			}
		default:
			for _, sub := range valueCases(fd, depth) {
				with(name+sub.path, func(m *dynamicpb.Message) { m.Set(fd, sub.value) })
				cases[len(cases)-1].binaryOnly = sub.binaryOnly
			}
		}
	}
	return cases
}

// valueCase is one value of a field with U+0000 somewhere inside, at path
// below the field ("" for the string itself).
type valueCase struct {
	path       string
	value      protoreflect.Value
	binaryOnly bool
}

func valueCases(fd protoreflect.FieldDescriptor, depth int) []valueCase {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return []valueCase{{value: protoreflect.ValueOfString("a\x00b")}}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		var out []valueCase
		for _, c := range nulCases(fd.Message(), depth+1) {
			out = append(out, valueCase{path: "." + c.path, value: protoreflect.ValueOfMessage(c.msg), binaryOnly: c.binaryOnly})
		}
		return out
	}
	return nil
}

// mapKey returns a valid key of kind kd and its text in a field path.
func mapKey(kd protoreflect.FieldDescriptor) (protoreflect.MapKey, string) {
	switch kd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("k").MapKey(), strconv.Quote("k")
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true).MapKey(), "true"
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(1).MapKey(), "1"
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(1).MapKey(), "1"
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1).MapKey(), "1"
	default:
		return protoreflect.ValueOfInt64(1).MapKey(), "1"
	}
}

// callDynamic calls method m with req through a client built from the
// descriptors alone, as the generated clients would.
func callDynamic(ctx context.Context, hc *http.Client, base string, m protoreflect.MethodDescriptor, req *dynamicpb.Message, tok string, opts ...connect.ClientOption) error {
	procedure := "/" + string(m.Parent().FullName()) + "/" + string(m.Name())
	opts = append([]connect.ClientOption{
		connect.WithSchema(m),
		connect.WithResponseInitializer(func(_ connect.Spec, msg any) error {
			*msg.(*dynamicpb.Message) = *dynamicpb.NewMessage(m.Output())
			return nil
		}),
	}, opts...)
	client := connect.NewClient[dynamicpb.Message, dynamicpb.Message](hc, base+procedure, opts...)
	r := bearer(connect.NewRequest(req), tok)
	switch {
	case !m.IsStreamingClient() && !m.IsStreamingServer():
		_, err := client.CallUnary(ctx, r)
		return err
	case m.IsStreamingServer() && !m.IsStreamingClient():
		stream, err := client.CallServerStream(ctx, r)
		if err != nil {
			return err
		}
		defer stream.Close()
		for stream.Receive() {
		}
		return stream.Err()
	}
	return fmt.Errorf("%s: client and bidi streams are not covered yet: extend callDynamic", procedure)
}

func checkNULRefusal(t *testing.T, protocol string, err error, path string) {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) || !connect.IsWireError(cerr) || cerr.Code() != connect.CodeInvalidArgument {
		t.Errorf("%s: %v, want invalid_argument", protocol, err)
		return
	}
	if !strings.Contains(cerr.Message(), path+": ") {
		t.Errorf("%s: message %q does not name %s", protocol, cerr.Message(), path)
	}
	var named bool
	for _, d := range cerr.Details() {
		if v, err := d.Value(); err == nil {
			if vs, ok := v.(*validate.Violations); ok && len(vs.GetViolations()) == 1 {
				named = protovalidate.FieldPathString(vs.GetViolations()[0].GetField()) == path
			}
		}
	}
	if !named {
		t.Errorf("%s: no buf.validate.Violations detail naming %s", protocol, path)
	}
}

// checkRESTNULRefusal sends the case through the method's REST path: path
// variables in the URL (a placeholder UUID unless the case's NUL is there),
// the rest as the JSON body or, without one, the query.
func checkRESTNULRefusal(t *testing.T, base string, rule *annotations.HttpRule, c nulCase, tok string) {
	t.Helper()
	var method, tmpl string
	switch {
	case rule.GetGet() != "":
		method, tmpl = http.MethodGet, rule.GetGet()
	case rule.GetPost() != "":
		method, tmpl = http.MethodPost, rule.GetPost()
	case rule.GetPut() != "":
		method, tmpl = http.MethodPut, rule.GetPut()
	case rule.GetPatch() != "":
		method, tmpl = http.MethodPatch, rule.GetPatch()
	case rule.GetDelete() != "":
		method, tmpl = http.MethodDelete, rule.GetDelete()
	default:
		t.Fatalf("REST rule %v: pattern not covered", rule)
	}
	msg := proto.Clone(c.msg).(*dynamicpb.Message)
	fields := msg.Descriptor().Fields()
	var path strings.Builder
	for rest := tmpl; rest != ""; {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			path.WriteString(rest)
			break
		}
		end := strings.IndexByte(rest, '}')
		path.WriteString(rest[:open])
		fd := fields.ByName(protoreflect.Name(rest[open+1 : end]))
		if fd == nil || fd.Kind() != protoreflect.StringKind {
			t.Fatalf("REST template %s: variable %s not covered", tmpl, rest[open+1:end])
		}
		v := msg.Get(fd).String()
		if v == "" {
			v = "00000000-0000-0000-0000-000000000000"
		}
		path.WriteString(url.PathEscape(v))
		msg.Clear(fd)
		rest = rest[end+1:]
	}
	var body io.Reader
	target := base + path.String()
	switch rule.GetBody() {
	case "*":
		b, err := protojson.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	case "":
		q := url.Values{}
		var err error
		var mapField protoreflect.FieldDescriptor
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.IsMap() {
				mapField = fd
				return false
			}
			if fd.Kind() != protoreflect.StringKind || fd.IsList() {
				err = fmt.Errorf("query field %s not covered", fd.Name())
				return false
			}
			q.Set(string(fd.Name()), v.String())
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		if mapField != nil {
			// vanguard's query parameters have no syntax for a map, so
			// REST cannot send this case; the RPC protocols did.
			t.Logf("REST %s %s: map %s cannot travel in a query", method, tmpl, mapField.Name())
			return
		}
		target += "?" + q.Encode()
	default:
		t.Fatalf("REST body %q not covered", rule.GetBody())
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var status struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(raw, &status) != nil ||
		status.Code != int(connect.CodeInvalidArgument) || !strings.Contains(status.Message, c.path+": ") {
		t.Errorf("REST %s %s: %d %s, want 400 invalid_argument naming %s", method, tmpl, resp.StatusCode, raw, c.path)
	}
}
