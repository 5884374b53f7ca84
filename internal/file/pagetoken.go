package file

import (
	"encoding/base64"
	"encoding/binary"
	"time"

	"github.com/google/uuid"
)

// A ListFiles page token is base64url (unpadded) of a version byte, the
// cursor's created_at in Unix microseconds (PostgreSQL's precision) as a
// varint, and its id. It carries a position only: every page is
// access-checked again.
const (
	fileTokenVersion = 1
	maxTokenLen      = 64
)

var tokenEncoding = base64.RawURLEncoding

func encodePageToken(c Cursor) string {
	var b [1 + binary.MaxVarintLen64 + 16]byte
	b[0] = fileTokenVersion
	n := 1 + binary.PutVarint(b[1:], c.CreatedAt.UnixMicro())
	n += copy(b[n:], c.ID[:])
	return tokenEncoding.EncodeToString(b[:n])
}

func decodePageToken(s string) (Cursor, error) {
	if len(s) > maxTokenLen {
		return Cursor{}, ErrInvalidPageToken
	}
	b, err := tokenEncoding.DecodeString(s)
	if err != nil || len(b) < 2 || b[0] != fileTokenVersion {
		return Cursor{}, ErrInvalidPageToken
	}
	us, n := binary.Varint(b[1:])
	if n <= 0 || len(b) != 1+n+16 {
		return Cursor{}, ErrInvalidPageToken
	}
	id, err := uuid.FromBytes(b[1+n:])
	if err != nil {
		return Cursor{}, ErrInvalidPageToken
	}
	return Cursor{CreatedAt: time.UnixMicro(us).UTC(), ID: id}, nil
}
