package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// jsonCodec is connect's protojson codec with a hand-written encoder for the
// answers that carry message lists (ListMessages, SaveTurn). protojson walks
// every field by reflection; on a page of 50 messages that was a fifth of
// the replica's CPU under load. The output is the proto3 JSON mapping that
// protojson writes (lowerCamelCase names, zero values left out, int64 as
// strings, enum names, RFC 3339 timestamps with 0, 3, 6 or 9 fractional
// digits), without protojson's randomised whitespace. Anything else, and
// any value the fast path is unsure of, goes to protojson.
//
// It pays for ListMessages only. make bench runs the Connect JSON loads
// on a second replica built without this file (-bench.protojson); on
// 2026-12-01, with the reduced run
//
//	cd bench && go test -tags bench -run '^TestBench$' -count=1 -v . -args -bench.out=/tmp/codec.md \
//	    -bench.protocols=connect-json-http1 -bench.streams= -bench.scale= -bench.profile=false
//
// Parley's CPU per ListMessages was 538 µs with it against 801 µs with
// protojson at 16 clients, 472 against 826 µs at 64; per SaveTurn (two
// messages) 722 against 730 and 643 against 618 µs, no difference beyond
// the noise of a machine that other processes kept about one core busy.
type jsonCodec struct {
	name string
	fast bool
}

// jsonCodecs returns the handler options installing jsonCodec under both
// names connect registers its JSON codec as.
func jsonCodecs() []connect.HandlerOption {
	fast := fastJSONMatchesSchema()
	return []connect.HandlerOption{
		connect.WithCodec(&jsonCodec{name: "json", fast: fast}),
		connect.WithCodec(&jsonCodec{name: "json; charset=utf-8", fast: fast}),
	}
}

func (c *jsonCodec) Name() string { return c.name }

func (c *jsonCodec) IsBinary() bool { return false }

func (c *jsonCodec) Marshal(message any) ([]byte, error) { return c.MarshalAppend(nil, message) }

func (c *jsonCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	if c.fast {
		var (
			out []byte
			ok  bool
		)
		switch m := message.(type) {
		case *parleyv1.ListMessagesResponse:
			out, ok = appendListMessagesResponse(dst, m)
		case *parleyv1.SaveTurnResponse:
			out, ok = appendSaveTurnResponse(dst, m)
		}
		if ok {
			return out, nil
		}
	}
	pm, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a proto.Message", message)
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, pm)
}

// MarshalStable is what connect clients use for GET requests; the server
// never needs it, but a codec of this name is expected to have it.
func (c *jsonCodec) MarshalStable(message any) ([]byte, error) {
	b, err := c.Marshal(message)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func (c *jsonCodec) Unmarshal(data []byte, message any) error {
	pm, ok := message.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a proto.Message", message)
	}
	if len(data) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	// As connect's own codec: unknown fields are dropped, so clients and
	// servers need not share a schema version.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}

// fastJSONMatchesSchema reports whether the messages the fast path writes
// have exactly the fields it knows. A field added to the proto turns the
// fast path off (and fails TestFastJSONCoversTheSchema) rather than being
// silently left out of answers.
func fastJSONMatchesSchema() bool {
	want := map[protoreflect.FullName][]string{
		"parley.v1.Message":              {"id", "conversation_id", "seq", "role", "content", "turn_id", "created_at"},
		"parley.v1.ListMessagesResponse": {"conversation_id", "messages", "next_page_token"},
		"parley.v1.SaveTurnResponse":     {"messages", "replayed"},
		"google.protobuf.Timestamp":      {"seconds", "nanos"},
	}
	for _, m := range []proto.Message{&parleyv1.Message{}, &parleyv1.ListMessagesResponse{}, &parleyv1.SaveTurnResponse{}, &timestamppb.Timestamp{}} {
		fields := m.ProtoReflect().Descriptor().Fields()
		names := want[m.ProtoReflect().Descriptor().FullName()]
		if fields.Len() != len(names) {
			return false
		}
		for i, name := range names {
			if f := fields.Get(i); string(f.Name()) != name || f.ContainingOneof() != nil {
				return false
			}
		}
	}
	return true
}

func appendListMessagesResponse(b []byte, m *parleyv1.ListMessagesResponse) ([]byte, bool) {
	start := len(b)
	b = append(b, '{')
	comma := false
	var ok bool
	if m.ConversationId != "" {
		if b, ok = appendField(b, &comma, "conversationId", m.ConversationId); !ok {
			return b[:start], false
		}
	}
	if len(m.Messages) > 0 {
		if b, ok = appendMessages(b, &comma, m.Messages); !ok {
			return b[:start], false
		}
	}
	if m.NextPageToken != "" {
		if b, ok = appendField(b, &comma, "nextPageToken", m.NextPageToken); !ok {
			return b[:start], false
		}
	}
	return append(b, '}'), true
}

func appendSaveTurnResponse(b []byte, m *parleyv1.SaveTurnResponse) ([]byte, bool) {
	start := len(b)
	b = append(b, '{')
	comma := false
	if len(m.Messages) > 0 {
		var ok bool
		if b, ok = appendMessages(b, &comma, m.Messages); !ok {
			return b[:start], false
		}
	}
	if m.Replayed {
		if comma {
			b = append(b, ',')
		}
		b = append(b, `"replayed":true`...)
	}
	return append(b, '}'), true
}

func appendMessages(b []byte, comma *bool, ms []*parleyv1.Message) ([]byte, bool) {
	if *comma {
		b = append(b, ',')
	}
	*comma = true
	b = append(b, `"messages":[`...)
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = appendMessage(b, m); !ok {
			return b, false
		}
	}
	return append(b, ']'), true
}

func appendMessage(b []byte, m *parleyv1.Message) ([]byte, bool) {
	if m == nil {
		return b, false
	}
	b = append(b, '{')
	comma := false
	var ok bool
	for _, f := range [...]struct{ name, value string }{{"id", m.Id}, {"conversationId", m.ConversationId}} {
		if f.value != "" {
			if b, ok = appendField(b, &comma, f.name, f.value); !ok {
				return b, false
			}
		}
	}
	if m.Seq != 0 {
		b = appendKey(b, &comma, "seq")
		b = append(b, '"')
		b = strconv.AppendInt(b, m.Seq, 10)
		b = append(b, '"')
	}
	if m.Role != 0 {
		b = appendKey(b, &comma, "role")
		if name, known := parleyv1.Role_name[int32(m.Role)]; known {
			b = append(b, '"')
			b = append(b, name...)
			b = append(b, '"')
		} else {
			b = strconv.AppendInt(b, int64(m.Role), 10)
		}
	}
	for _, f := range [...]struct{ name, value string }{{"content", m.Content}, {"turnId", m.TurnId}} {
		if f.value != "" {
			if b, ok = appendField(b, &comma, f.name, f.value); !ok {
				return b, false
			}
		}
	}
	if m.CreatedAt != nil {
		b = appendKey(b, &comma, "createdAt")
		if b, ok = appendTimestamp(b, m.CreatedAt); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

func appendKey(b []byte, comma *bool, name string) []byte {
	if *comma {
		b = append(b, ',')
	}
	*comma = true
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

func appendField(b []byte, comma *bool, name, value string) ([]byte, bool) {
	return appendString(appendKey(b, comma, name), value)
}

const hexDigits = "0123456789abcdef"

// plainByte marks the ASCII bytes a JSON string holds as they are.
var plainByte = func() (t [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString writes s as a JSON string, escaping what protojson escapes;
// invalid UTF-8 (which protojson refuses) is not written.
func appendString(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if plainByte[c] {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return b, false
			}
			i += n
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"'), true
}

// Timestamp range of the JSON mapping: 0001-01-01 to 9999-12-31.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

func appendTimestamp(b []byte, ts *timestamppb.Timestamp) ([]byte, bool) {
	secs, nanos := ts.GetSeconds(), ts.GetNanos()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos >= 1e9 {
		return b, false
	}
	b = append(b, '"')
	b = time.Unix(secs, 0).UTC().AppendFormat(b, "2006-01-02T15:04:05")
	if nanos != 0 {
		var frac [10]byte
		frac[0] = '.'
		n := nanos
		for i := 9; i >= 1; i-- {
			frac[i] = byte('0' + n%10)
			n /= 10
		}
		digits := 9
		for digits > 3 && string(frac[digits-2:digits+1]) == "000" {
			digits -= 3
		}
		b = append(b, frac[:digits+1]...)
	}
	return append(b, 'Z', '"'), true
}
