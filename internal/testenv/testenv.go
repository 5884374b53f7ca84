// Package testenv gives tests real backing services: a private PostgreSQL
// and Valkey (or Redis) server started lazily from local binaries, once per
// test process, or the servers named by PARLEY_TEST_DATABASE_URL and
// PARLEY_TEST_VALKEY_URL. Each test gets its own database, cloned from a
// migrated template. A missing service fails the test; it is never skipped.
//
// A package whose tests use it calls Main from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// The package imports internal/postgres, so tests inside package postgres
// itself must be external (package postgres_test).
package testenv

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/parley-dev/parley/internal/localserver"
)

// Main runs the tests, then stops every server this process started and
// exits with the tests' code.
func Main(m *testing.M) {
	code := m.Run()
	shutdown()
	os.Exit(code)
}

// shutdown is also safe when nothing was started.
func shutdown() {
	stopPostgres()
	procs.mu.Lock()
	all := make([]*localserver.Process, 0, len(procs.set))
	for p := range procs.set {
		all = append(all, p)
	}
	procs.mu.Unlock()
	for _, p := range all {
		stop(p)
	}
	for _, dir := range []string{shared.dir, azurite.dir} {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := localserver.FreePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

// randomName returns a lower-case identifier safe to splice into SQL.
func randomName(prefix string) string {
	return prefix + strings.ToLower(rand.Text()[:16])
}

// procs tracks the servers still running so Main can stop them. Each dies
// with the test binary (the parent-death signal), so a crashed or killed
// test run leaves no server behind.
var procs = struct {
	mu  sync.Mutex
	set map[*localserver.Process]struct{}
}{set: make(map[*localserver.Process]struct{})}

func track(p *localserver.Process) {
	procs.mu.Lock()
	procs.set[p] = struct{}{}
	procs.mu.Unlock()
}

// stop stops a tracked server.
func stop(p *localserver.Process) {
	p.Stop()
	procs.mu.Lock()
	delete(procs.set, p)
	procs.mu.Unlock()
}

// makeDir creates a private (0700) temporary directory named
// prefix+random, with a file naming this process: a test binary killed by
// its timeout never reaches Main's cleanup, so each new directory first
// sweeps those whose owner is gone.
func makeDir(prefix string) (string, error) {
	sweepStaleDirs(prefix)
	dir, err := os.MkdirTemp("", prefix+"*")
	if err != nil {
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	return dir, nil
}

const ownerFile = "owner.pid"

func sweepStaleDirs(prefix string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}

// ReachableDir returns a new temporary directory, removed at cleanup, that
// other users may pass through: under root PostgreSQL runs as the postgres
// user, who must reach a server directory kept inside it, and t.TempDir's
// parents are private.
func ReachableDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "parley-reachable-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dir
}
