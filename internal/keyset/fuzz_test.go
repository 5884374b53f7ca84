package keyset

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

// FuzzDecode checks that Decode takes exactly the tokens Encode writes: an
// accepted token is the encoding of the position it decodes to, in the list
// it was decoded for, at a time PostgreSQL can compare against; anything
// else is ErrInvalidToken. And every position Encode can be given in that
// range comes back unchanged.
func FuzzDecode(f *testing.F) {
	id := uuid.MustParse("0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b")
	f.Add(Encode(Rooms, Position{CreatedAt: time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC), ID: id}), byte(Rooms), int64(1764072000123456), id[:])
	f.Add(Encode(Files, Position{ID: id}), byte(Rooms), int64(0), id[:])
	f.Add("", byte(Conversations), int64(-1), []byte{})
	f.Add("Aw", byte(Rooms), int64(1), []byte{1})
	f.Add("!!!", byte(Rooms), int64(1<<62), []byte("0123456789abcdef"))
	// A varint written with a redundant continuation byte.
	f.Add(base64.RawURLEncoding.EncodeToString(append([]byte{byte(Rooms), 0x80, 0x00}, id[:]...)), byte(Rooms), int64(0), id[:])
	f.Fuzz(func(t *testing.T, token string, list byte, micros int64, idBytes []byte) {
		l := List(list)
		p, err := Decode(l, token)
		switch {
		case err != nil:
			if !errors.Is(err, ErrInvalidToken) || p != nil {
				t.Fatalf("Decode(%q) = %v, %v; want ErrInvalidToken", token, p, err)
			}
		case token == "":
			if p != nil {
				t.Fatalf("the empty token decoded to %+v, want the first page", p)
			}
		default:
			if p.CreatedAt.Before(minTime) || p.CreatedAt.After(maxTime) {
				t.Fatalf("Decode(%q) accepted %v, outside what PostgreSQL holds", token, p.CreatedAt)
			}
			if again := Encode(l, *p); again != token {
				t.Fatalf("Decode(%q) = %+v, which encodes as %q: a second spelling of one position", token, p, again)
			}
		}

		var want Position
		copy(want.ID[:], idBytes)
		want.CreatedAt = time.UnixMicro(micros).UTC()
		got, err := Decode(l, Encode(l, want))
		if want.CreatedAt.Before(minTime) || want.CreatedAt.After(maxTime) {
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("a position at %v decoded (%v, %v), want ErrInvalidToken", want.CreatedAt, got, err)
			}
			return
		}
		if err != nil || !got.CreatedAt.Equal(want.CreatedAt) || got.ID != want.ID {
			t.Fatalf("Decode(Encode(%+v)) = %+v, %v", want, got, err)
		}
	})
}
