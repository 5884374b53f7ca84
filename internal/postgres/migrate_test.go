package postgres_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/migrations"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// embedded lists the embedded migrations as Migrate names them.
func embedded(t *testing.T) []string {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.up.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no embedded migrations: %v", err)
	}
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = strings.TrimSuffix(f, ".up.sql")
	}
	slices.Sort(names)
	return names
}

func open(t *testing.T, url string, opts postgres.Options) *bun.DB {
	t.Helper()
	db, err := postgres.Open(t.Context(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := open(t, testenv.DatabaseURL(t), postgres.Options{})
	var one int
	if err := db.NewRaw("SELECT 1").Scan(ctx, &one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	if got := db.Stats().MaxOpenConnections; got <= 0 {
		t.Errorf("MaxOpenConnections = %d, want a default limit", got)
	}

	// Errors must name the problem without echoing the password.
	for _, url := range []string{
		"postgres://parley:s3cretpw@127.0.0.1:1/parley?sslmode=disable&connect_timeout=2",
		"postgres://parley:s3cretpw@127.0.0.1:notaport/parley",
	} {
		db, err := postgres.Open(ctx, url, postgres.Options{})
		if err == nil {
			db.Close()
			t.Errorf("Open(%s) succeeded", url)
			continue
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("error leaks the password: %v", err)
		}
		if !strings.HasPrefix(err.Error(), "open postgres: ") {
			t.Errorf("error %q lacks the operation", err)
		}
	}
}

func TestMigrateAppliesAllThenNothing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := open(t, testenv.EmptyDatabaseURL(t), postgres.Options{})
	want := embedded(t)

	status, err := postgres.Status(ctx, db)
	if err != nil {
		t.Fatalf("Status before Migrate: %v", err)
	}
	if len(status) != len(want) || slices.ContainsFunc(status, func(s postgres.MigrationStatus) bool { return s.Applied }) {
		t.Errorf("Status of an empty database = %+v, want %d pending", status, len(want))
	}

	before := time.Now().Add(-time.Minute)
	applied, err := postgres.Migrate(ctx, db, discard)
	if err != nil {
		t.Fatalf("first Migrate: %v", err)
	}
	if !slices.Equal(applied, want) {
		t.Errorf("first Migrate applied %v, want %v", applied, want)
	}
	applied, err = postgres.Migrate(ctx, db, discard)
	if err != nil || len(applied) != 0 {
		t.Errorf("second Migrate = %v, %v; want nothing applied", applied, err)
	}

	status, err = postgres.Status(ctx, db)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var names []string
	for _, s := range status {
		names = append(names, s.Name)
		if !s.Applied || s.AppliedAt.Before(before) || s.AppliedAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("Status %+v: want applied just now", s)
		}
	}
	if !slices.Equal(names, want) {
		t.Errorf("Status names %v, want %v", names, want)
	}
}

// TestConcurrentMigrate is replicas starting together: each has its own pool
// and all migrate one empty database at the same moment.
func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := testenv.EmptyDatabaseURL(t)
	want := embedded(t)

	const replicas = 3
	dbs := make([]*bun.DB, replicas)
	for i := range dbs {
		dbs[i] = open(t, url, postgres.Options{MaxOpenConns: 4})
	}
	start := make(chan struct{})
	results := make([][]string, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i, db := range dbs {
		wg.Go(func() {
			<-start
			results[i], errs[i] = postgres.Migrate(ctx, db, discard)
		})
	}
	close(start)
	wg.Wait()

	var total int
	for i := range dbs {
		if errs[i] != nil {
			t.Errorf("replica %d: %v", i, errs[i])
		}
		total += len(results[i])
	}
	if total != len(want) {
		t.Errorf("replicas applied %v in all, want each of %d migrations once", results, len(want))
	}

	var rows []struct {
		Name  string
		Count int
	}
	if err := dbs[0].NewRaw("SELECT name, count(*) AS count FROM bun_migrations GROUP BY name ORDER BY name").Scan(ctx, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(want) {
		t.Errorf("bun_migrations has %d names, want %d", len(rows), len(want))
	}
	for _, r := range rows {
		if r.Count != 1 {
			t.Errorf("migration %s recorded %d times", r.Name, r.Count)
		}
	}
}

func TestMigrateWaitsForTheLock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := open(t, testenv.EmptyDatabaseURL(t), postgres.Options{})

	// Another replica's session holds the lock.
	other, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.ExecContext(ctx, "SELECT pg_advisory_lock(?)", postgres.MigrationLockKey); err != nil {
		t.Fatal(err)
	}

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := postgres.Migrate(short, db, discard); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate while locked = %v, want a deadline error", err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := postgres.Migrate(ctx, db, discard)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Migrate returned %v while the lock was held", err)
	case <-time.After(150 * time.Millisecond):
	}
	if _, err := other.ExecContext(ctx, "SELECT pg_advisory_unlock(?)", postgres.MigrationLockKey); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Migrate after unlock: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Migrate did not proceed after the lock was released")
	}
}

func TestFailedMigrationIsNotRecorded(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := open(t, testenv.EmptyDatabaseURL(t), postgres.Options{})
	fsys := fstest.MapFS{
		"20990101000001_good.up.sql": {Data: []byte("CREATE TABLE good (id int);")},
		// One simple-protocol batch: its CREATE must roll back with the error.
		"20990101000002_bad.up.sql": {Data: []byte("CREATE TABLE half (id int);\nSELECT 1/0;")},
	}

	for range 2 {
		applied, err := postgres.MigrateFS(ctx, db, discard, fsys)
		if err == nil || !strings.Contains(err.Error(), "20990101000002") {
			t.Errorf("Migrate = %v, want the bad migration's error", err)
		}
		// The good one is applied by the first call only.
		if len(applied) > 1 || (len(applied) == 1 && applied[0] != "20990101000001_good") {
			t.Errorf("applied %v", applied)
		}
	}
	var names []string
	if err := db.NewRaw("SELECT name FROM bun_migrations ORDER BY name").Scan(ctx, &names); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"20990101000001"}) {
		t.Errorf("bun_migrations = %v, want only the good migration", names)
	}
	var half *string
	if err := db.NewRaw("SELECT to_regclass('half')::text").Scan(ctx, &half); err != nil || half != nil {
		t.Errorf("table of the failed migration: %v, %v; want none", half, err)
	}

	// The failure released the lock.
	var ok bool
	if err := db.NewRaw("SELECT pg_try_advisory_lock(?)", postgres.MigrationLockKey).Scan(ctx, &ok); err != nil || !ok {
		t.Errorf("lock after a failed Migrate: %v, %v; want free", ok, err)
	}
}

func TestMigrateRefusesASingleConnectionPool(t *testing.T) {
	t.Parallel()
	db := open(t, testenv.EmptyDatabaseURL(t), postgres.Options{MaxOpenConns: 1})
	if _, err := postgres.Migrate(t.Context(), db, discard); err == nil {
		t.Error("Migrate with one connection succeeded; it would deadlock on larger sets")
	}
}
