// Package postgres holds Parley's PostgreSQL adapter: opening the connection
// pool, applying the embedded migrations and the Bun-backed stores of each
// domain.
package postgres

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// Options tunes the connection pool. Zero fields take the defaults below.
type Options struct {
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
	ConnMaxIdleTime time.Duration
}

const (
	defaultMaxOpenConns    = 20
	defaultMaxIdleConns    = 10
	defaultConnMaxLifetime = 30 * time.Minute
	defaultConnMaxIdleTime = 5 * time.Minute

	// pingTimeout bounds the start-up check so a black-holed address fails
	// fast instead of hanging the process.
	pingTimeout = 10 * time.Second
)

func (o Options) withDefaults() Options {
	if o.MaxOpenConns <= 0 {
		o.MaxOpenConns = defaultMaxOpenConns
	}
	if o.MaxIdleConns <= 0 {
		o.MaxIdleConns = min(defaultMaxIdleConns, o.MaxOpenConns)
	}
	if o.ConnMaxLifetime <= 0 {
		o.ConnMaxLifetime = defaultConnMaxLifetime
	}
	if o.ConnMaxIdleTime <= 0 {
		o.ConnMaxIdleTime = defaultConnMaxIdleTime
	}
	return o
}

// Open connects to the PostgreSQL database at url (a postgres:// URL or a
// keyword/value string) through pgx, wraps the pool in Bun and checks it
// with a ping. The caller closes the returned DB.
func Open(ctx context.Context, url string, opts Options) (*bun.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", redactParseError(err))
	}

	opts = opts.withDefaults()
	sqldb := stdlib.OpenDB(*cfg)
	sqldb.SetMaxOpenConns(opts.MaxOpenConns)
	sqldb.SetMaxIdleConns(opts.MaxIdleConns)
	sqldb.SetConnMaxLifetime(opts.ConnMaxLifetime)
	sqldb.SetConnMaxIdleTime(opts.ConnMaxIdleTime)
	db := bun.NewDB(sqldb, pgdialect.New())

	pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open postgres: ping %s:%d/%s: %w", cfg.Host, cfg.Port, cfg.Database, err)
	}
	return db, nil
}

// redactParseError drops the connection string from a parse error: pgx
// redacts the password only on a best-effort basis and net/url quotes the
// raw URL, password included.
func redactParseError(err error) error {
	var pce *pgconn.ParseConfigError
	if !errors.As(err, &pce) {
		return err
	}
	inner := pce.Unwrap()
	var uerr *neturl.Error
	if errors.As(inner, &uerr) {
		inner = uerr.Err
	}
	if inner == nil {
		return errors.New("invalid database URL")
	}
	return fmt.Errorf("invalid database URL: %w", inner)
}

// EnsureDatabase creates the database that url names unless the server has
// it, connecting to the server's `postgres` database as url's user, who
// must be allowed to create databases.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("ensure database: %w", redactParseError(err))
	}
	name := cfg.Database
	u, err := neturl.Parse(url)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return errors.New("ensure database: want a postgres:// URL")
	}
	u.Path, u.RawPath = "/postgres", ""
	db, err := Open(ctx, u.String(), Options{MaxOpenConns: 1})
	if err != nil {
		return err
	}
	defer db.Close()
	var exists bool
	if err := db.NewRaw("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = ?)", name).Scan(ctx, &exists); err != nil {
		return fmt.Errorf("ensure database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}
