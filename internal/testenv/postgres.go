package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/localserver"
	"github.com/parley-dev/parley/internal/postgres"
)

const (
	databaseURLEnv   = "PARLEY_TEST_DATABASE_URL"
	pgDirPrefix      = "parley-pg-"
	adminOpTimeout   = 60 * time.Second
	privateTemplate  = "parley_template"
	testDBMaxConns   = 20
	testDBIdleConns  = 4
	adminPoolMaxConn = 4
)

// pgState is this process's PostgreSQL: the server (private or external),
// an admin pool on its `postgres` database and the migrated template.
var pg struct {
	once     sync.Once
	err      error
	adminURL string
	admin    *bun.DB
	proc     *localserver.Process // nil for an external server
	dir      string

	tplOnce sync.Once
	tplErr  error
	tplName string

	// createMu serializes CREATE DATABASE: concurrent clones of one
	// template can fail with "source database is being accessed".
	createMu sync.Mutex
}

// PostgresAdminURL returns the URL of the server's `postgres` database, for
// CREATE DATABASE and the like. Tests must not change it.
func PostgresAdminURL(t testing.TB) string {
	t.Helper()
	startPostgres(t)
	return pg.adminURL
}

// DatabaseURL returns the URL of a new database cloned from a template that
// has every migration applied. The database is dropped at cleanup.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	startPostgres(t)
	pg.tplOnce.Do(func() { pg.tplErr = createTemplate() })
	if pg.tplErr != nil {
		t.Fatalf("testenv: migrated template database: %v", pg.tplErr)
	}
	return createDatabase(t, pg.tplName)
}

// EmptyDatabaseURL returns the URL of a new database with no migrations
// applied, for migration and multi-process tests. It is dropped at cleanup.
func EmptyDatabaseURL(t testing.TB) string {
	t.Helper()
	startPostgres(t)
	return createDatabase(t, "")
}

// DB opens a pool on a new migrated database (see DatabaseURL) and closes
// it at cleanup, before the database is dropped.
func DB(t testing.TB) *bun.DB {
	t.Helper()
	dbURL := DatabaseURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
	defer cancel()
	db, err := postgres.Open(ctx, dbURL, postgres.Options{MaxOpenConns: testDBMaxConns, MaxIdleConns: testDBIdleConns})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func startPostgres(t testing.TB) {
	t.Helper()
	pg.once.Do(func() { pg.err = initPostgres() })
	if pg.err != nil {
		t.Fatalf("testenv: PostgreSQL: %v", pg.err)
	}
}

func initPostgres() error {
	if u := os.Getenv(databaseURLEnv); u != "" {
		if _, err := withDatabase(u, "x"); err != nil {
			return fmt.Errorf("%s: %w", databaseURLEnv, err)
		}
		pg.adminURL = u
	} else if err := startPrivatePostgres(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
	defer cancel()
	admin, err := postgres.Open(ctx, pg.adminURL, postgres.Options{MaxOpenConns: adminPoolMaxConn})
	if err != nil {
		return err
	}
	pg.admin = admin
	return nil
}

// startPrivatePostgres starts a server in a fresh temporary directory.
func startPrivatePostgres() error {
	dir, err := makeDir(pgDirPrefix)
	if err != nil {
		return err
	}
	pg.dir = dir
	srv, err := startLocalPostgres(localserver.PostgresOptions{
		Dir:    dir,
		NoSync: true,
		Settings: []string{
			"fsync=off",
			"synchronous_commit=off",
			"full_page_writes=off",
			"max_connections=500",
		},
	})
	if err != nil {
		return err
	}
	pg.proc = srv.Process
	pg.adminURL = srv.AdminURL()
	return nil
}

// startLocalPostgres starts a tracked server, naming the variable that
// would make it unneeded when PostgreSQL is not installed.
func startLocalPostgres(opts localserver.PostgresOptions) (*localserver.Postgres, error) {
	srv, err := localserver.StartPostgres(context.Background(), opts)
	if errors.Is(err, localserver.ErrNotInstalled) {
		return nil, fmt.Errorf("%w: install it or set %s", err, databaseURLEnv)
	}
	if err != nil {
		return nil, err
	}
	track(srv.Process)
	return srv, nil
}

// createTemplate creates and migrates the database every test database is
// cloned from. Its pool is closed before any clone, as CREATE DATABASE
// refuses a template with open sessions.
func createTemplate() error {
	name := privateTemplate
	if pg.proc == nil {
		// Several test processes may share an external server.
		name = randomName(fmt.Sprintf("parley_tpl_%d_", os.Getpid()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
	defer cancel()
	if _, err := pg.admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	pg.tplName = name
	tplURL, err := withDatabase(pg.adminURL, name)
	if err != nil {
		return err
	}
	db, err := postgres.Open(ctx, tplURL, postgres.Options{MaxOpenConns: 4})
	if err != nil {
		return err
	}
	_, err = postgres.Migrate(ctx, db, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("migrate %s: %w", name, err)
	}
	// Nobody may connect to the template by mistake and block the clones.
	if _, err := pg.admin.ExecContext(ctx, "ALTER DATABASE "+name+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("lock %s: %w", name, err)
	}
	return nil
}

// createDatabase creates a database (a clone of template, if not empty),
// dropped at cleanup, and returns its URL.
func createDatabase(t testing.TB, template string) string {
	t.Helper()
	name := randomName("parley_test_")
	stmt := "CREATE DATABASE " + name
	if template != "" {
		stmt += " TEMPLATE " + template
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
	defer cancel()
	pg.createMu.Lock()
	_, err := pg.admin.ExecContext(ctx, stmt)
	pg.createMu.Unlock()
	if err != nil {
		t.Fatalf("testenv: %s: %v", stmt, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
		defer cancel()
		// FORCE ends sessions a test left open (a leaked pool, a listener).
		if _, err := pg.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: drop database %s: %v", name, err)
		}
	})
	dbURL, err := withDatabase(pg.adminURL, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dbURL
}

// withDatabase returns base with its database name replaced.
func withDatabase(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("want a postgres:// URL")
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

// stopPostgres drops an external server's template, closes the admin pool
// and stops a private server.
func stopPostgres() {
	if pg.admin != nil {
		if pg.proc == nil && pg.tplName != "" {
			ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
			_, _ = pg.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pg.tplName+" WITH (FORCE)")
			cancel()
		}
		_ = pg.admin.Close()
	}
	if pg.proc != nil {
		stop(pg.proc)
	}
	if pg.dir != "" {
		_ = os.RemoveAll(pg.dir)
	}
}
