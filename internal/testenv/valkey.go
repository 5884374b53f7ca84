package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"
)

const (
	valkeyURLEnv       = "PARLEY_TEST_VALKEY_URL"
	valkeyDirPrefix    = "parley-valkey-"
	valkeyReadyTimeout = 20 * time.Second
	valkeyStartTries   = 3
)

var shared struct {
	once sync.Once
	err  error
	url  string
	dir  string
}

// ValkeyURL returns the URL of this test process's shared Valkey server
// (PARLEY_TEST_VALKEY_URL if set). Tests share it, so keys must be unique
// per test.
func ValkeyURL(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		if u := os.Getenv(valkeyURLEnv); u != "" {
			shared.url = u
			return
		}
		v := &Valkey{}
		if shared.err = v.init(); shared.err == nil {
			shared.dir = v.dir
			shared.err = v.startNew()
		}
		shared.url = v.URL()
	})
	if shared.err != nil {
		t.Fatalf("testenv: Valkey: %v", shared.err)
	}
	return shared.url
}

// Valkey is a private Valkey (or Redis) server for one test, for tests that
// stop and restart it or need it empty.
type Valkey struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	mu   sync.Mutex
	proc *process
}

// NewValkey starts a private server, stopped at cleanup. It always starts
// one, even when PARLEY_TEST_VALKEY_URL is set.
func NewValkey(t testing.TB) *Valkey {
	t.Helper()
	v := &Valkey{t: t}
	if err := v.init(); err != nil {
		t.Fatalf("testenv: Valkey: %v", err)
	}
	t.Cleanup(func() {
		v.Stop()
		_ = os.RemoveAll(v.dir)
	})
	if err := v.startNew(); err != nil {
		t.Fatalf("testenv: Valkey: %v", err)
	}
	return v
}

// URL returns the server's redis:// URL. It stays the same across Stop and
// Start.
func (v *Valkey) URL() string {
	return fmt.Sprintf("redis://127.0.0.1:%d/0", v.port)
}

// Start starts the server again on the same port, empty. It does nothing
// while the server runs.
func (v *Valkey) Start() {
	v.t.Helper()
	if err := v.start(); err != nil {
		v.t.Fatalf("testenv: Valkey: %v", err)
	}
}

// Stop kills the server; clients see connection errors until Start.
func (v *Valkey) Stop() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil {
		v.proc.stop()
		v.proc = nil
	}
}

// Flush deletes every key.
func (v *Valkey) Flush() {
	v.t.Helper()
	if reply, err := command(v.URL(), "FLUSHALL"); err != nil || reply != "+OK" {
		v.t.Fatalf("testenv: Valkey FLUSHALL: %q %v", reply, err)
	}
}

func (v *Valkey) init() error {
	bin, err := valkeyBinary()
	if err != nil {
		return err
	}
	dir, err := serverUser{uid: -1, gid: -1}.makeDir(valkeyDirPrefix)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	v.bin, v.dir, v.port = bin, dir, port
	return nil
}

// startNew starts the server for the first time, on another free port when
// something else takes the chosen one before the server binds it. Later
// starts keep the port, so the URL stays the same.
func (v *Valkey) startNew() error {
	for attempt := 1; ; attempt++ {
		err := v.start()
		if err == nil || attempt == valkeyStartTries {
			return err
		}
		if v.port, err = freePort(); err != nil {
			return err
		}
	}
}

func (v *Valkey) start() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil {
		return nil
	}
	logPath := filepath.Join(v.dir, "valkey.log")
	su := serverUser{uid: -1, gid: -1}
	proc, err := su.start(filepath.Base(v.bin), syscall.SIGKILL, v.dir, logPath, v.bin,
		"--port", strconv.Itoa(v.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", v.dir,
	)
	if err != nil {
		return err
	}
	url := v.URL()
	if err := proc.waitReady(valkeyReadyTimeout, func(context.Context) error {
		reply, err := command(url, "PING")
		if err == nil && reply != "+PONG" {
			err = fmt.Errorf("PING answered %q", reply)
		}
		return err
	}); err != nil {
		proc.stop()
		return err
	}
	v.proc = proc
	return nil
}

// valkeyBinary prefers valkey-server and falls back to redis-server.
func valkeyBinary() (string, error) {
	for _, name := range []string{"valkey-server", "redis-server"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("neither valkey-server nor redis-server is on PATH: install one or set %s", valkeyURLEnv)
}

// command sends one inline command and returns the first reply line. It
// needs no client, so readiness checks stay independent of valkey-go.
func command(url, cmd string) (string, error) {
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "redis://"), "/0")
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// ValkeyClient returns a valkey-go client for url, closed at cleanup.
// Client-side caching is off so tests see exactly what the server holds.
func ValkeyClient(t testing.TB, url string) valkey.Client {
	t.Helper()
	opt, err := valkey.ParseURL(url)
	if err != nil {
		t.Fatalf("testenv: parse Valkey URL: %v", err)
	}
	opt.DisableCache = true
	c, err := valkey.NewClient(opt)
	if err != nil {
		t.Fatalf("testenv: Valkey client: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
