package testenv_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestDatabasesAreIsolatedAndMigrated(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	a, b := testenv.DB(t), testenv.DB(t)

	if _, err := a.ExecContext(ctx, "INSERT INTO users (id, email, display_name, password_hash) VALUES (gen_random_uuid(), 'a@example.com', 'A', 'x')"); err != nil {
		t.Fatalf("insert into the cloned users table: %v", err)
	}
	var n int
	if err := b.QueryRowContext(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
		t.Fatalf("count users in b: %v", err)
	}
	if n != 0 {
		t.Errorf("database b sees %d users inserted into database a", n)
	}
	if err := a.QueryRowContext(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil || n != 1 {
		t.Errorf("database a: count = %d, %v; want 1", n, err)
	}
}

func TestEmptyDatabaseHasNoMigrations(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, err := postgres.Open(ctx, testenv.EmptyDatabaseURL(t), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var reg sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT to_regclass('bun_migrations')::text").Scan(&reg); err != nil {
		t.Fatal(err)
	}
	if reg.Valid {
		t.Errorf("empty database has table %s", reg.String)
	}
}

func TestValkeyStopStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	v := testenv.NewValkey(t)
	c := testenv.ValkeyClient(t, v.URL())

	if err := c.Do(ctx, c.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	v.Stop()
	// valkey-go retries read-only commands until the context ends.
	down, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := c.Do(down, c.B().Get().Key("k").Build()).Error(); err == nil {
		t.Fatal("GET succeeded against a stopped server")
	}
	v.Start()
	got, err := c.Do(ctx, c.B().Get().Key("k").Build()).ToString()
	if !valkey.IsValkeyNil(err) {
		t.Errorf("GET after restart = %q, %v; want nil reply (empty server)", got, err)
	}

	if err := c.Do(ctx, c.B().Set().Key("k2").Value("v").Build()).Error(); err != nil {
		t.Fatalf("SET after restart: %v", err)
	}
	v.Flush()
	n, err := c.Do(ctx, c.B().Dbsize().Build()).AsInt64()
	if err != nil || n != 0 {
		t.Errorf("DBSIZE after Flush = %d, %v; want 0", n, err)
	}
}

func TestSharedValkey(t *testing.T) {
	t.Parallel()
	url := testenv.ValkeyURL(t)
	if again := testenv.ValkeyURL(t); again != url {
		t.Errorf("ValkeyURL changed from %s to %s", url, again)
	}
	c := testenv.ValkeyClient(t, url)
	if err := c.Do(context.Background(), c.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("PING: %v", err)
	}
}

func TestFreePort(t *testing.T) {
	t.Parallel()
	if p := testenv.FreePort(t); p <= 0 || p > 65535 {
		t.Errorf("FreePort = %d", p)
	}
}
