package main

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

	"github.com/parley-dev/parley/internal/localserver"
)

// devServerOptions say which servers `parley dev` uses.
type devServerOptions struct {
	dir                      string
	databaseURL, valkeyURL   string // as the environment sets them
	postgresPort, valkeyPort int
	postgresBin              string
}

// devServers are the servers `parley dev` started itself because none was
// configured or listening; nil for one it did not start.
type devServers struct {
	dir      string
	postgres *localserver.Postgres
	valkey   *localserver.Valkey
}

// startDevServers starts PostgreSQL and Valkey from the installed binaries,
// each unless its URL is set or something listens on its port, keeping their
// data under opts.dir. Without PostgreSQL it fails with one line saying what
// to install; without Valkey it warns in one line, as Parley serves without
// it.
func startDevServers(ctx context.Context, opts devServerOptions, stderr io.Writer) (*devServers, error) {
	pgAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.postgresPort))
	vkAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.valkeyPort))
	needPostgres := opts.databaseURL == "" && !localserver.Listening(ctx, pgAddr)
	needValkey := opts.valkeyURL == "" && !localserver.Listening(ctx, vkAddr)
	var missing, packages, vars []string
	noPostgres := false
	if needPostgres {
		if _, err := localserver.FindPostgres(opts.postgresBin); err != nil {
			if !errors.Is(err, localserver.ErrNotInstalled) {
				return nil, err
			}
			needPostgres, noPostgres = false, true
			missing = append(missing, fmt.Sprintf("nothing listens on %s and %v", pgAddr, err))
			packages, vars = append(packages, "postgresql"), append(vars, "DATABASE_URL")
		}
	}
	if needValkey {
		if _, err := localserver.FindValkey(); err != nil {
			if !errors.Is(err, localserver.ErrNotInstalled) {
				return nil, err
			}
			needValkey = false
			missing = append(missing, fmt.Sprintf("nothing listens on %s and %v", vkAddr, err))
			packages, vars = append(packages, "redis-server"), append(vars, "VALKEY_URL")
		}
	}
	if len(missing) > 0 {
		advice := fmt.Sprintf("%s: apt-get install %s, or set %s", strings.Join(missing, "; "), strings.Join(packages, " "), strings.Join(vars, " and "))
		if noPostgres {
			return nil, errors.New(advice)
		}
		fmt.Fprintf(stderr, "parley: %s; serving without Valkey (per-process rate limits)\n", advice)
	}

	s := &devServers{dir: opts.dir}
	if needPostgres {
		if err := os.MkdirAll(opts.dir, 0o700); err != nil {
			return nil, err
		}
		// Under root PostgreSQL runs as the postgres user, who must pass
		// through; what is inside keeps its own modes.
		if err := os.Chmod(opts.dir, 0o711); err != nil {
			return nil, err
		}
		pg, err := localserver.StartPostgres(ctx, localserver.PostgresOptions{
			BinDir: opts.postgresBin,
			Dir:    filepath.Join(opts.dir, "postgres"),
			Keep:   true,
		})
		if err != nil {
			return nil, fmt.Errorf("dev PostgreSQL: %w", err)
		}
		s.postgres = pg
	}
	if needValkey {
		vk, err := localserver.StartValkey(ctx, localserver.ValkeyOptions{Dir: filepath.Join(opts.dir, "valkey"), Keep: true})
		if err != nil {
			s.stop()
			return nil, fmt.Errorf("dev Valkey: %w", err)
		}
		s.valkey = vk
	}
	return s, nil
}

// stop stops the servers, PostgreSQL with a fast shutdown and Valkey after a
// last snapshot, so the next start finds their data.
func (s *devServers) stop() {
	if s.valkey != nil {
		s.valkey.Stop()
	}
	if s.postgres != nil {
		s.postgres.Stop()
	}
}

// describe tells the banner's reader which servers dev started: lines that
// end in a newline, or nothing.
func (s *devServers) describe() string {
	var b strings.Builder
	if s.postgres != nil {
		fmt.Fprintf(&b, "Started PostgreSQL on 127.0.0.1:%d, data in %s.\n", s.postgres.Port, filepath.Join(s.dir, "postgres"))
	}
	if s.valkey != nil {
		fmt.Fprintf(&b, "Started Valkey on 127.0.0.1:%d, data in %s.\n", s.valkey.Port, filepath.Join(s.dir, "valkey"))
	}
	if b.Len() > 0 {
		b.WriteString("They stop when Parley does; their data stays for the next start.\n")
	}
	return b.String()
}
