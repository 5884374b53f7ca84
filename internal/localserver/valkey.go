package localserver

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
	"syscall"
	"time"
)

const valkeyReadyTimeout = 20 * time.Second

// ValkeyOptions say where and how StartValkey runs a server.
type ValkeyOptions struct {
	// Dir holds the server's log, port and, with Keep, its snapshot. It is
	// created if missing.
	Dir string
	// Port is the port to listen on, and then the only one tried. Zero
	// means the port of the last start in Dir, else (or if that is taken)
	// a free one.
	Port int
	// Keep saves the data in Dir (snapshots, and one at Stop) and loads it
	// at the next start. Otherwise the server starts empty and Stop kills
	// it.
	Keep bool
}

// Valkey is a running Valkey (or Redis) server.
type Valkey struct {
	*Process
	Port int
}

// URL returns the server's redis:// URL.
func (v *Valkey) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", v.Port) }

// StartValkey starts valkey-server (or redis-server) and waits until it
// answers PING. It answers ErrNotInstalled when neither is installed.
func StartValkey(ctx context.Context, opts ValkeyOptions) (*Valkey, error) {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	bin, err := FindValkey()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	logPath := filepath.Join(opts.Dir, "valkey.log")
	sig := syscall.SIGKILL
	persistence := []string{"--save", "", "--appendonly", "no"}
	if opts.Keep {
		// The built-in snapshot schedule, and SIGTERM makes the server save
		// one more before it exits.
		sig = syscall.SIGTERM
		persistence = []string{"--appendonly", "no", "--dbfilename", "dump.rdb"}
	}
	proc, port, err := startServer(ctx, opts.Dir, opts.Port, valkeyReadyTimeout, func(port int) Command {
		return Command{
			Name: filepath.Base(bin), Path: bin, Dir: opts.Dir, Log: logPath, User: CurrentUser(), StopSignal: sig, StopTimeout: 30 * time.Second,
			Args: append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", opts.Dir}, persistence...),
		}
	}, valkeyReady)
	if err != nil {
		return nil, err
	}
	return &Valkey{Process: proc, Port: port}, nil
}

func valkeyReady(_ context.Context, addr string) error {
	reply, err := command(addr, "PING")
	if err == nil && reply != "+PONG" {
		err = fmt.Errorf("PING answered %q", reply)
	}
	return err
}

// FindValkey finds valkey-server, else redis-server, on PATH. It answers
// ErrNotInstalled when there is neither.
func FindValkey() (string, error) {
	for _, name := range []string{"valkey-server", "redis-server"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("Valkey is %w (no valkey-server or redis-server on PATH)", ErrNotInstalled)
}

// command sends one inline command and returns the first reply line. It
// needs no client, so starting a server stays independent of valkey-go.
func command(addr, cmd string) (string, error) {
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
