package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rule"
	"github.com/parley-dev/parley/internal/webhook"
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
	{conversation.ErrItemConflict, connect.CodeAlreadyExists},
	{conversation.ErrRoomNotFound, connect.CodeNotFound},
	{conversation.ErrTokenExpired, connect.CodeUnauthenticated},
	{conversation.ErrTokenRevoked, connect.CodeUnauthenticated},
	{conversation.ErrDraining, connect.CodeUnavailable},

	// room
	{room.ErrNotFound, connect.CodeNotFound},
	{room.ErrEnded, connect.CodeFailedPrecondition},
	{room.ErrConversationLive, connect.CodeFailedPrecondition},
	{room.ErrForbidden, connect.CodePermissionDenied},

	// file
	{file.ErrNotFound, connect.CodeNotFound},
	{file.ErrUploadMismatch, connect.CodeFailedPrecondition},
	{file.ErrReservationLost, connect.CodeUnavailable},

	// webhook (its ErrInvalid is rule.ErrBroken, above)
	{webhook.ErrEventNotFound, connect.CodeNotFound}, // before ErrNotFound, which it wraps, for its message
	{webhook.ErrNotFound, connect.CodeNotFound},
	// A bound on the account, not a rate: retrying does not help until an
	// endpoint is deleted.
	{webhook.ErrTooManyEndpoints, connect.CodeFailedPrecondition},
	{webhook.ErrNothingToRedeliver, connect.CodeFailedPrecondition},
	{webhook.ErrEndpointDisabled, connect.CodeFailedPrecondition},
	{webhook.ErrInvalidCursor, connect.CodeInvalidArgument},

	// rpc's own
	{errNoFileStore, connect.CodeUnimplemented},
	{errNotSettable, connect.CodePermissionDenied},
}

// errNoFileStore is returned by ExportConversation on a ConversationServer
// without the files feature (see WithExports).
var errNoFileStore = errors.New("parley.v1.ConversationService.ExportConversation needs a file store")

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
	return internalError()
}

// internalError is what a client learns of a bug: nothing. The caller logs
// the cause.
func internalError() *connect.Error {
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

// The refusals below are protocol-level: the interceptors and the HTTP
// middleware make them before a handler runs, about how a request came (its
// token, shape, encoding, size or rate), not about any domain's rule, so no
// domain error stands behind them. They are made here all the same, so that
// this file is the one place that makes Connect errors. Each returns a new
// error: the observer sets metadata on the one it is given.

// missingTokenError refuses a call to a non-public procedure that carries
// no bearer token.
func missingTokenError() *connect.Error {
	return connect.NewError(connect.CodeUnauthenticated, errors.New("missing bearer token"))
}

// invalidTokenError refuses a bearer token that does not authenticate;
// whether it was malformed, expired or revoked stays in the server.
func invalidTokenError() *connect.Error {
	return connect.NewError(connect.CodeUnauthenticated, errors.New("invalid or expired token"))
}

// invalidMessageError refuses a message that breaks the schema's
// protovalidate rules or holds U+0000 (see nulError), with the violations
// as a detail. err not being a *protovalidate.ValidationError (the rules
// could not be evaluated) is a bug.
func invalidMessageError(err error) *connect.Error {
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		return internalError()
	}
	cerr := connect.NewError(connect.CodeInvalidArgument, err)
	if detail, derr := connect.NewErrorDetail(verr.ToProto()); derr == nil {
		cerr.AddDetail(detail)
	}
	return cerr
}

// rateLimitedError refuses a request over the budget of what ("address",
// "user"...), which is spent for retryAfter seconds more.
func rateLimitedError(what string, retryAfter int) *connect.Error {
	return connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("rate limit exceeded for this %s: retry in %ds", what, retryAfter))
}

// inflatesTooLargeError refuses a compressed message that inflates past
// limit bytes, the most a request may hold.
func inflatesTooLargeError(limit int64) *connect.Error {
	return connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("message inflates to more than %d bytes", limit))
}

// badGzipError refuses a body whose gzip is malformed (err says how), as
// connect's own decompression does.
func badGzipError(err error) *connect.Error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("gzip body: %w", err))
}

// bodyTooLargeError refuses a plain-HTTP endpoint's body over limit bytes,
// as a message over PARLEY_MAX_REQUEST_BYTES is refused.
func bodyTooLargeError(limit int64) *connect.Error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("request body is over %d bytes", limit))
}
