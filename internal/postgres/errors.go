package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable is returned, wrapping the driver's error, by every store
// method when PostgreSQL could not be reached or would not take work: a
// refused, lost or timed-out connection, a server shutting down or starting
// up, too many connections. The call may succeed if retried. It belongs to
// no domain. The rpc layer, which may not import adapters, maps it by its
// Unavailable method.
var ErrUnavailable error = outageError{}

type outageError struct{}

func (outageError) Error() string { return "database unavailable" }

// Unavailable marks the error as a dependency's outage (see rpc/errors.go).
func (outageError) Unavailable() bool { return true }

// SQLSTATE codes the stores translate into domain errors. See
// https://www.postgresql.org/docs/current/errcodes-appendix.html.
const (
	codeUniqueViolation           = "23505"
	codeForeignKeyViolation       = "23503"
	codeSerializationFailure      = "40001"
	codeDeadlockDetected          = "40P01"
	codeInvalidTextRepresentation = "22P02"
	codeInvalidParameterValue     = "22023"

	// A server going away, not yet up or full. Class 08 (connection
	// exception) is matched whole.
	classConnectionException = "08"
	codeAdminShutdown        = "57P01"
	codeCrashShutdown        = "57P02"
	codeCannotConnectNow     = "57P03"
	codeTooManyConnections   = "53300"
)

// pgCode returns the SQLSTATE of a PostgreSQL error anywhere in err's
// chain, or "" when err did not come from the server.
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// pgConstraint returns the constraint a PostgreSQL error names, so a store
// can tell which of a table's unique keys was violated; "" if none.
func pgConstraint(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

// isNoRows reports whether a single-row query found nothing.
func isNoRows(err error) bool {
	return errors.Is(err, sql.ErrNoRows)
}

// isUniqueViolation reports a unique_violation (23505). A non-empty
// constraint must also match the violated constraint's name.
func isUniqueViolation(err error, constraint string) bool {
	return pgCode(err) == codeUniqueViolation && (constraint == "" || pgConstraint(err) == constraint)
}

// isForeignKeyViolation reports a foreign_key_violation (23503): a row
// referenced something missing, or something still references a row.
func isForeignKeyViolation(err error) bool {
	return pgCode(err) == codeForeignKeyViolation
}

// isInvalidText reports an invalid_text_representation (22P02), such as a
// malformed uuid cast in SQL.
func isInvalidText(err error) bool {
	return pgCode(err) == codeInvalidTextRepresentation
}

// isRetryable reports a serialization_failure (40001) or a deadlock (40P01):
// the transaction was rolled back and may succeed if run again whole.
func isRetryable(err error) bool {
	switch pgCode(err) {
	case codeSerializationFailure, codeDeadlockDetected:
		return true
	}
	return false
}

// isUnavailable reports whether err says PostgreSQL could not be reached or
// would not take work now, rather than that the statement was wrong. The
// caller's own cancellation or deadline on a query is not an outage; a
// deadline that ran out while connecting is.
func isUnavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	if code := pgCode(err); code != "" {
		switch code {
		case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow, codeTooManyConnections:
			return true
		}
		return strings.HasPrefix(code, classConnectionException)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// markUnavailable wraps *errp in ErrUnavailable when it is an outage. Every
// store method defers it, so that no caller needs to know the driver's
// errors.
func markUnavailable(errp *error) {
	if err := *errp; isUnavailable(err) && !errors.Is(err, ErrUnavailable) {
		*errp = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
}
