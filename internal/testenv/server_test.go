package testenv_test

import (
	"testing"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestStartPostgresDurable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := testenv.StartPostgres(t, testenv.PostgresOptions{Durable: true, MaxConnections: 50, Settings: []string{"max_wal_size=2GB"}})
	db, err := postgres.Open(ctx, srv.CreateDatabase(t, "durable_check"), postgres.Options{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	want := map[string]string{
		"fsync":              "on",
		"synchronous_commit": "on",
		"full_page_writes":   "on",
		"max_connections":    "50",
		"max_wal_size":       "2GB",
	}
	for name, value := range want {
		var got string
		if err := db.DB.QueryRowContext(ctx, "SELECT current_setting($1)", name).Scan(&got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != value {
			t.Errorf("%s = %q, want %q", name, got, value)
		}
	}
}
