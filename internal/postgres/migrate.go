package postgres

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"

	"github.com/parley-dev/parley/migrations"
)

// migrationLockKey is the session advisory lock every replica takes before
// migrating, so replicas that start together apply each migration once.
// The value is arbitrary but must never change between releases.
const migrationLockKey int64 = 0x7061726c65790001 // "parley" + 1

const (
	lockPollMin = 25 * time.Millisecond
	lockPollMax = 500 * time.Millisecond

	// unlockTimeout bounds the unlock that runs even after ctx is done.
	unlockTimeout = 5 * time.Second
)

// MigrationStatus is one embedded migration and whether the database has it.
type MigrationStatus struct {
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// Migrate applies the embedded migrations that the database lacks and
// returns the names (YYYYMMDDHHMMSS_name) it applied, in order. Concurrent
// callers on any number of processes serialize on a session advisory lock;
// a caller that finds the lock taken polls until it is free or ctx is done,
// then finds nothing left to do. The pool must allow at least two
// connections: one holds the lock while the migrations run on another.
func Migrate(ctx context.Context, db *bun.DB, log *slog.Logger) ([]string, error) {
	return migrateFS(ctx, db, log, migrations.FS)
}

func migrateFS(ctx context.Context, db *bun.DB, log *slog.Logger, fsys fs.FS) (applied []string, err error) {
	if n := db.Stats().MaxOpenConnections; n == 1 {
		return nil, errors.New("migrate: the pool must allow at least 2 connections")
	}
	ms, err := discover(fsys)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}

	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: dedicated connection: %w", err)
	}
	if err := acquireLock(ctx, conn, log); err != nil {
		// A try-lock interrupted by ctx may have been granted anyway: never
		// hand this session back to the pool.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer func() {
		if uerr := releaseLock(ctx, conn); uerr != nil {
			err = errors.Join(err, fmt.Errorf("migrate: %w", uerr))
		}
	}()

	m := migrate.NewMigrator(db, ms, migrate.WithMarkAppliedOnSuccess(true))
	if err := m.Init(ctx); err != nil {
		return nil, fmt.Errorf("migrate: create bun_migrations: %w", err)
	}
	group, err := m.Migrate(ctx)
	if group != nil {
		for _, mig := range group.Migrations {
			if mig.ID == 0 {
				// MarkApplied never ran: this is the migration that failed.
				continue
			}
			applied = append(applied, mig.String())
			log.InfoContext(ctx, "migration applied", "migration", mig.String())
		}
	}
	if err != nil {
		return applied, fmt.Errorf("migrate: %w", err)
	}
	return applied, nil
}

// Status lists every embedded migration in order and whether (and when) the
// database recorded it as applied. A database never migrated reports all
// of them as pending.
func Status(ctx context.Context, db *bun.DB) ([]MigrationStatus, error) {
	ms, err := discover(migrations.FS)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	var exists bool
	if err := db.NewRaw("SELECT to_regclass('bun_migrations') IS NOT NULL").Scan(ctx, &exists); err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	if !exists {
		sorted := ms.Sorted()
		out := make([]MigrationStatus, len(sorted))
		for i, mig := range sorted {
			out[i] = MigrationStatus{Name: mig.String()}
		}
		return out, nil
	}
	withStatus, err := migrate.NewMigrator(db, ms).MigrationsWithStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]MigrationStatus, len(withStatus))
	for i, mig := range withStatus {
		out[i] = MigrationStatus{Name: mig.String(), Applied: mig.IsApplied(), AppliedAt: mig.MigratedAt}
	}
	return out, nil
}

func discover(fsys fs.FS) (*migrate.Migrations, error) {
	ms := migrate.NewMigrations()
	if err := ms.Discover(fsys); err != nil {
		return nil, fmt.Errorf("discover migrations: %w", err)
	}
	return ms, nil
}

// acquireLock takes the migration lock on conn, polling with a growing pause
// while another session holds it. A blocking pg_advisory_lock would ignore
// ctx once the query is sent, and would hide the wait from the log.
func acquireLock(ctx context.Context, conn bun.Conn, log *slog.Logger) error {
	pause := lockPollMin
	logged := false
	for {
		var ok bool
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", migrationLockKey).Scan(&ok); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		if ok {
			return nil
		}
		if !logged {
			log.InfoContext(ctx, "waiting for another replica to finish migrating")
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for migration lock: %w", context.Cause(ctx))
		case <-time.After(pause):
		}
		pause = min(pause*2, lockPollMax)
	}
}

// releaseLock unlocks and returns conn to the pool. It runs even when ctx is
// done; if the unlock cannot be confirmed the connection is discarded rather
// than pooled, because closing the session is what frees the lock then.
func releaseLock(ctx context.Context, conn bun.Conn) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unlockTimeout)
	defer cancel()
	var ok bool
	err := conn.QueryRowContext(ctx, "SELECT pg_advisory_unlock(?)", migrationLockKey).Scan(&ok)
	if err == nil && !ok {
		err = errors.New("lock was not held")
	}
	if err != nil {
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		_ = conn.Close()
		return fmt.Errorf("release migration lock: %w", err)
	}
	return conn.Close()
}
