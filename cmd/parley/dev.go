package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/parley-dev/parley/internal/app"
	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/localserver"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/token"
)

func devDatabaseURL(port int) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/parley_dev?sslmode=disable", port)
}

func devValkeyURL(port int) string { return fmt.Sprintf("redis://127.0.0.1:%d/0", port) }

const devBanner = `
Parley is running on %[1]s (gRPC, gRPC-Web and Connect on one port).
%[2]s
%[3]s
Register a user and read its profile:

  TOKEN=$(curl -s -X POST %[1]s/parley.v1.AuthService/Register -H 'Content-Type: application/json' -d '{"email":"dev-'$RANDOM'@example.com","password":"correct horse battery"}' | sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p') && curl -s -X POST %[1]s/parley.v1.UserService/GetProfile -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" -d '{}'

`

func devCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr, true)
	opts := localserver.DevOptions{Dir: config.DevDir}
	fs.IntVar(&opts.PostgresPort, "postgres-port", 5432, "use the PostgreSQL listening on this port of 127.0.0.1; if none does, start one")
	fs.IntVar(&opts.ValkeyPort, "valkey-port", 6379, "use the Valkey listening on this port of 127.0.0.1; if none does, start one")
	fs.StringVar(&opts.PostgresBin, "postgres-bin", "", "bin directory of the PostgreSQL to start (default: initdb on PATH, else the newest /usr/lib/postgresql/*/bin)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// DATABASE_URL and VALKEY_URL name the servers on --postgres-port and
	// --valkey-port, or those dev starts itself.
	cfg, dev, err := config.LoadDev(getenv, devDatabaseURL(opts.PostgresPort), devValkeyURL(opts.ValkeyPort))
	if err != nil {
		return err
	}
	opts.DatabaseSet, opts.ValkeySet = dev.DatabaseSet, dev.ValkeySet
	log := newLogger(stderr, cfg.LogLevel)
	if err := os.MkdirAll(filepath.Dir(cfg.JWTKeysPath), 0o700); err != nil {
		return err
	}
	if err := token.WriteKeySet(cfg.JWTKeysPath, true); err != nil {
		return err
	}
	servers, err := localserver.StartDev(ctx, opts, stderr)
	if err != nil {
		return err
	}
	// Also when Parley fails to start.
	defer servers.Stop()
	if err := useDevServers(ctx, &cfg, servers, dev.DatabaseSet); err != nil {
		return err
	}
	liveKit := "LiveKit: " + cfg.LiveKitURL + ", with the key in LIVEKIT_API_KEY."
	if dev.LiveKitDevKeys {
		liveKit = "LiveKit: " + cfg.LiveKitURL + ", with LiveKit's public development keys (devkey / secret, those of\n" +
			"`livekit-server --dev`): anyone can sign webhooks to this server, so keep it private."
	}
	return app.Run(ctx, cfg, log, func(addr string) {
		fmt.Fprintf(stdout, devBanner, "http://"+dialable(addr), liveKit, servers.Describe())
	})
}

// useDevServers points cfg at the servers dev started and, unless
// DATABASE_URL names one, makes sure the dev database exists.
func useDevServers(ctx context.Context, cfg *config.Config, servers *localserver.Dev, databaseSet bool) error {
	if servers.Postgres != nil {
		cfg.DatabaseURL = devDatabaseURL(servers.Postgres.Port)
	}
	if servers.Valkey != nil {
		cfg.ValkeyURL = devValkeyURL(servers.Valkey.Port)
	}
	if databaseSet {
		return nil
	}
	ensureCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := postgres.EnsureDatabase(ensureCtx, cfg.DatabaseURL); err != nil {
		return fmt.Errorf("dev database: %w (set DATABASE_URL to a PostgreSQL you can reach)", err)
	}
	return nil
}

// dialable turns a listen address such as [::]:8080 into one curl can use.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
