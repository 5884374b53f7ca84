package conversation

import (
	"encoding/base64"
	"encoding/binary"
)

// Page tokens are opaque to clients: base64url (unpadded) of a version byte
// and a few varints. They carry only positions, never access: every page is
// access-checked again.
const (
	// messageTokenVersion is the first byte of a ListMessages token; it
	// differs from every keyset.List so tokens of other lists are refused.
	messageTokenVersion = 1
	// itemTokenVersion is the first byte of a ListItems token, so that
	// neither list takes the other's tokens; keyset.List values grow from
	// 2 and stay far below it.
	itemTokenVersion = 16

	// maxTokenLen bounds what is decoded; real tokens are far shorter.
	maxTokenLen = 64
)

var tokenEncoding = base64.RawURLEncoding

// messageToken is where a ListMessages page continues: past seq in order.
type messageToken struct {
	Order Order
	Seq   int64
}

// encodeMessageToken returns the ListMessages page token for t.
func encodeMessageToken(t messageToken) string { return encodeSeqToken(messageTokenVersion, t) }

func decodeMessageToken(s string) (messageToken, error) {
	return decodeSeqToken(messageTokenVersion, s)
}

// encodeItemToken returns the ListItems page token for t.
func encodeItemToken(t messageToken) string { return encodeSeqToken(itemTokenVersion, t) }

func decodeItemToken(s string) (messageToken, error) { return decodeSeqToken(itemTokenVersion, s) }

// encodeSeqToken returns the page token for t of the list version names.
func encodeSeqToken(version byte, t messageToken) string {
	var b [2 + binary.MaxVarintLen64]byte
	b[0] = version
	b[1] = byte(t.Order)
	n := binary.PutUvarint(b[2:], uint64(t.Seq))
	return tokenEncoding.EncodeToString(b[:2+n])
}

func decodeSeqToken(version byte, s string) (messageToken, error) {
	if len(s) > maxTokenLen {
		return messageToken{}, ErrInvalidPageToken
	}
	b, err := tokenEncoding.DecodeString(s)
	if err != nil || len(b) < 3 || b[0] != version {
		return messageToken{}, ErrInvalidPageToken
	}
	o := Order(b[1])
	if o != OrderNewestFirst && o != OrderOldestFirst {
		return messageToken{}, ErrInvalidPageToken
	}
	seq, n := binary.Uvarint(b[2:])
	if n <= 0 || 2+n != len(b) || seq < 1 || seq > 1<<62 {
		return messageToken{}, ErrInvalidPageToken
	}
	t := messageToken{Order: o, Seq: int64(seq)}
	// Only the encoder's own spelling: base64 skips newlines and ignores
	// spare bits, and a varint may carry redundant bytes.
	if encodeSeqToken(version, t) != s {
		return messageToken{}, ErrInvalidPageToken
	}
	return t, nil
}
