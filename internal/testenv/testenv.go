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
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
	all := make([]*process, 0, len(procs.set))
	for p := range procs.set {
		all = append(all, p)
	}
	procs.mu.Unlock()
	for _, p := range all {
		p.stop()
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
	port, err := freePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// randomName returns a lower-case identifier safe to splice into SQL.
func randomName(prefix string) string {
	return prefix + strings.ToLower(rand.Text()[:16])
}

// procs tracks the children still running so Main can stop them.
var procs = struct {
	mu  sync.Mutex
	set map[*process]struct{}
}{set: make(map[*process]struct{})}

// process is a server child. It dies with the test binary (Pdeathsig), so a
// crashed or killed test run leaves no server behind.
type process struct {
	name    string
	cmd     *exec.Cmd
	stopSig syscall.Signal
	logPath string
	exited  chan struct{}
	waitErr error
	once    sync.Once
}

// serverUser is the account children run as: the current one, or the
// `postgres` system user under root, because initdb and postgres refuse
// to run as root.
type serverUser struct {
	cred     *syscall.Credential // nil: do not switch
	uid, gid int
}

func postgresUser() (serverUser, error) {
	if os.Geteuid() != 0 {
		return serverUser{uid: -1, gid: -1}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return serverUser{}, fmt.Errorf("running as root, PostgreSQL must run as the `postgres` system user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return serverUser{}, fmt.Errorf("uid of postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return serverUser{}, fmt.Errorf("gid of postgres: %w", err)
	}
	return serverUser{
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		uid:  uid,
		gid:  gid,
	}, nil
}

// makeDir creates a private (0700) temporary directory owned by su, named
// prefix+random, with a file naming this process: a test binary killed by
// its timeout never reaches Main's cleanup, so each new directory first
// sweeps those whose owner is gone.
func (su serverUser) makeDir(prefix string) (string, error) {
	sweepStaleDirs(prefix)
	dir, err := os.MkdirTemp("", prefix+"*")
	if err != nil {
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	if su.cred != nil {
		if err := os.Chown(dir, su.uid, su.gid); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("chown %s: %w", dir, err)
		}
	}
	return dir, nil
}

func (su serverUser) command(sig syscall.Signal, dir, logPath, bin string, args ...string) (*exec.Cmd, *os.File, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(bin, args...)
	// The test's working directory may not be readable by the server user.
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: sig, Credential: su.cred}
	return cmd, logf, nil
}

// run runs a short-lived command (initdb) to completion.
func (su serverUser) run(dir, logPath, bin string, args ...string) error {
	cmd, logf, err := su.command(syscall.SIGKILL, dir, logPath, bin, args...)
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", bin, err, logTail(logPath))
	}
	return nil
}

// start starts a long-running server that stops on sig, also sent to it
// when the test binary dies.
func (su serverUser) start(name string, sig syscall.Signal, dir, logPath, bin string, args ...string) (*process, error) {
	cmd, logf, err := su.command(sig, dir, logPath, bin, args...)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{name: name, cmd: cmd, stopSig: sig, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	procs.mu.Lock()
	procs.set[p] = struct{}{}
	procs.mu.Unlock()
	return p, nil
}

// waitReady polls ready until it succeeds, the process exits or timeout.
func (p *process) waitReady(timeout time.Duration, ready func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last = ready(ctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before accepting connections (%v)\n%s", p.name, p.waitErr, logTail(p.logPath))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w\n%s", p.name, timeout, last, logTail(p.logPath))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// stop signals the child and waits for it, killing it if it lingers.
// Servers here hold nothing worth a clean shutdown.
func (p *process) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(p.stopSig)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		procs.mu.Lock()
		delete(procs.set, p)
		procs.mu.Unlock()
	})
}

// logTail returns the end of a server's log for failure messages.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const max = 4096
	if st, err := f.Stat(); err == nil && st.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return fmt.Sprintf("(log unreadable: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return "--- " + path + " ---\n" + strings.TrimSpace(string(b))
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
