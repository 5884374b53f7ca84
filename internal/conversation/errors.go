package conversation

import (
	"errors"

	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/rule"
)

var (
	// ErrNotFound is returned when a conversation does not exist or the caller
	// may not reach it; the two are indistinguishable on purpose.
	ErrNotFound = errors.New("conversation not found")
	// ErrTurnConflict is returned by SaveTurn when the turn id was saved before
	// with different content.
	ErrTurnConflict = errors.New("turn id already used with different content")
	// ErrInvalidPageToken is returned when a page token is malformed or was
	// issued for a different order.
	ErrInvalidPageToken = keyset.ErrInvalidToken
	// ErrInvalid is returned (wrapped in an error naming the rule) when a
	// request breaks a business rule: empty or oversized turn, bad turn id,
	// bad page size, title too long.
	ErrInvalid = rule.ErrBroken
	// ErrRoomNotFound is returned by CreateConversation when room_id is not
	// one of the caller's rooms.
	ErrRoomNotFound = errors.New("room not found")
)

func invalid(msg string) error { return rule.Broken(msg) }

// The reasons a watch ends while its stream is open, returned by Watch.Next.
var (
	// ErrTokenExpired is returned once the caller's access token has expired.
	ErrTokenExpired = errors.New("access token expired")
	// ErrTokenRevoked is returned once the caller's access token, or the
	// refresh family it was issued from, was revoked.
	ErrTokenRevoked = errors.New("access token revoked")
	// ErrDraining is returned once the replica drains: the client is to
	// reconnect, and reaches another replica.
	ErrDraining = errors.New("server is draining; reconnect")
)
