package postgres_test

import (
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	wrap := func(code, constraint string) error {
		return fmt.Errorf("insert thing: %w", &pgconn.PgError{Code: code, ConstraintName: constraint})
	}
	tests := []struct {
		name                                       string
		err                                        error
		code, constraint                           string
		noRows, unique, uniqueKey, fk, text, retry bool
	}{
		{name: "nil", err: nil},
		{name: "not from the server", err: errors.New("boom")},
		{name: "no rows", err: fmt.Errorf("get: %w", sql.ErrNoRows), noRows: true},
		{name: "unique", err: wrap("23505", "k_key"), code: "23505", constraint: "k_key", unique: true, uniqueKey: true},
		{name: "unique other key", err: wrap("23505", "other_key"), code: "23505", constraint: "other_key", unique: true},
		{name: "foreign key", err: wrap("23503", "f_fkey"), code: "23503", constraint: "f_fkey", fk: true},
		{name: "invalid text", err: wrap("22P02", ""), code: "22P02", text: true},
		{name: "serialization", err: wrap("40001", ""), code: "40001", retry: true},
		{name: "deadlock", err: wrap("40P01", ""), code: "40P01", retry: true},
		{name: "other server error", err: wrap("42P01", ""), code: "42P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := postgres.PgCode(tt.err); got != tt.code {
				t.Errorf("pgCode = %q, want %q", got, tt.code)
			}
			if got := postgres.PgConstraint(tt.err); got != tt.constraint {
				t.Errorf("pgConstraint = %q, want %q", got, tt.constraint)
			}
			checks := []struct {
				name      string
				got, want bool
			}{
				{"isNoRows", postgres.IsNoRows(tt.err), tt.noRows},
				{"isUniqueViolation(any)", postgres.IsUniqueViolation(tt.err, ""), tt.unique},
				{"isUniqueViolation(k_key)", postgres.IsUniqueViolation(tt.err, "k_key"), tt.uniqueKey},
				{"isForeignKeyViolation", postgres.IsForeignKeyViolation(tt.err), tt.fk},
				{"isInvalidText", postgres.IsInvalidText(tt.err), tt.text},
				{"isRetryable", postgres.IsRetryable(tt.err), tt.retry},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
				}
			}
		})
	}
}

// TestErrorsFromTheServer checks the helpers against what the driver really
// returns through Bun, not just hand-made errors.
func TestErrorsFromTheServer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := testenv.DB(t)

	insertUser := func(email string) error {
		_, err := db.NewRaw("INSERT INTO users (id, email, display_name, password_hash) VALUES (?, ?, 'x', 'x')",
			uuid.New(), email).Exec(ctx)
		return err
	}
	if err := insertUser("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := insertUser("a@example.com"); !postgres.IsUniqueViolation(err, "users_email_key") {
		t.Errorf("duplicate email: %v; want unique violation of users_email_key", err)
	}

	if _, err := db.ExecContext(ctx, `CREATE TABLE parent (id int PRIMARY KEY);
		CREATE TABLE child (parent_id int REFERENCES parent (id))`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO child VALUES (1)"); !postgres.IsForeignKeyViolation(err) {
		t.Errorf("orphan child: %v; want foreign key violation", err)
	}

	var id uuid.UUID
	if err := db.NewRaw("SELECT ?::uuid", "not-a-uuid").Scan(ctx, &id); !postgres.IsInvalidText(err) {
		t.Errorf("bad uuid cast: %v; want invalid text representation", err)
	}
	if err := db.NewRaw("SELECT id FROM users WHERE email = ?", "nobody@example.com").Scan(ctx, &id); !postgres.IsNoRows(err) {
		t.Errorf("missing row: %v; want no rows", err)
	}

	// Write skew under SERIALIZABLE: both read the same count, both insert.
	if _, err := db.ExecContext(ctx, "CREATE TABLE skew (n int)"); err != nil {
		t.Fatal(err)
	}
	opts := &sql.TxOptions{Isolation: sql.LevelSerializable}
	tx1, err := db.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback()
	tx2, err := db.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback()
	var n int
	if err := tx1.QueryRowContext(ctx, "SELECT count(*) FROM skew").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := tx2.QueryRowContext(ctx, "SELECT count(*) FROM skew").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if _, err := tx1.ExecContext(ctx, "INSERT INTO skew VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx2.ExecContext(ctx, "INSERT INTO skew VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := tx1.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := tx2.Commit(); !postgres.IsRetryable(err) {
		t.Errorf("second serializable commit: %v; want serialization failure", err)
	}
}
