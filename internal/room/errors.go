package room

import (
	"errors"

	"github.com/parley-dev/parley/internal/keyset"
)

var (
	// ErrNotFound is returned when a room does not exist or the caller may
	// not reach it; the two are indistinguishable on purpose.
	ErrNotFound = errors.New("room not found")
	// ErrEnded is returned by JoinRoom for a room that has ended.
	ErrEnded = errors.New("room has ended")
	// ErrInvalid is returned (wrapped in an error naming the rule) when a
	// request breaks a business rule: a blank or oversized name, a bad page
	// size.
	ErrInvalid = errors.New("invalid request")
	// ErrInvalidPageToken is returned when a ListRooms page token is malformed.
	ErrInvalidPageToken = keyset.ErrInvalidToken
	// ErrInvalidWebhook is returned by webhook verifiers when a request's
	// signature is missing, wrong or stale, or its body is not an event.
	ErrInvalidWebhook = errors.New("invalid webhook")
)

// invalidError is an ErrInvalid that says which rule was broken; the rpc
// layer shows its message to clients.
type invalidError struct{ msg string }

func (e *invalidError) Error() string         { return e.msg }
func (e *invalidError) Unwrap() error         { return ErrInvalid }
func (e *invalidError) PublicMessage() string { return e.msg }

func invalid(msg string) error { return &invalidError{msg: msg} }
