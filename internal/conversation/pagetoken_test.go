package conversation

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/keyset"
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
		keyset.Encode(keyset.Conversations, keyset.Position{CreatedAt: time.Now(), ID: uuid.New()}),
		string(make([]byte, 100)),
		// Found by FuzzMessageToken: spare base64 bits and a redundant
		// varint byte made second spellings of valid tokens.
		"AQK0001", "AQKBAA", valid[:2] + "\n" + valid[2:],
	} {
		if _, err := decodeMessageToken(s); !errors.Is(err, ErrInvalidPageToken) {
			t.Errorf("decodeMessageToken(%q) = %v, want ErrInvalidPageToken", s, err)
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
