package conversation

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestMessageTokenRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tok := range []messageToken{
		{Order: OrderNewestFirst, Seq: 1},
		{Order: OrderOldestFirst, Seq: 127},
		{Order: OrderNewestFirst, Seq: 1 << 40},
	} {
		s := encodeMessageToken(tok)
		got, err := decodeMessageToken(s)
		if err != nil || got != tok {
			t.Errorf("decode(encode(%+v)) = %+v, %v (token %q)", tok, got, err, s)
		}
	}
}

func TestMessageTokenRejectsGarbage(t *testing.T) {
	t.Parallel()
	valid := encodeMessageToken(messageToken{Order: OrderOldestFirst, Seq: 300})
	for _, s := range []string{
		"garbage!", "AA", "AQE", valid + "A", valid[:len(valid)-1],
		tokenEncoding.EncodeToString([]byte{messageTokenVersion, 9, 1}), // unknown order
		tokenEncoding.EncodeToString([]byte{messageTokenVersion, 1, 0}), // seq 0
		tokenEncoding.EncodeToString([]byte{conversationTokenVersion, 1, 1}),
		encodeConversationToken(ConversationCursor{CreatedAt: time.Now(), ID: uuid.New()}),
		string(make([]byte, 100)),
	} {
		if _, err := decodeMessageToken(s); !errors.Is(err, ErrInvalidPageToken) {
			t.Errorf("decodeMessageToken(%q) = %v, want ErrInvalidPageToken", s, err)
		}
	}
}

func TestConversationTokenRoundTrip(t *testing.T) {
	t.Parallel()
	c := ConversationCursor{CreatedAt: time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC), ID: uuid.Must(uuid.NewV7())}
	got, err := decodeConversationToken(encodeConversationToken(c))
	if err != nil || !got.CreatedAt.Equal(c.CreatedAt) || got.ID != c.ID {
		t.Errorf("round trip = %+v, %v; want %+v", got, err, c)
	}
	for _, s := range []string{"", "x", encodeMessageToken(messageToken{Order: OrderNewestFirst, Seq: 5}), encodeConversationToken(c)[:10]} {
		if _, err := decodeConversationToken(s); !errors.Is(err, ErrInvalidPageToken) {
			t.Errorf("decodeConversationToken(%q) = %v", s, err)
		}
	}
}

func BenchmarkMessageTokenCodec(b *testing.B) {
	tok := messageToken{Order: OrderNewestFirst, Seq: 123456}
	for b.Loop() {
		if _, err := decodeMessageToken(encodeMessageToken(tok)); err != nil {
			b.Fatal(err)
		}
	}
}
