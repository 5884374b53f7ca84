package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestInTx checks the one transaction helper of the stores, with $n
// statements on tx.Tx as the stores run them, in pgx's default mode and in
// the modes PgBouncer needs (every parameter sent as text).
func TestInTx(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"", "simple_protocol", "exec"} {
		t.Run("mode="+mode, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			url := testenv.DatabaseURL(t)
			if mode != "" {
				sep := "?"
				if strings.Contains(url, "?") {
					sep = "&"
				}
				url += sep + "default_query_exec_mode=" + mode
			}
			db, err := postgres.Open(ctx, url, postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			if _, err := db.DB.ExecContext(ctx, `CREATE TABLE parent (id int PRIMARY KEY);
				CREATE TABLE child (parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)`); err != nil {
				t.Fatal(err)
			}
			insert := func(id int) func(context.Context, bun.Tx) error {
				return func(ctx context.Context, tx bun.Tx) error {
					_, err := tx.Tx.ExecContext(ctx, `INSERT INTO parent (id) VALUES ($1::int)`, id)
					return err
				}
			}
			exists := func(id int) bool {
				t.Helper()
				var ok bool
				if err := db.DB.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM parent WHERE id = $1::int)`, id).Scan(&ok); err != nil {
					t.Fatal(err)
				}
				return ok
			}

			if err := postgres.InTx(ctx, db, "op", insert(1)); err != nil || !exists(1) {
				t.Errorf("fn succeeded: err %v, row committed %v; want nil, true", err, exists(1))
			}

			sentinel := errors.New("domain error")
			err = postgres.InTx(ctx, db, "op", func(ctx context.Context, tx bun.Tx) error {
				if err := insert(2)(ctx, tx); err != nil {
					return err
				}
				return sentinel
			})
			if err != sentinel || exists(2) {
				t.Errorf("fn failed: err %v, row committed %v; want the error unwrapped, false", err, exists(2))
			}

			func() {
				defer func() {
					if recover() == nil {
						t.Error("the panic did not reach the caller")
					}
				}()
				_ = postgres.InTx(ctx, db, "op", func(ctx context.Context, tx bun.Tx) error {
					if err := insert(3)(ctx, tx); err != nil {
						return err
					}
					panic("boom")
				})
			}()
			if exists(3) {
				t.Error("fn panicked: row committed")
			}

			err = postgres.InTx(ctx, db, "op", func(ctx context.Context, tx bun.Tx) error {
				_, err := tx.Tx.ExecContext(ctx, `INSERT INTO child (parent_id) VALUES ($1::int)`, 99)
				return err
			})
			if !postgres.IsForeignKeyViolation(err) || !strings.HasPrefix(err.Error(), "op: commit: ") {
				t.Errorf("deferred violation: err %v; want a foreign key violation wrapped as op: commit", err)
			}

			if n := db.Stats().InUse; n != 0 {
				t.Errorf("%d connections still in use after every transaction ended", n)
			}
		})
	}
}
