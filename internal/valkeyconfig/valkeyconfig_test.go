package valkeyconfig_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/valkeyconfig"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// logBuffer collects a JSON logger's records.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(l.b.String()) {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func newLogger() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func configSet(t *testing.T, c valkey.Client, policy string) {
	t.Helper()
	if err := c.Do(t.Context(), c.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", policy).Build()).Error(); err != nil {
		t.Fatalf("CONFIG SET maxmemory-policy %s: %v", policy, err)
	}
}

func TestCheckEvictionPolicy(t *testing.T) {
	t.Parallel()
	// A private server: the policy is server-wide.
	c := testenv.ValkeyClient(t, testenv.NewValkey(t).URL())

	for _, policy := range []string{"allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-random", valkeyconfig.NoEviction} {
		t.Run(policy, func(t *testing.T) {
			configSet(t, c, policy)
			got, err := valkeyconfig.EvictionPolicy(t.Context(), c)
			if err != nil || got != policy {
				t.Fatalf("EvictionPolicy = %q, %v; want %q", got, err, policy)
			}
			log, buf := newLogger()
			valkeyconfig.CheckEvictionPolicy(t.Context(), c, log)
			recs := buf.records(t)
			if policy == valkeyconfig.NoEviction {
				if len(recs) != 0 {
					t.Fatalf("noeviction logged %v", recs)
				}
				return
			}
			if len(recs) != 1 || recs[0]["level"] != "WARN" || recs[0]["maxmemory_policy"] != policy ||
				!strings.Contains(recs[0]["msg"].(string), "noeviction") {
				t.Fatalf("%s logged %v; want one warning naming the policy and noeviction", policy, recs)
			}
		})
	}
}

// A managed service that disables CONFIG, or an ACL that denies it, must not
// stop the check (nor Parley): it logs that it could not check, once.
func TestCheckEvictionPolicyConfigRefused(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	admin := testenv.ValkeyClient(t, v.URL())
	if err := admin.Do(t.Context(), admin.B().Arbitrary("ACL", "SETUSER", "parley", "on", ">secret", "~*", "&*", "+@all", "-config").Build()).Error(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	c := testenv.ValkeyClient(t, strings.Replace(v.URL(), "redis://", "redis://parley:secret@", 1))
	if err := c.Do(t.Context(), c.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("PING as the restricted user: %v", err)
	}

	_, err := valkeyconfig.EvictionPolicy(t.Context(), c)
	if !errors.Is(err, valkeyconfig.ErrConfigRefused) {
		t.Fatalf("EvictionPolicy = %v; want ErrConfigRefused", err)
	}
	log, buf := newLogger()
	done := make(chan struct{})
	go func() {
		defer close(done)
		valkeyconfig.CheckEvictionPolicy(t.Context(), c, log)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("CheckEvictionPolicy kept trying after CONFIG GET was refused")
	}
	recs := buf.records(t)
	if len(recs) != 1 || recs[0]["level"] != "INFO" || !strings.Contains(fmt.Sprint(recs[0]["error"]), "NOPERM") {
		t.Fatalf("logged %v; want one info line with the refusal", recs)
	}
}

// A replica may start while Valkey is down: the check waits for it.
func TestCheckEvictionPolicyWaitsForValkey(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	c := testenv.ValkeyClient(t, v.URL())
	v.Stop()
	log, buf := newLogger()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		valkeyconfig.CheckEvictionPolicy(ctx, c, log)
	}()
	time.Sleep(1500 * time.Millisecond)
	select {
	case <-done:
		t.Fatalf("CheckEvictionPolicy returned while Valkey was down; logged %v", buf.records(t))
	default:
	}
	v.Start() // empty, with the default policy: noeviction
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("CheckEvictionPolicy did not return once Valkey answered")
	}
	if recs := buf.records(t); len(recs) != 0 {
		t.Fatalf("logged %v; want nothing for noeviction", recs)
	}

	// And it gives up with ctx while Valkey is down.
	v.Stop()
	ctx, cancel = context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	valkeyconfig.CheckEvictionPolicy(ctx, c, log)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("CheckEvictionPolicy took %v after its context ended", d)
	}
}
