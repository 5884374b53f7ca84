package room

import (
	"errors"

	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/rule"
)

var (
	// ErrNotFound is returned when a room does not exist or the caller may
	// not reach it; the two are indistinguishable on purpose.
	ErrNotFound = errors.New("room not found")
	// ErrEnded is returned by JoinRoom for a room that has ended.
	ErrEnded = errors.New("room has ended")
	// ErrConversationLive is returned by CreateRoom when the conversation
	// to resume is still in an active room: two agents would write it at
	// once. Ending that room first makes the conversation resumable.
	ErrConversationLive = errors.New("the conversation is in an active room; end that room to resume it")
	// ErrInvalid is returned (wrapped in an error naming the rule) when a
	// request breaks a business rule: a blank or oversized name, a bad page
	// size.
	ErrInvalid = rule.ErrBroken
	// ErrInvalidPageToken is returned when a ListRooms page token is malformed.
	ErrInvalidPageToken = keyset.ErrInvalidToken
	// ErrInvalidWebhook is returned by webhook verifiers when a request's
	// signature is missing, wrong or stale, or its body is not an event.
	ErrInvalidWebhook = errors.New("invalid webhook")
	// ErrEventRefused is returned (as a *RefusedError) by ApplyEvent for a
	// verified event it will not apply; a redelivery would be refused too.
	ErrEventRefused = errors.New("webhook event refused")
	// ErrEgressNotFound is returned by LiveKit.Egress when LiveKit knows no
	// such egress of the room.
	ErrEgressNotFound = errors.New("egress not found")
	// ErrForbidden is returned (as a *ForbiddenError naming the field) when
	// a token request sets what only Parley decides: another participant's
	// identity, attributes in LiveKit's namespace.
	ErrForbidden = errors.New("a field the caller may not set")
)

// ForbiddenError says which field a caller may not set, and why.
type ForbiddenError struct{ msg string }

func (e *ForbiddenError) Error() string { return e.msg }

// Unwrap returns ErrForbidden.
func (e *ForbiddenError) Unwrap() error { return ErrForbidden }

// PublicMessage is the message clients see: it names only the field.
func (e *ForbiddenError) PublicMessage() string { return e.msg }

func forbidden(msg string) error { return &ForbiddenError{msg: msg} }

// The reasons of a RefusedError. They label a metric, so they are few.
const (
	// RefusedRoomMismatch: no Parley room has both the event's LiveKit
	// room name and sid.
	RefusedRoomMismatch = "room_mismatch"
	// RefusedEgressUnconfirmed: LiveKit's API does not confirm the egress
	// for the event's room.
	RefusedEgressUnconfirmed = "egress_unconfirmed"
	// RefusedRecordingLocation: the egress wrote a file outside the room's
	// RecordingPrefix.
	RefusedRecordingLocation = "recording_location"
)

// RefusedError says why ApplyEvent refused a verified event.
type RefusedError struct {
	// Reason is one of the Refused constants.
	Reason string
	// Detail is for the logs.
	Detail string
}

func (e *RefusedError) Error() string { return "webhook event refused: " + e.Reason + ": " + e.Detail }
func (e *RefusedError) Unwrap() error { return ErrEventRefused }

func refused(reason, detail string) error { return &RefusedError{Reason: reason, Detail: detail} }

func invalid(msg string) error { return rule.Broken(msg) }
