package room

import (
	"encoding/base64"
	"encoding/binary"
	"time"

	"github.com/google/uuid"
)

// Page tokens are opaque to clients: base64url (unpadded) of a version byte,
// the created_at in microseconds as a varint and the id. They carry only a
// position, never access: every page is scoped to the caller again.
const (
	roomTokenVersion = 1
	// maxTokenLen bounds what is decoded; real tokens are far shorter.
	maxTokenLen = 64
)

var tokenEncoding = base64.RawURLEncoding

func encodePageToken(c Cursor) string {
	var b [1 + binary.MaxVarintLen64 + 16]byte
	b[0] = roomTokenVersion
	n := 1 + binary.PutVarint(b[1:], c.CreatedAt.UnixMicro())
	n += copy(b[n:], c.ID[:])
	return tokenEncoding.EncodeToString(b[:n])
}

func decodePageToken(s string) (Cursor, error) {
	if len(s) > maxTokenLen {
		return Cursor{}, ErrInvalidPageToken
	}
	b, err := tokenEncoding.DecodeString(s)
	if err != nil || len(b) < 2 || b[0] != roomTokenVersion {
		return Cursor{}, ErrInvalidPageToken
	}
	micros, n := binary.Varint(b[1:])
	if n <= 0 || len(b) != 1+n+16 {
		return Cursor{}, ErrInvalidPageToken
	}
	id, err := uuid.FromBytes(b[1+n:])
	if err != nil {
		return Cursor{}, ErrInvalidPageToken
	}
	return Cursor{CreatedAt: time.UnixMicro(micros).UTC(), ID: id}, nil
}
