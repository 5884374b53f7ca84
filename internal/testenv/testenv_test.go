package testenv_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strings"
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

// mainChildEnv marks the test binary run by TestMainRemovesServerDirs.
const mainChildEnv = "PARLEY_TESTENV_MAIN_CHILD"

// TestMainRemovesServerDirs runs this test binary again, as a child that
// starts a private PostgreSQL, Valkey and Azurite and reports their
// temporary directories, and checks that they are gone once its Main has
// returned.
func TestMainRemovesServerDirs(t *testing.T) {
	if os.Getenv(mainChildEnv) != "" {
		// The child: start every server, report the directories, let Main
		// clean up.
		testenv.DatabaseURL(t)
		testenv.ValkeyURL(t)
		testenv.AzuriteConnectionString(t)
		for _, dir := range testenv.ServerDirs() {
			fmt.Println("server dir:", dir)
		}
		return
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestMainRemovesServerDirs$", "-test.count=1", "-test.v")
	// Private servers, even when this run uses servers of its own.
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PARLEY_TEST_DATABASE_URL=") || strings.HasPrefix(kv, "PARLEY_TEST_VALKEY_URL=")
	}), mainChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var dirs []string
	for line := range strings.Lines(string(out)) {
		if dir, ok := strings.CutPrefix(strings.TrimSpace(line), "server dir: "); ok {
			dirs = append(dirs, dir)
		}
	}
	if len(dirs) != 3 {
		t.Fatalf("child reported %d server directories, want 3 (PostgreSQL, Valkey, Azurite):\n%s", len(dirs), out)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there after Main returned (stat: %v)", dir, err)
		}
	}
}
