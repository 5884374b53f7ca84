// Package rule is the error every domain returns when a request breaks one
// of its rules (an empty turn, an oversized name, a bad page size): asked
// again as it is, the request can never succeed. Domains share the one type
// so that the rpc layer maps it, to invalid_argument, in one place.
package rule

import "errors"

// ErrBroken is wrapped by every error Broken returns. Domains alias it as
// their ErrInvalid.
var ErrBroken = errors.New("invalid request")

// Error is a broken rule; its message says which, in words written for
// clients.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

// Unwrap returns ErrBroken.
func (e *Error) Unwrap() error { return ErrBroken }

// PublicMessage is the message clients see: Error's, since it names only
// the rule.
func (e *Error) PublicMessage() string { return e.msg }

// Broken returns an error saying that a request broke the rule msg
// describes.
func Broken(msg string) error { return &Error{msg: msg} }
