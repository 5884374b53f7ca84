package postgres_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestEnsureDatabase creates a database whose name needs quoting and leaves
// an existing one alone.
func TestEnsureDatabase(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	admin := testenv.PostgresAdminURL(t)
	name := `ensure "Dev" db ` + t.Name()
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	db := open(t, admin, postgres.Options{MaxOpenConns: 1})
	t.Cleanup(func() {
		if _, err := db.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+quote(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("drop: %v", err)
		}
	})

	if err := postgres.EnsureDatabase(ctx, u.String()); err != nil {
		t.Fatalf("EnsureDatabase: %v", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_database WHERE datname = ?", name).Scan(&n); err != nil || n != 1 {
		t.Fatalf("databases named %q: %d, %v; want 1", name, n, err)
	}
	// Once it exists, the database is opened as is.
	if err := postgres.EnsureDatabase(ctx, u.String()); err != nil {
		t.Fatalf("EnsureDatabase on an existing database: %v", err)
	}
	ensured := open(t, u.String(), postgres.Options{MaxOpenConns: 1})
	if err := ensured.PingContext(ctx); err != nil {
		t.Fatalf("ping the ensured database: %v", err)
	}
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
