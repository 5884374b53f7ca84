package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/postgres"
)

// devDir keeps what `parley dev` makes for itself: the JWK set, blobs and
// the data of the servers it starts.
const devDir = ".parley-dev"

// devDefaults are the settings `parley dev` uses for whatever the environment
// leaves unset: a generated key, LiveKit's --dev keys, and a browser origin
// for the example web app. DATABASE_URL and VALKEY_URL name the servers on
// --postgres-port and --valkey-port, or those dev starts itself.
var devDefaults = map[string]string{
	"PARLEY_JWT_KEYS":     filepath.Join(devDir, "jwks.json"),
	"PARLEY_BLOB_DIR":     filepath.Join(devDir, "blobs"),
	"PARLEY_CORS_ORIGINS": "http://localhost:5173,http://127.0.0.1:5173",
	"LIVEKIT_API_KEY":     "devkey",
	"LIVEKIT_API_SECRET":  "secret",
	"PARLEY_LOG_LEVEL":    "info",
	// A developer's Ctrl-C should not wait for a load balancer.
	"PARLEY_SHUTDOWN_DELAY": "0s",
	"PARLEY_DRAIN_TIMEOUT":  "5s",
}

func devDatabaseURL(port int) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/parley_dev?sslmode=disable", port)
}

func devValkeyURL(port int) string { return fmt.Sprintf("redis://127.0.0.1:%d/0", port) }

func devCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr, true)
	var opts devServerOptions
	fs.IntVar(&opts.postgresPort, "postgres-port", 5432, "use the PostgreSQL listening on this port of 127.0.0.1; if none does, start one")
	fs.IntVar(&opts.valkeyPort, "valkey-port", 6379, "use the Valkey listening on this port of 127.0.0.1; if none does, start one")
	fs.StringVar(&opts.postgresBin, "postgres-bin", "", "bin directory of the PostgreSQL to start (default: initdb on PATH, else the newest /usr/lib/postgresql/*/bin)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts.dir = devDir
	opts.databaseURL, opts.valkeyURL = getenv("DATABASE_URL"), getenv("VALKEY_URL")
	env := func(k string) string {
		if v := getenv(k); v != "" {
			return v
		}
		switch k {
		case "DATABASE_URL":
			return devDatabaseURL(opts.postgresPort)
		case "VALKEY_URL":
			return devValkeyURL(opts.valkeyPort)
		}
		return devDefaults[k]
	}
	cfg, err := config.Load(env)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel)
	if err := ensureDevKeys(cfg.JWTKeysPath); err != nil {
		return err
	}
	servers, err := startDevServers(ctx, opts, stderr)
	if err != nil {
		return err
	}
	// Also when Parley fails to start.
	defer servers.stop()
	if servers.postgres != nil {
		cfg.DatabaseURL = devDatabaseURL(servers.postgres.Port)
	}
	if servers.valkey != nil {
		cfg.ValkeyURL = devValkeyURL(servers.valkey.Port)
	}
	if opts.databaseURL == "" {
		ensureCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := postgres.EnsureDatabase(ensureCtx, cfg.DatabaseURL)
		cancel()
		if err != nil {
			return fmt.Errorf("dev database: %w (set DATABASE_URL to a PostgreSQL you can reach)", err)
		}
	}
	liveKit := "LiveKit: " + cfg.LiveKitURL + ", with the key in LIVEKIT_API_KEY."
	if cfg.LiveKitAPIKey == devDefaults["LIVEKIT_API_KEY"] && cfg.LiveKitAPISecret == devDefaults["LIVEKIT_API_SECRET"] {
		liveKit = "LiveKit: " + cfg.LiveKitURL + ", with LiveKit's public development keys (devkey / secret, those of\n" +
			"`livekit-server --dev`): anyone can sign webhooks to this server, so keep it private."
	}
	return serve(ctx, cfg, log, func(addr string) {
		base := "http://" + dialable(addr)
		fmt.Fprintf(stdout, `
Parley is running on %[1]s (gRPC, gRPC-Web and Connect on one port).
%[2]s
%[3]s
Register a user and read its profile:

  TOKEN=$(curl -s -X POST %[1]s/parley.v1.AuthService/Register -H 'Content-Type: application/json' -d '{"email":"dev-'$RANDOM'@example.com","password":"correct horse battery"}' | sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p') && curl -s -X POST %[1]s/parley.v1.UserService/GetProfile -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" -d '{}'

`, base, liveKit, servers.describe())
	})
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

// ensureDevKeys writes a new private JWK set to path unless one is there.
func ensureDevKeys(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	set, err := generateKeySet()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, set, 0o600)
}
