package localserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const pgReadyTimeout = 60 * time.Second

// PostgresOptions say where and how StartPostgres runs a server.
type PostgresOptions struct {
	// BinDir is the installation's bin directory; empty means the one
	// FindPostgres finds.
	BinDir string
	// Dir holds the cluster (Dir/data), its log and its port. It is created
	// if missing and given to the server's user; a cluster already in it
	// is reused.
	Dir string
	// Port is the port to listen on, and then the only one tried. Zero
	// means the port of the last start in Dir, else (or if that is taken)
	// a free one.
	Port int
	// NoSync makes initdb skip its fsyncs, for a cluster that is thrown
	// away.
	NoSync bool
	// Settings are `name=value` settings passed with -c.
	Settings []string
	// Keep stops the server with a fast shutdown, which writes a checkpoint,
	// so the next start needs no recovery. Otherwise Stop ends it at once.
	Keep bool
}

// Postgres is a running PostgreSQL server that trusts the `postgres`
// superuser on 127.0.0.1.
type Postgres struct {
	*Process
	// BinDir is the installation's bin directory (initdb, postgres,
	// pgbench, psql...).
	BinDir string
	Port   int
}

// AdminURL returns the URL of the server's `postgres` database as the
// superuser.
func (p *Postgres) AdminURL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
}

// StartPostgres starts a PostgreSQL server in opts.Dir, running initdb
// first if the directory holds no cluster, and waits until it accepts
// connections. It answers ErrNotInstalled when the programs are missing
// (see FindPostgres).
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	bin, err := FindPostgres(opts.BinDir)
	if err != nil {
		return nil, err
	}
	su, err := PostgresUser()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := su.Own(opts.Dir); err != nil {
		return nil, err
	}
	logPath := filepath.Join(opts.Dir, "postgres.log")
	data := filepath.Join(opts.Dir, "data")
	if err := initCluster(su, bin, opts, logPath, data); err != nil {
		return nil, err
	}
	sig, stopTimeout := syscall.SIGQUIT, defaultStopTimeout
	if opts.Keep {
		sig, stopTimeout = syscall.SIGINT, 30*time.Second
	}
	proc, port, err := startServer(ctx, opts.Dir, opts.Port, pgReadyTimeout, func(port int) Command {
		args := []string{"-D", data, "-p", strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1",
			// TCP only: a socket's path in a deep directory can pass the
			// kernel's 107-byte limit.
			"-k", ""}
		for _, s := range opts.Settings {
			args = append(args, "-c", s)
		}
		return Command{
			Name: "postgres", Path: filepath.Join(bin, "postgres"), Args: args,
			Dir: opts.Dir, Log: logPath, User: su, StopSignal: sig, StopTimeout: stopTimeout,
		}
	}, postgresReady)
	if err != nil {
		return nil, err
	}
	return &Postgres{Process: proc, BinDir: bin, Port: port}, nil
}

// initCluster runs initdb unless data holds a cluster. initdb fills a
// directory beside data that is renamed only once complete, so an
// interrupted first start leaves nothing half made.
func initCluster(su User, bin string, opts PostgresOptions, logPath, data string) error {
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err == nil {
		return nil
	}
	tmp := data + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	args := []string{"-D", tmp, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"}
	if opts.NoSync {
		args = append(args, "--no-sync")
	}
	err := Run(Command{Name: "initdb", Path: filepath.Join(bin, "initdb"), Args: args, Dir: opts.Dir, Log: logPath, User: su})
	if err != nil {
		if dir, ok := unreachable(su, opts.Dir); ok {
			return fmt.Errorf("PostgreSQL runs as the postgres user, who may not enter %s: use a directory it can reach", dir)
		}
		return err
	}
	return os.Rename(tmp, data)
}

// unreachable returns the first directory above dir that su may not enter,
// judged by its mode bits alone.
func unreachable(su User, dir string) (string, bool) {
	if su.cred == nil {
		return "", false
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false
	}
	var above []string
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		above = append(above, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	slices.Reverse(above)
	for _, d := range above {
		st, err := os.Stat(d)
		if err != nil {
			return "", false
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return "", false
		}
		mode := st.Mode().Perm()
		var x os.FileMode
		switch {
		case int(sys.Uid) == su.uid:
			x = 0o100
		case int(sys.Gid) == su.gid:
			x = 0o010
		default:
			x = 0o001
		}
		if mode&x == 0 {
			return d, true
		}
	}
	return "", false
}

// FindPostgres returns binDir if it holds initdb and postgres or, when
// binDir is empty, finds a directory holding both of one installation: PATH
// first, then the newest /usr/lib/postgresql/*/bin. It answers
// ErrNotInstalled when there is none.
func FindPostgres(binDir string) (string, error) {
	if binDir != "" {
		if !hasPostgres(binDir) {
			return "", fmt.Errorf("PostgreSQL is %w (no initdb and postgres in %s)", ErrNotInstalled, binDir)
		}
		return binDir, nil
	}
	var candidates []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(versions, func(a, b string) int {
		return versionOf(b) - versionOf(a)
	})
	candidates = append(candidates, versions...)
	for _, dir := range candidates {
		if hasPostgres(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL is %w (no initdb and postgres on PATH or in /usr/lib/postgresql/*/bin)", ErrNotInstalled)
}

func hasPostgres(dir string) bool {
	return isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// postgresReady asks the server at addr for a session as the `postgres`
// superuser and succeeds once it grants one. It speaks the wire protocol
// itself so starting a server needs no driver.
func postgresReady(ctx context.Context, addr string) error {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	params := "user\x00postgres\x00database\x00postgres\x00\x00"
	startup := binary.BigEndian.AppendUint32(nil, uint32(8+len(params)))
	startup = binary.BigEndian.AppendUint32(startup, 3<<16) // protocol 3.0
	if _, err := c.Write(append(startup, params...)); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return err
	}
	n := int(binary.BigEndian.Uint32(head[1:])) - 4
	if n < 0 || n > 1<<16 {
		return fmt.Errorf("postgres answered a message of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	switch head[0] {
	case 'R': // authentication request; 0 is AuthenticationOk
		if len(body) >= 4 && binary.BigEndian.Uint32(body) == 0 {
			_, _ = c.Write([]byte{'X', 0, 0, 0, 4}) // Terminate
			return nil
		}
		return errors.New("postgres asked for a password: the cluster does not trust local connections")
	case 'E':
		// Fields are a type byte and a NUL-terminated string; M is the
		// message ("the database system is starting up").
		for _, f := range strings.Split(string(body), "\x00") {
			if msg, ok := strings.CutPrefix(f, "M"); ok {
				return errors.New(msg)
			}
		}
		return errors.New("postgres refused the session")
	default:
		return fmt.Errorf("postgres answered message type %q", head[0])
	}
}
