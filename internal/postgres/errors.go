package postgres

import (
	"database/sql"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// SQLSTATE codes the stores translate into domain errors. See
// https://www.postgresql.org/docs/current/errcodes-appendix.html.
const (
	codeUniqueViolation           = "23505"
	codeForeignKeyViolation       = "23503"
	codeSerializationFailure      = "40001"
	codeDeadlockDetected          = "40P01"
	codeInvalidTextRepresentation = "22P02"
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
