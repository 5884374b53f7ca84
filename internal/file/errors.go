package file

import (
	"errors"

	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/rule"
)

var (
	// ErrNotFound is returned when a file does not exist or the caller may
	// not reach it; the two are indistinguishable on purpose.
	ErrNotFound = errors.New("file not found")
	// ErrInvalid is returned (wrapped in an error naming the rule) when a
	// request breaks a rule: too large, a content type that is not allowed
	// or does not match the bytes, an unusable filename, a bad page size.
	ErrInvalid = rule.ErrBroken
	// ErrInvalidPageToken is returned when a ListFiles page token is
	// malformed.
	ErrInvalidPageToken = keyset.ErrInvalidToken
	// ErrUploadMismatch is returned by CompleteUpload when the stored bytes
	// are missing or differ from the declared size, checksum or content
	// type; the file stays PENDING.
	ErrUploadMismatch = errors.New("uploaded bytes do not match the declaration")
	// ErrBlobNotFound is returned by Blobs when a blob does not exist.
	ErrBlobNotFound = errors.New("blob not found")
	// ErrBlobExists is returned by Blobs.Copy in CopyCreate mode when the
	// destination exists.
	ErrBlobExists = errors.New("blob exists")
	// ErrInvalidBlobName is returned (wrapped) by Blobs for a name it does
	// not accept. Asking again can never succeed.
	ErrInvalidBlobName = errors.New("invalid blob name")
	// ErrReservationLost is returned by Store.CreateFile when the blob's
	// reservation fell due and the outbox deleted it before the row came:
	// the upload took longer than the reservation's grace.
	ErrReservationLost = errors.New("blob reservation expired")
	// ErrSourceRefused is returned (wrapped) by the outbox worker for a
	// recording import whose source lies in Parley's own file namespace:
	// such a name is never egress's, and copying it would hand one
	// conversation's file to another.
	ErrSourceRefused = errors.New("recording source is in Parley's own file namespace")
)

// mismatchError is an ErrUploadMismatch that says what differs; the rpc
// layer shows its message to clients.
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string         { return e.msg }
func (e *mismatchError) Unwrap() error         { return ErrUploadMismatch }
func (e *mismatchError) PublicMessage() string { return e.msg }

func invalid(msg string) error  { return rule.Broken(msg) }
func mismatch(msg string) error { return &mismatchError{msg: msg} }
