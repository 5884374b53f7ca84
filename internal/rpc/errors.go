package rpc

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rule"
)

// errorCodes is the one mapping from domain errors to Connect codes. Each
// domain's sentinels are listed here; the domain error's message is safe to
// show to clients. An adapter's outage (see outage) becomes CodeUnavailable.
// Anything else not listed becomes CodeInternal with a generic
// message, so driver text (SQL, hosts) never reaches a client.
var errorCodes = []struct {
	err  error
	code connect.Code
}{
	{auth.ErrUnauthenticated, connect.CodeUnauthenticated},
	{auth.ErrPermissionDenied, connect.CodePermissionDenied},
	{context.Canceled, connect.CodeCanceled},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
	// Every domain's ErrInvalid and ErrInvalidPageToken.
	{rule.ErrBroken, connect.CodeInvalidArgument},
	{keyset.ErrInvalidToken, connect.CodeInvalidArgument},
	// account
	{account.ErrEmailTaken, connect.CodeAlreadyExists},
	{account.ErrUserNotFound, connect.CodeNotFound},
	{account.ErrInvalidDisplayName, connect.CodeInvalidArgument},
	{account.ErrInvalidAgentKeyName, connect.CodeInvalidArgument},
	{account.ErrAgentKeyNotFound, connect.CodeNotFound},

	// conversation
	{conversation.ErrNotFound, connect.CodeNotFound},
	{conversation.ErrTurnConflict, connect.CodeAlreadyExists},
	{conversation.ErrRoomNotFound, connect.CodeNotFound},
	{conversation.ErrTokenExpired, connect.CodeUnauthenticated},
	{conversation.ErrTokenRevoked, connect.CodeUnauthenticated},
	{conversation.ErrDraining, connect.CodeUnavailable},

	// room
	{room.ErrNotFound, connect.CodeNotFound},
	{room.ErrEnded, connect.CodeFailedPrecondition},

	// file
	{file.ErrNotFound, connect.CodeNotFound},
	{file.ErrUploadMismatch, connect.CodeFailedPrecondition},
	{file.ErrReservationLost, connect.CodeUnavailable},
}

// toConnectError maps err to a *connect.Error. Errors that are already Connect
// errors pass through unchanged.
func toConnectError(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	// Before the table: an outage that surfaced as a connect timeout is
	// still an outage, not the caller's deadline.
	var u unavailable
	if errors.As(err, &u) && u.Unavailable() {
		// Not logged here, once per failing call: the observer logs the
		// cause once per outage.Interval.
		return connect.NewError(connect.CodeUnavailable, &causedError{public: publicMessage(err, u), cause: err})
	}
	for _, m := range errorCodes {
		if errors.Is(err, m.err) {
			return connect.NewError(m.code, errors.New(publicMessage(err, m.err)))
		}
	}
	log.ErrorContext(ctx, "internal error", slog.String("error", err.Error()))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// publicMessage returns the message clients see for err, which wraps the
// sentinel s. Wrapped context added by stores (operation names) stays in the
// server log; the client gets the sentinel's own text, or the text of a
// domain error type that explains itself (see messager).
func publicMessage(err, s error) string {
	var m messager
	if errors.As(err, &m) {
		return m.PublicMessage()
	}
	return s.Error()
}

// unavailable is implemented by an adapter's sentinel for a dependency
// that cannot be reached now (postgres.ErrUnavailable): the call may
// succeed if retried. rpc may not import adapters, so it maps the
// behaviour, in one place for every domain.
type unavailable interface {
	error
	Unavailable() bool
}

// causedError is what a client reads (public) over the error it stands
// for, which stays in the server: connect sends only Error().
type causedError struct {
	public string
	cause  error
}

func (e *causedError) Error() string { return e.public }

func (e *causedError) Unwrap() error { return e.cause }

// messager is implemented by domain errors whose message is written for
// clients and is more specific than their sentinel (e.g. which field).
type messager interface {
	PublicMessage() string
}
