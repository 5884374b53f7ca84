package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/postgres"
)

// devDir keeps what `parley dev` makes for itself: the JWK set and blobs.
const devDir = ".parley-dev"

// devDefaults are the settings `parley dev` uses for whatever the environment
// leaves unset: the machine's local PostgreSQL and Valkey, a generated key,
// LiveKit's --dev keys, and a browser origin for the example web app.
var devDefaults = map[string]string{
	"DATABASE_URL":        "postgres://postgres@127.0.0.1:5432/parley_dev?sslmode=disable",
	"VALKEY_URL":          "redis://127.0.0.1:6379/0",
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

func devCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	env := func(k string) string {
		if v := getenv(k); v != "" {
			return v
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
	if getenv("DATABASE_URL") == "" {
		if err := ensureDatabase(ctx, cfg.DatabaseURL); err != nil {
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

Register a user and read its profile:

  TOKEN=$(curl -s -X POST %[1]s/parley.v1.AuthService/Register -H 'Content-Type: application/json' -d '{"email":"dev-'$RANDOM'@example.com","password":"correct horse battery"}' | sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p') && curl -s -X POST %[1]s/parley.v1.UserService/GetProfile -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" -d '{}'

`, base, liveKit)
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

// ensureDatabase creates the database named in url if the server lacks it.
func ensureDatabase(ctx context.Context, url string) error {
	u, err := neturl.Parse(url)
	if err != nil {
		return errors.New("DATABASE_URL is not a URL")
	}
	name := strings.TrimPrefix(u.Path, "/")
	admin := *u
	admin.Path = "/postgres"
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, admin.String(), postgres.Options{MaxOpenConns: 1})
	if err != nil {
		return err
	}
	defer db.Close()
	var exists bool
	if err := db.NewRaw("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = ?)", name).Scan(ctx, &exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = db.ExecContext(ctx, "CREATE DATABASE "+quoteIdent(name))
	return err
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
