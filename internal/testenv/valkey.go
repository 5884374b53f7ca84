package testenv

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/localserver"
)

const (
	valkeyURLEnv    = "PARLEY_TEST_VALKEY_URL"
	valkeyDirPrefix = "parley-valkey-"
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
			shared.err = v.start()
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
	dir  string
	port int
	mu   sync.Mutex
	srv  *localserver.Valkey
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
	if err := v.start(); err != nil {
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
	if v.srv != nil {
		stop(v.srv.Process)
		v.srv = nil
	}
}

// Flush deletes every key.
func (v *Valkey) Flush() {
	v.t.Helper()
	c := ValkeyClient(v.t, v.URL())
	if err := c.Do(context.Background(), c.B().Flushall().Build()).Error(); err != nil {
		v.t.Fatalf("testenv: Valkey FLUSHALL: %v", err)
	}
}

func (v *Valkey) init() error {
	if _, err := localserver.FindValkey(); err != nil {
		return fmt.Errorf("%w: install valkey-server or redis-server, or set %s", err, valkeyURLEnv)
	}
	dir, err := makeDir(valkeyDirPrefix)
	if err != nil {
		return err
	}
	v.dir = dir
	return nil
}

// start starts the server: the first time on a free port (another one when
// something else takes it before the server binds it), later on the same
// port, so the URL stays the same.
func (v *Valkey) start() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.srv != nil {
		return nil
	}
	srv, err := localserver.StartValkey(context.Background(), localserver.ValkeyOptions{Dir: v.dir, Port: v.port})
	if err != nil {
		return err
	}
	track(srv.Process)
	v.srv, v.port = srv, srv.Port
	return nil
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
