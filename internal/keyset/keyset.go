// Package keyset pages lists that run newest first by (created_at, id): a
// page is read with a limit one above its size, and the position of its last
// item becomes an opaque page token for the next. Conversations, rooms and
// files are all listed this way.
package keyset

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Position is where a page ends: the next page holds items strictly older,
// by created_at and then id.
type Position struct {
	CreatedAt time.Time
	ID        uuid.UUID
}

// List names the list a token belongs to, so a token of one list is refused
// by another rather than silently misread.
type List byte

// The lists paged by keyset. The values are part of every token: never
// reuse one.
const (
	Conversations List = 2
	Rooms         List = 3
	Files         List = 4
	Calls         List = 5
	// WebhookEndpoints is 9, clear of lists other branches may add next.
	WebhookEndpoints List = 9
)

// ErrInvalidToken is returned for a page token that is malformed or belongs
// to another list.
var ErrInvalidToken = errors.New("invalid page token")

// maxTokenLen bounds what is decoded; real tokens are far shorter.
const maxTokenLen = 64

// A position's time lies in the years 1 to 9999, as every created_at does:
// PostgreSQL refuses a timestamp before 4714 BC, which would turn a forged
// token into an internal error instead of an invalid one.
var (
	minTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)
)

var encoding = base64.RawURLEncoding

// Encode returns the page token for p in list l: base64url of the list byte,
// created_at in microseconds (PostgreSQL's precision) as a varint, and the
// id. It carries a position only; every page is access-checked again.
func Encode(l List, p Position) string {
	var b [1 + binary.MaxVarintLen64 + 16]byte
	b[0] = byte(l)
	n := 1 + binary.PutVarint(b[1:], p.CreatedAt.UnixMicro())
	n += copy(b[n:], p.ID[:])
	return encoding.EncodeToString(b[:n])
}

// Decode returns the position in a token of list l, or nil for the empty
// token (the first page).
func Decode(l List, token string) (*Position, error) {
	if token == "" {
		return nil, nil
	}
	if len(token) > maxTokenLen {
		return nil, ErrInvalidToken
	}
	b, err := encoding.DecodeString(token)
	if err != nil || len(b) < 2 || b[0] != byte(l) {
		return nil, ErrInvalidToken
	}
	micros, n := binary.Varint(b[1:])
	if n <= 0 || len(b) != 1+n+16 {
		return nil, ErrInvalidToken
	}
	id, err := uuid.FromBytes(b[1+n:])
	if err != nil {
		return nil, ErrInvalidToken
	}
	p := Position{CreatedAt: time.UnixMicro(micros).UTC(), ID: id}
	// Only Encode's own spelling: base64 skips newlines and ignores spare
	// bits, and a varint may carry redundant bytes.
	if p.CreatedAt.Before(minTime) || p.CreatedAt.After(maxTime) || Encode(l, p) != token {
		return nil, ErrInvalidToken
	}
	return &p, nil
}

// Page trims items, read with a limit of size+1, to one page and returns the
// token of the next page ("" when this is the last).
func Page[T any](l List, items []T, size int, position func(T) Position) ([]T, string) {
	if len(items) <= size {
		return items, ""
	}
	items = items[:size]
	return items, Encode(l, position(items[size-1]))
}
