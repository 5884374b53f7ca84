package localserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DevOptions say which servers `parley dev` uses.
type DevOptions struct {
	// Dir keeps the data of the servers StartDev starts.
	Dir string
	// DatabaseSet and ValkeySet report that the environment names the
	// server: it is not started.
	DatabaseSet, ValkeySet   bool
	PostgresPort, ValkeyPort int
	// PostgresBin is the bin directory of the PostgreSQL to start ("": see
	// FindPostgres).
	PostgresBin string
}

// Dev are the servers `parley dev` started itself because none was
// configured or listening; nil for one it did not start.
type Dev struct {
	dir      string
	Postgres *Postgres
	Valkey   *Valkey
}

// StartDev starts PostgreSQL and Valkey from the installed binaries, each
// unless its URL is set or something listens on its port, keeping their
// data under opts.Dir. Without PostgreSQL it fails with one line saying what
// to install; without Valkey it warns in one line on stderr, as Parley
// serves without it.
func StartDev(ctx context.Context, opts DevOptions, stderr io.Writer) (*Dev, error) {
	needPostgres, needValkey, err := devNeeds(ctx, opts, stderr)
	if err != nil {
		return nil, err
	}
	s := &Dev{dir: opts.Dir}
	if needPostgres {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, err
		}
		// Under root PostgreSQL runs as the postgres user, who must pass
		// through; what is inside keeps its own modes.
		if err := os.Chmod(opts.Dir, 0o711); err != nil {
			return nil, err
		}
		pg, err := StartPostgres(ctx, PostgresOptions{
			BinDir: opts.PostgresBin,
			Dir:    filepath.Join(opts.Dir, "postgres"),
			Keep:   true,
		})
		if err != nil {
			return nil, fmt.Errorf("dev PostgreSQL: %w", err)
		}
		s.Postgres = pg
	}
	if needValkey {
		vk, err := StartValkey(ctx, ValkeyOptions{Dir: filepath.Join(opts.Dir, "valkey"), Keep: true})
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("dev Valkey: %w", err)
		}
		s.Valkey = vk
	}
	return s, nil
}

// devNeeds says which servers StartDev is to start: those neither
// configured nor listening, if installed. A missing PostgreSQL is an error
// naming what to install; a missing Valkey only a warning on stderr.
func devNeeds(ctx context.Context, opts DevOptions, stderr io.Writer) (needPostgres, needValkey bool, err error) {
	pgAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.PostgresPort))
	vkAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.ValkeyPort))
	needPostgres = !opts.DatabaseSet && !Listening(ctx, pgAddr)
	needValkey = !opts.ValkeySet && !Listening(ctx, vkAddr)
	var missing, packages, vars []string
	noPostgres := false
	if needPostgres {
		if _, err := FindPostgres(opts.PostgresBin); err != nil {
			if !errors.Is(err, ErrNotInstalled) {
				return false, false, err
			}
			needPostgres, noPostgres = false, true
			missing = append(missing, fmt.Sprintf("nothing listens on %s and %v", pgAddr, err))
			packages, vars = append(packages, "postgresql"), append(vars, "DATABASE_URL")
		}
	}
	if needValkey {
		if _, err := FindValkey(); err != nil {
			if !errors.Is(err, ErrNotInstalled) {
				return false, false, err
			}
			needValkey = false
			missing = append(missing, fmt.Sprintf("nothing listens on %s and %v", vkAddr, err))
			packages, vars = append(packages, "redis-server"), append(vars, "VALKEY_URL")
		}
	}
	if len(missing) > 0 {
		advice := fmt.Sprintf("%s: apt-get install %s, or set %s", strings.Join(missing, "; "), strings.Join(packages, " "), strings.Join(vars, " and "))
		if noPostgres {
			return false, false, errors.New(advice)
		}
		fmt.Fprintf(stderr, "parley: %s; serving without Valkey (per-process rate limits)\n", advice)
	}
	return needPostgres, needValkey, nil
}

// Stop stops the servers, PostgreSQL with a fast shutdown and Valkey after a
// last snapshot, so the next start finds their data.
func (s *Dev) Stop() {
	if s.Valkey != nil {
		s.Valkey.Stop()
	}
	if s.Postgres != nil {
		s.Postgres.Stop()
	}
}

// Describe tells the banner's reader which servers StartDev started: lines
// that end in a newline, or nothing.
func (s *Dev) Describe() string {
	var b strings.Builder
	if s.Postgres != nil {
		fmt.Fprintf(&b, "Started PostgreSQL on 127.0.0.1:%d, data in %s.\n", s.Postgres.Port, filepath.Join(s.dir, "postgres"))
	}
	if s.Valkey != nil {
		fmt.Fprintf(&b, "Started Valkey on 127.0.0.1:%d, data in %s.\n", s.Valkey.Port, filepath.Join(s.dir, "valkey"))
	}
	if b.Len() > 0 {
		b.WriteString("They stop when Parley does; their data stays for the next start.\n")
	}
	return b.String()
}
