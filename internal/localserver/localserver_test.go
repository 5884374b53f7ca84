package localserver_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/parley-dev/parley/internal/localserver"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestPostgresKeepsDataAndPort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts := localserver.PostgresOptions{Dir: testenv.ReachableDir(t) + "/pg", Keep: true}
	first, err := localserver.StartPostgres(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(first.Stop)
	db, err := postgres.Open(ctx, first.AdminURL(), postgres.Options{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE kept AS SELECT 42 AS answer"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	first.Stop()

	second, err := localserver.StartPostgres(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Stop)
	if second.Port != first.Port {
		t.Errorf("port after a restart: %d, want %d", second.Port, first.Port)
	}
	db, err = postgres.Open(ctx, second.AdminURL(), postgres.Options{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var answer int
	if err := db.QueryRowContext(ctx, "SELECT answer FROM kept").Scan(&answer); err != nil || answer != 42 {
		t.Fatalf("kept table after a restart: %d, %v; want 42", answer, err)
	}
	// A fast shutdown leaves nothing to recover.
	if log := localserver.LogTail(opts.Dir + "/postgres.log"); strings.Contains(log, "not properly shut down") {
		t.Errorf("the second start recovered from an unclean stop:\n%s", log)
	}
}

func TestValkeyKeepsDataAndPort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts := localserver.ValkeyOptions{Dir: t.TempDir(), Keep: true}
	first, err := localserver.StartValkey(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(first.Stop)
	c := testenv.ValkeyClient(t, first.URL())
	if err := c.Do(ctx, c.B().Set().Key("kept").Value("yes").Build()).Error(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	first.Stop()

	second, err := localserver.StartValkey(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Stop)
	if second.Port != first.Port {
		t.Errorf("port after a restart: %d, want %d", second.Port, first.Port)
	}
	if got, err := c.Do(ctx, c.B().Get().Key("kept").Build()).ToString(); err != nil || got != "yes" {
		t.Fatalf("GET after a restart: %q, %v; want yes", got, err)
	}
}

func TestNotInstalled(t *testing.T) {
	empty := t.TempDir()
	if _, err := localserver.StartPostgres(context.Background(), localserver.PostgresOptions{BinDir: empty, Dir: t.TempDir()}); !errors.Is(err, localserver.ErrNotInstalled) {
		t.Errorf("localserver.StartPostgres from an empty bin dir: %v, want localserver.ErrNotInstalled", err)
	}
	t.Setenv("PATH", empty)
	if _, err := localserver.StartValkey(context.Background(), localserver.ValkeyOptions{Dir: t.TempDir()}); !errors.Is(err, localserver.ErrNotInstalled) {
		t.Errorf("localserver.StartValkey without valkey-server or redis-server on PATH: %v, want localserver.ErrNotInstalled", err)
	}
}

// TestPostgresUserMustEnterDir starts a server under t.TempDir, whose
// parents only their owner may enter: under root that names the directory
// the postgres user cannot pass; otherwise the server starts.
func TestPostgresUserMustEnterDir(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	srv, err := localserver.StartPostgres(t.Context(), localserver.PostgresOptions{Dir: parent + "/pg", NoSync: true})
	if os.Geteuid() != 0 {
		if err != nil {
			t.Fatal(err)
		}
		srv.Stop()
		return
	}
	if err == nil {
		srv.Stop()
		t.Fatal("started under directories the postgres user may not enter")
	}
	if !strings.Contains(err.Error(), "may not enter") || strings.Count(err.Error(), "\n") > 0 {
		t.Errorf("error %q, want one line naming the directory the postgres user may not enter", err)
	}
}
