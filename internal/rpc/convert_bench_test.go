package rpc

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

func benchmarkMessages() []conversation.Message {
	conv := uuid.New()
	created := time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC)
	ms := make([]conversation.Message, 50)
	for i := range ms {
		ms[i] = conversation.Message{
			ID: uuid.New(), ConversationID: conv, Seq: int64(60 - i), Role: conversation.RoleUser,
			Content: "Could you move my dentist appointment to Thursday?", TurnID: "turn-1", CreatedAt: created,
		}
	}
	return ms
}

func TestMessagesToProtoMatchesMessageToProto(t *testing.T) {
	ms := benchmarkMessages()
	ms[3].ConversationID = uuid.New() // pages are one conversation, but nothing relies on it
	ms[4].CreatedAt = time.Time{}
	got := messagesToProto(ms)
	want := make([]*parleyv1.Message, len(ms))
	for i, m := range ms {
		want[i] = messageToProto(m)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("messagesToProto (-one by one +batched):\n%s", diff)
	}
}

// BenchmarkMessagesToProto is the conversion of a 50-message page.
func BenchmarkMessagesToProto(b *testing.B) {
	ms := benchmarkMessages()
	b.ReportAllocs()
	for b.Loop() {
		_ = messagesToProto(ms)
	}
}
