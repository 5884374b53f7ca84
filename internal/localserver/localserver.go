// Package localserver runs PostgreSQL and Valkey (or Redis) servers from the
// binaries installed on this machine, as children of the calling process: the
// test harness's private servers and those of `parley dev`. A server's
// directory may be kept: started again in it, a server reuses its data and
// prefers its last port.
package localserver

import (
	"context"
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
	"time"
)

// ErrNotInstalled is returned when a server's programs are not found.
var ErrNotInstalled = errors.New("not installed")

// defaultStopTimeout is how long Stop waits before it kills a server.
const defaultStopTimeout = 5 * time.Second

// User is the account a server runs as: the current one, or the `postgres`
// system user under root, because initdb and postgres refuse to run as root.
type User struct {
	cred     *syscall.Credential // nil: do not switch
	uid, gid int
}

// CurrentUser is the account of the calling process.
func CurrentUser() User { return User{uid: -1, gid: -1} }

// PostgresUser is the account PostgreSQL runs as: the current one, or the
// `postgres` system user when the process runs as root.
func PostgresUser() (User, error) {
	if os.Geteuid() != 0 {
		return CurrentUser(), nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return User{}, fmt.Errorf("running as root, PostgreSQL must run as the `postgres` system user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return User{}, fmt.Errorf("uid of postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return User{}, fmt.Errorf("gid of postgres: %w", err)
	}
	return User{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid: uid, gid: gid}, nil
}

// Own gives path to u; it does nothing for the current user.
func (u User) Own(path string) error {
	if u.cred == nil {
		return nil
	}
	if err := os.Chown(path, u.uid, u.gid); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// Command is a server program to run.
type Command struct {
	// Name names the server in errors.
	Name string
	Path string
	Args []string
	// Dir is the working directory: the caller's may not be readable by
	// the server's user.
	Dir string
	// Log receives stdout and stderr, appended.
	Log  string
	User User
	// StopSignal asks the server to stop, from Stop and, on Linux, when the
	// calling process dies. Zero means SIGKILL.
	StopSignal syscall.Signal
	// StopTimeout is how long Stop waits before it kills; zero means 5s.
	StopTimeout time.Duration
}

func (c Command) cmd() (*exec.Cmd, *os.File, error) {
	logf, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Dir = c.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group: a terminal's Ctrl-C reaches only the caller,
	// which stops the server once it no longer needs it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.User.cred}
	setParentDeathSignal(cmd.SysProcAttr, c.stopSignal())
	return cmd, logf, nil
}

func (c Command) stopSignal() syscall.Signal {
	if c.StopSignal == 0 {
		return syscall.SIGKILL
	}
	return c.StopSignal
}

// Run runs a short-lived program (initdb) to completion.
func Run(c Command) error {
	cmd, logf, err := c.cmd()
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", c.Path, err, LogTail(c.Log))
	}
	return nil
}

// Process is a running server.
type Process struct {
	name        string
	cmd         *exec.Cmd
	stopSig     syscall.Signal
	stopTimeout time.Duration
	logPath     string
	exited      chan struct{}
	waitErr     error
	once        sync.Once
}

// Start starts a long-running server.
func Start(c Command) (*Process, error) {
	cmd, logf, err := c.cmd()
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Path, err)
	}
	p := &Process{
		name:        c.Name,
		cmd:         cmd,
		stopSig:     c.stopSignal(),
		stopTimeout: c.StopTimeout,
		logPath:     c.Log,
		exited:      make(chan struct{}),
	}
	if p.stopTimeout <= 0 {
		p.stopTimeout = defaultStopTimeout
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Pid returns the server's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// WaitReady polls ready until it succeeds, the process exits, ctx ends or
// timeout passes.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		last := ready(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before accepting connections (%v)\n%s", p.name, p.waitErr, LogTail(p.logPath))
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", p.name, ctx.Err())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w\n%s", p.name, timeout, last, LogTail(p.logPath))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// Stop signals the server and waits for it to exit, killing it if it
// lingers. It is safe to call more than once.
func (p *Process) Stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(p.stopSig)
		select {
		case <-p.exited:
		case <-time.After(p.stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// LogTail returns the end of a server's log for failure messages.
func LogTail(path string) string {
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

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Listening reports whether something accepts TCP connections at addr.
func Listening(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

const portFile = "port"

// startServer starts the server that cmd describes for a port and waits
// until ready succeeds at its address: on port or, when port is 0, on the
// port recorded in dir (then free ones), trying up to three ports when
// another process takes one first. It records the port that worked.
func startServer(ctx context.Context, dir string, port int, timeout time.Duration,
	cmd func(port int) Command, ready func(ctx context.Context, addr string) error,
) (*Process, int, error) {
	fixed := port != 0
	if !fixed {
		if b, err := os.ReadFile(filepath.Join(dir, portFile)); err == nil {
			port, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		if port == 0 {
			var err error
			if port, err = FreePort(); err != nil {
				return nil, 0, err
			}
		}
		p, err := Start(cmd(port))
		if err != nil {
			return nil, 0, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = p.WaitReady(ctx, timeout, func(ctx context.Context) error { return ready(ctx, addr) })
		if err == nil {
			if err := os.WriteFile(filepath.Join(dir, portFile), []byte(strconv.Itoa(port)+"\n"), 0o600); err != nil {
				p.Stop()
				return nil, 0, fmt.Errorf("record port: %w", err)
			}
			return p, port, nil
		}
		p.Stop()
		if fixed || attempt == attempts || ctx.Err() != nil {
			return nil, 0, err
		}
		port = 0
	}
}
