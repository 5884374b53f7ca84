package postgres

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"
)

// inTx runs fn in one transaction on db, the way every store runs one: it
// commits when fn returns nil and rolls back when fn fails or panics. fn's
// error comes back unwrapped, so a domain error fn returns reaches the
// caller as it is; a failed begin or commit is wrapped with op, and a commit
// can fail with a deferred constraint's violation.
//
// Nothing is retried: every transaction runs at READ COMMITTED, where
// conflicting writers wait on row locks rather than fail with a
// serialization error. BEGIN and COMMIT are plain statements, so this works
// as well over the simple protocol PgBouncer needs.
//
// Statements with $n parameters run on tx.Tx, the *sql.Tx: bun.Tx's own
// methods would format the arguments into the text instead of letting pgx
// bind them.
func inTx(ctx context.Context, db *bun.DB, op string, fn func(ctx context.Context, tx bun.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", op, err)
	}
	done := false
	defer func() {
		if !done {
			_ = tx.Rollback()
		}
	}()
	if err := fn(ctx, tx); err != nil {
		return err
	}
	// A failed commit has ended the transaction too.
	done = true
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", op, err)
	}
	return nil
}
