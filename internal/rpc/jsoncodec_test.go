package rpc

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

func TestFastJSONCoversTheSchema(t *testing.T) {
	if !fastJSONMatchesSchema() {
		t.Fatal("Message, ListMessagesResponse or SaveTurnResponse changed: teach jsoncodec.go the new fields")
	}
}

// randomMessage covers every field's zero and non-zero values, escapes,
// multi-byte text and each timestamp precision.
func randomMessage(r *rand.Rand) *parleyv1.Message {
	pick := func(options ...string) string { return options[r.IntN(len(options))] }
	m := &parleyv1.Message{
		Id:             pick("", "0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b"),
		ConversationId: pick("", "00000000-0000-0000-0000-000000000001"),
		Seq:            []int64{0, 1, 60, 1 << 53, -5}[r.IntN(5)],
		Role:           parleyv1.Role([]int32{0, 1, 2, 3, 42}[r.IntN(5)]),
		Content:        pick("", "hello", "quote \" backslash \\ slash / <tag> & amp", "tab\tnl\nctl\x01\x1f del\x7f", "héllo wörld — 日本語 🎙️", "\u2028\u2029"),
		TurnId:         pick("", "turn-1_A"),
	}
	if r.IntN(5) > 0 {
		secs := []int64{0, 1764100000, -62135596800, 253402300799}[r.IntN(4)]
		nanos := []int32{0, 1, 120000000, 123456000, 123456789, 999999999}[r.IntN(6)]
		m.CreatedAt = &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}
	}
	return m
}

func TestFastJSONMatchesProtojson(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	c := &jsonCodec{name: "json", fast: true}
	for i := range 2000 {
		var msg proto.Message
		var ms []*parleyv1.Message
		for range r.IntN(4) {
			ms = append(ms, randomMessage(r))
		}
		if i%2 == 0 {
			msg = &parleyv1.ListMessagesResponse{
				ConversationId: []string{"", "00000000-0000-0000-0000-000000000001"}[r.IntN(2)],
				Messages:       ms,
				NextPageToken:  []string{"", "bmV4dA"}[r.IntN(2)],
			}
		} else {
			msg = &parleyv1.SaveTurnResponse{Messages: ms, Replayed: r.IntN(2) == 0}
		}
		fast, err := c.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		slow, err := protojson.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		var fastV, slowV any
		if err := json.Unmarshal(fast, &fastV); err != nil {
			t.Fatalf("fast output is not JSON: %v\n%s", err, fast)
		}
		if err := json.Unmarshal(slow, &slowV); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fastV, slowV) {
			t.Fatalf("fast and protojson differ:\nfast %s\nslow %s", fast, slow)
		}
		back := msg.ProtoReflect().New().Interface()
		if err := c.Unmarshal(fast, back); err != nil || !proto.Equal(back, msg) {
			t.Fatalf("round trip: %v\n%s", err, fast)
		}
	}
}

func TestFastJSONFallsBackWhereProtojsonRefuses(t *testing.T) {
	c := &jsonCodec{name: "json", fast: true}
	for name, m := range map[string]*parleyv1.Message{
		"invalid UTF-8":      {Content: "bad \xff byte"},
		"timestamp too late": {CreatedAt: &timestamppb.Timestamp{Seconds: 253402300800}},
		"negative nanos":     {CreatedAt: &timestamppb.Timestamp{Nanos: -1}},
	} {
		_, fastErr := c.Marshal(&parleyv1.SaveTurnResponse{Messages: []*parleyv1.Message{m}})
		_, slowErr := protojson.Marshal(&parleyv1.SaveTurnResponse{Messages: []*parleyv1.Message{m}})
		if (fastErr == nil) != (slowErr == nil) {
			t.Errorf("%s: codec error %v, protojson error %v", name, fastErr, slowErr)
		}
	}
}

func benchmarkPage() *parleyv1.ListMessagesResponse {
	page := &parleyv1.ListMessagesResponse{ConversationId: "00000000-0000-0000-0000-000000000001", NextPageToken: "bmV4dA"}
	created := time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC)
	for i := range 50 {
		content := "Could you move my dentist appointment from Tuesday afternoon to Thursday morning, around ten if possible?"
		role := parleyv1.Role_ROLE_USER
		if i%2 == 1 {
			content, role = strings.Repeat("Sure. I found an opening on Thursday at 10:15 with Dr. Patel; I have moved it. ", 3), parleyv1.Role_ROLE_ASSISTANT
		}
		page.Messages = append(page.Messages, &parleyv1.Message{
			Id: "0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b", ConversationId: page.ConversationId, Seq: int64(60 - i),
			Role: role, Content: content, TurnId: fmt.Sprintf("turn-%d", 30-i/2), CreatedAt: timestamppb.New(created),
		})
	}
	return page
}

// BenchmarkListMessagesJSON is the answer of a 50-message ListMessages over
// Connect JSON: the codec's fast path against protojson.
func BenchmarkListMessagesJSON(b *testing.B) {
	page := benchmarkPage()
	for _, c := range []struct {
		name  string
		codec *jsonCodec
	}{{"fast", &jsonCodec{name: "json", fast: true}}, {"protojson", &jsonCodec{name: "json"}}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				var err error
				buf, err = c.codec.MarshalAppend(buf[:0], page)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}
