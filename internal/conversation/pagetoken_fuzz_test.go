package conversation

import (
	"errors"
	"testing"
)

// FuzzMessageToken checks that decodeMessageToken takes exactly the tokens
// encodeMessageToken writes, each for a known order and a seq PostgreSQL's
// bigint holds, and refuses everything else as ErrInvalidPageToken; and
// that every valid position comes back unchanged.
func FuzzMessageToken(f *testing.F) {
	f.Add(encodeMessageToken(messageToken{Order: OrderNewestFirst, Seq: 1}), uint8(OrderNewestFirst), int64(1))
	f.Add(encodeMessageToken(messageToken{Order: OrderOldestFirst, Seq: 1 << 40}), uint8(OrderOldestFirst), int64(1<<62))
	f.Add("AQE", uint8(0), int64(0))
	f.Add("garbage!", uint8(9), int64(-1))
	// seq 1 written with a redundant continuation byte.
	f.Add(tokenEncoding.EncodeToString([]byte{messageTokenVersion, byte(OrderOldestFirst), 0x81, 0x00}), uint8(OrderOldestFirst), int64(1<<62+1))
	f.Fuzz(func(t *testing.T, s string, order uint8, seq int64) {
		tok, err := decodeMessageToken(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidPageToken) || tok != (messageToken{}) {
				t.Fatalf("decodeMessageToken(%q) = %+v, %v; want ErrInvalidPageToken", s, tok, err)
			}
		} else {
			if tok.Order != OrderNewestFirst && tok.Order != OrderOldestFirst || tok.Seq < 1 || tok.Seq > 1<<62 {
				t.Fatalf("decodeMessageToken(%q) accepted %+v", s, tok)
			}
			if again := encodeMessageToken(tok); again != s {
				t.Fatalf("decodeMessageToken(%q) = %+v, which encodes as %q: a second spelling of one position", s, tok, again)
			}
		}

		want := messageToken{Order: Order(order), Seq: seq}
		got, err := decodeMessageToken(encodeMessageToken(want))
		valid := (want.Order == OrderNewestFirst || want.Order == OrderOldestFirst) && seq >= 1 && seq <= 1<<62
		if valid != (err == nil) || valid && got != want {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", want, got, err)
		}
	})
}
