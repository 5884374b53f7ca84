package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/parley-dev/parley/internal/localserver"
	"github.com/parley-dev/parley/internal/postgres"
)

const serverDirPrefix = "parley-pgserver-"

// PostgresOptions configure a server of its own started by StartPostgres.
type PostgresOptions struct {
	// Durable keeps fsync, synchronous_commit and full_page_writes on (the
	// server's defaults, as in production), so every commit waits for its
	// WAL flush. Otherwise they are off, like the shared test server's.
	Durable bool
	// MaxConnections is max_connections; 0 means 500.
	MaxConnections int
	// Settings are further `name=value` settings passed with -c, after the
	// ones above (a later one wins).
	Settings []string
}

// Postgres is a private PostgreSQL server of one test (or benchmark), apart
// from the process's shared server.
type Postgres struct {
	adminURL string
	binDir   string
	settings []string
	proc     *localserver.Process
}

// StartPostgres starts a private PostgreSQL server with opts, stopped and
// removed at cleanup. Unlike DatabaseURL it never uses an external server:
// callers want the settings they asked for.
func StartPostgres(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	p, err := startServer(t, opts)
	if err != nil {
		t.Fatalf("testenv: PostgreSQL server: %v", err)
	}
	return p
}

func startServer(t testing.TB, opts PostgresOptions) (*Postgres, error) {
	dir, err := makeDir(serverDirPrefix)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	onOff := "off"
	if opts.Durable {
		onOff = "on"
	}
	maxConns := opts.MaxConnections
	if maxConns <= 0 {
		maxConns = 500
	}
	settings := []string{
		"fsync=" + onOff,
		"synchronous_commit=" + onOff,
		"full_page_writes=" + onOff,
		"max_connections=" + strconv.Itoa(maxConns),
	}
	settings = append(settings, opts.Settings...)
	srv, err := startLocalPostgres(localserver.PostgresOptions{Dir: dir, NoSync: !opts.Durable, Settings: settings})
	if err != nil {
		return nil, err
	}
	// Registered after the directory's removal, so it runs first.
	t.Cleanup(func() { stop(srv.Process) })
	return &Postgres{adminURL: srv.AdminURL(), binDir: srv.BinDir, settings: settings, proc: srv.Process}, nil
}

// Stop shuts the server down at once (SIGQUIT, an immediate shutdown):
// clients' connections end and new ones are refused, as in an outage.
func (p *Postgres) Stop() { stop(p.proc) }

// AdminURL returns the URL of the server's `postgres` database as the
// superuser.
func (p *Postgres) AdminURL() string { return p.adminURL }

// Bin returns the path of one of the server installation's programs, such
// as pgbench or psql.
func (p *Postgres) Bin(name string) string { return filepath.Join(p.binDir, name) }

// Settings returns the -c settings the server was started with.
func (p *Postgres) Settings() []string { return append([]string(nil), p.settings...) }

// CreateDatabase creates an empty database on the server and returns its
// URL. It is dropped with the server.
func (p *Postgres) CreateDatabase(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), adminOpTimeout)
	defer cancel()
	db, err := postgres.Open(ctx, p.adminURL, postgres.Options{MaxOpenConns: 1})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	u, err := withDatabase(p.adminURL, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return u
}

// String describes the server for reports.
func (p *Postgres) String() string { return fmt.Sprintf("PostgreSQL at %s", p.adminURL) }
