package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/config"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/localserver"
	"github.com/parley-dev/parley/internal/testenv"
)

// Ports `parley dev` is told to look at for running servers: below 1024,
// where nothing listens on a test machine and no free-port choice (from the
// ephemeral range) can put the servers dev starts, so the test needs
// neither 5432 nor 6379 free.
const (
	devPostgresPort = "1"
	devValkeyPort   = "2"
)

// TestDev runs `parley dev` on a machine with nothing configured and
// nothing listening, as a developer would.
func TestDev(t *testing.T) {
	bin := buildBinary(t)
	for _, port := range []string{devPostgresPort, devValkeyPort} {
		if localserver.Listening(t.Context(), "127.0.0.1:"+port) {
			t.Fatalf("something listens on 127.0.0.1:%s; the test needs the port unused", port)
		}
	}

	t.Run("starts its own servers and keeps their data", func(t *testing.T) {
		dir := testenv.ReachableDir(t)
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		base := "http://" + addr
		auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, base)
		creds := &parleyv1.LoginRequest{Email: "ada@example.com", Password: "correct horse battery"}

		first := startDev(t, bin, dir, addr)
		first.waitReady(t, 3*time.Minute)
		reg, err := auth.Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{Email: creds.Email, Password: creds.Password, DisplayName: "Ada"}))
		if err != nil {
			t.Fatalf("register: %v\n%s", err, first.log.String())
		}
		servers := serverChildren(t, first.cmd.Process.Pid)
		ports := devServerPorts(t, dir)
		stopDev(t, first)
		for pid, name := range servers {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s (pid %d) still runs after parley dev exited", name, pid)
			}
		}
		for name, port := range ports {
			if localserver.Listening(t.Context(), net.JoinHostPort("127.0.0.1", port)) {
				t.Errorf("%s's port %s still listens after parley dev exited", name, port)
			}
		}

		// A Parley that cannot start (its address taken) stops the
		// servers it started too.
		taken, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		failed := startDev(t, bin, dir, addr)
		err = failed.cmd.Wait()
		taken.Close()
		if code := failed.cmd.ProcessState.ExitCode(); code != exitFailed || !strings.Contains(failed.log.String(), "listen on "+addr) {
			t.Fatalf("dev on a taken address: %v, want exit %d naming the address:\n%s", err, exitFailed, failed.log.String())
		}
		for name, port := range ports {
			if localserver.Listening(t.Context(), net.JoinHostPort("127.0.0.1", port)) {
				t.Errorf("%s's port %s still listens after parley dev failed to start", name, port)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, config.DevDir, "postgres", "data", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("postmaster.pid left after parley dev failed to start (stat: %v)", err)
		}
		if log, err := os.ReadFile(filepath.Join(dir, config.DevDir, "postgres", "postgres.log")); err != nil || strings.Count(string(log), "ready to accept connections") != 2 {
			t.Errorf("PostgreSQL's log should show two starts, the first and the failed one (%v):\n%s", err, log)
		}

		second := startDev(t, bin, dir, addr)
		second.waitReady(t, 3*time.Minute)
		login, err := auth.Login(t.Context(), connect.NewRequest(creds))
		if err != nil {
			t.Fatalf("login after a restart: %v\n%s", err, second.log.String())
		}
		if login.Msg.GetUser().GetId() != reg.Msg.GetUser().GetId() {
			t.Errorf("after a restart the user is %v, want %v", login.Msg.GetUser(), reg.Msg.GetUser())
		}
		if again := devServerPorts(t, dir); fmt.Sprint(again) != fmt.Sprint(ports) {
			t.Errorf("ports after a restart: %v, want the same as before: %v", again, ports)
		}
		stopDev(t, second)
	})

	t.Run("says in one line what to install", func(t *testing.T) {
		dir := testenv.ReachableDir(t)
		empty := t.TempDir()
		cmd := exec.Command(bin, "dev", "--postgres-port", devPostgresPort, "--valkey-port", devValkeyPort,
			// This machine has PostgreSQL in /usr/lib/postgresql, which dev
			// also searches; point it at a directory without one.
			"--postgres-bin", empty)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + empty, fmt.Sprintf("PARLEY_HTTP_ADDR=127.0.0.1:%d", testenv.FreePort(t))}
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitFailed {
			t.Fatalf("exit: %v, want code %d\n%s", err, exitFailed, stderr.String())
		}
		lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
		if len(lines) != 1 {
			t.Fatalf("stderr has %d lines, want 1:\n%s", len(lines), stderr.String())
		}
		for _, want := range []string{"apt-get install postgresql redis-server", "set DATABASE_URL and VALKEY_URL", "127.0.0.1:" + devPostgresPort, "127.0.0.1:" + devValkeyPort} {
			if !strings.Contains(lines[0], want) {
				t.Errorf("message %q lacks %q", lines[0], want)
			}
		}
		if stdout.Len() > 0 {
			t.Errorf("stdout: %q, want nothing", stdout.String())
		}
		for _, sub := range []string{"postgres", "valkey"} {
			if _, err := os.Stat(filepath.Join(dir, config.DevDir, sub)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s made for a server that cannot start (stat: %v)", filepath.Join(config.DevDir, sub), err)
			}
		}
	})
}

func startDev(t *testing.T, bin, dir, addr string) *replica {
	t.Helper()
	r := &replica{base: "http://" + addr, log: &syncBuffer{}}
	r.cmd = exec.Command(bin, "dev", "--postgres-port", devPostgresPort, "--valkey-port", devValkeyPort)
	r.cmd.Dir = dir
	// No DATABASE_URL or VALKEY_URL.
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PARLEY_HTTP_ADDR=" + addr, "PARLEY_LOG_LEVEL=warn"}
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			// SIGTERM, so dev stops its servers even when the test fails.
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			_ = r.cmd.Wait()
		}
	})
	return r
}

// stopDev sends SIGTERM and waits for a clean exit.
func stopDev(t *testing.T, r *replica) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- r.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, r.log.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("no exit a minute after SIGTERM:\n%s", r.log.String())
	}
}

// serverChildren returns the PostgreSQL and Valkey (or Redis) processes
// whose parent is pid, and fails unless there is one of each.
func serverChildren(t *testing.T, pid int) map[int]string {
	t.Helper()
	children := map[int]string{}
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		status, err := os.ReadFile(filepath.Join(d, "status"))
		if err != nil {
			continue // gone meanwhile
		}
		var name string
		parent := -1
		for line := range strings.Lines(string(status)) {
			if v, ok := strings.CutPrefix(line, "Name:"); ok {
				name = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				parent, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if parent == pid {
			child, _ := strconv.Atoi(filepath.Base(d))
			children[child] = name
		}
	}
	var postgres, valkey int
	for _, name := range children {
		switch name {
		case "postgres":
			postgres++
		case "valkey-server", "redis-server":
			valkey++
		}
	}
	if postgres != 1 || valkey != 1 {
		t.Fatalf("children of parley dev: %v, want one postgres and one valkey-server or redis-server", children)
	}
	return children
}

// devServerPorts reads the ports the started servers recorded.
func devServerPorts(t *testing.T, dir string) map[string]string {
	t.Helper()
	ports := map[string]string{}
	for _, name := range []string{"postgres", "valkey"} {
		b, err := os.ReadFile(filepath.Join(dir, config.DevDir, name, "port"))
		if err != nil {
			t.Fatalf("port of %s: %v", name, err)
		}
		ports[name] = strings.TrimSpace(string(b))
	}
	return ports
}
