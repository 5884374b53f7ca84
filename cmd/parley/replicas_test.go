package main

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/migrations"
)

// replica is a parley process.
type replica struct {
	base string
	cmd  *exec.Cmd
	log  *syncBuffer
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func startReplica(t *testing.T, bin string, env map[string]string) *replica {
	t.Helper()
	r := &replica{base: "http://" + env["PARLEY_HTTP_ADDR"], log: &syncBuffer{}}
	r.cmd = exec.Command(bin, "serve")
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		r.cmd.Env = append(r.cmd.Env, k+"="+v)
	}
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
		}
	})
	return r
}

func (r *replica) readyz() int {
	resp, err := http.Get(r.base + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (r *replica) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if r.readyz() == http.StatusOK {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("replica %s not ready within %v:\n%s", r.base, within, r.log.String())
}

// startReplicas starts n replicas at once with env (each on its own port)
// and waits until all are ready.
func startReplicas(t *testing.T, bin string, env map[string]string, n int) []*replica {
	t.Helper()
	replicas := make([]*replica, n)
	for i := range replicas {
		e := make(map[string]string, len(env))
		for k, v := range env {
			e[k] = v
		}
		e["PARLEY_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		replicas[i] = startReplica(t, bin, e)
	}
	var wg sync.WaitGroup
	for _, r := range replicas {
		wg.Go(func() { r.waitReady(t, 60*time.Second) })
	}
	wg.Wait()
	return replicas
}

func TestThreeReplicas(t *testing.T) {
	bin := buildBinary(t)
	dbURL := testenv.EmptyDatabaseURL(t)
	env := baseEnv(t, dbURL)
	env["VALKEY_URL"] = testenv.NewValkey(t).URL()
	env["PARLEY_RATE_LIMIT_USER_PER_MINUTE"] = "12"
	env["PARLEY_SHUTDOWN_DELAY"] = "1s"
	env["PARLEY_LOG_LEVEL"] = "info"

	replicas := startReplicas(t, bin, env, 3)

	t.Run("every migration applied once", func(t *testing.T) {
		ctx := context.Background()
		db, err := postgres.Open(ctx, dbURL, postgres.Options{MaxOpenConns: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		files, err := fs.Glob(migrations.FS, "*.up.sql")
		if err != nil {
			t.Fatal(err)
		}
		var rows, distinct int
		if err := db.QueryRowContext(ctx, "SELECT count(*), count(DISTINCT name) FROM bun_migrations").Scan(&rows, &distinct); err != nil {
			t.Fatal(err)
		}
		if rows != len(files) || distinct != len(files) {
			t.Fatalf("bun_migrations has %d rows (%d distinct) for %d files", rows, distinct, len(files))
		}
	})

	ctx := context.Background()
	authOn := func(r *replica) parleyv1connect.AuthServiceClient {
		return parleyv1connect.NewAuthServiceClient(http.DefaultClient, r.base)
	}
	usersOn := func(r *replica) parleyv1connect.UserServiceClient {
		return parleyv1connect.NewUserServiceClient(http.DefaultClient, r.base)
	}
	register := func(t *testing.T, email string) *parleyv1.RegisterResponse {
		t.Helper()
		resp, err := authOn(replicas[0]).Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: email, Password: "correct horse"}))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Msg
	}

	t.Run("a token revoked on one replica is refused by all", func(t *testing.T) {
		reg := register(t, "revoke@example.com")
		tok := reg.GetTokens().GetAccessToken()
		for _, r := range replicas {
			if _, err := usersOn(r).GetProfile(ctx, bearer(connect.NewRequest(&parleyv1.GetProfileRequest{}), tok)); err != nil {
				t.Fatalf("before logout on %s: %v", r.base, err)
			}
		}
		if _, err := authOn(replicas[1]).Logout(ctx, bearer(connect.NewRequest(&parleyv1.LogoutRequest{}), tok)); err != nil {
			t.Fatal(err)
		}
		for _, r := range replicas {
			_, err := usersOn(r).GetProfile(ctx, bearer(connect.NewRequest(&parleyv1.GetProfileRequest{}), tok))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("after logout on %s: %v, want unauthenticated", r.base, err)
			}
		}
	})

	t.Run("a rate limit is shared by all replicas", func(t *testing.T) {
		tok := register(t, "limit@example.com").GetTokens().GetAccessToken()
		allowed := 0
		var refused error
		for i := 0; i < 30 && refused == nil; i++ {
			r := replicas[i%len(replicas)]
			_, err := usersOn(r).GetProfile(ctx, bearer(connect.NewRequest(&parleyv1.GetProfileRequest{}), tok))
			switch connect.CodeOf(err) {
			case connect.CodeResourceExhausted:
				refused = err
			default:
				if err != nil {
					t.Fatal(err)
				}
				allowed++
			}
		}
		// 12 a minute with the whole minute's burst: a little refill may
		// land while the test runs, but nowhere near 12 per replica.
		if refused == nil || allowed < 12 || allowed > 13 {
			t.Fatalf("allowed %d calls across 3 replicas before refusal (%v); want 12", allowed, refused)
		}
	})

	t.Run("SIGTERM drains: readyz 503, then a clean exit", func(t *testing.T) {
		r := replicas[2]
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		saw503 := false
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) && !saw503 {
			saw503 = r.readyz() == http.StatusServiceUnavailable
			time.Sleep(20 * time.Millisecond)
		}
		if !saw503 {
			t.Error("readyz never answered 503 while draining")
		}
		done := make(chan error, 1)
		go func() { done <- r.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("exit: %v\n%s", err, r.log.String())
			}
		case <-time.After(15 * time.Second):
			t.Fatal("replica did not exit after SIGTERM")
		}
		if !strings.Contains(r.log.String(), `"msg":"stopped"`) {
			t.Errorf("no clean stop in log:\n%s", r.log.String())
		}
	})
}
