package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/token"
)

func keysCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "generate" {
		return usageError("usage: parley keys generate [--out FILE [--keep-existing]]")
	}
	fs := newFlagSet("keys generate", stderr, false)
	out := fs.String("out", "", "write the key set to this file (mode 0600) instead of stdout")
	keep := fs.Bool("keep-existing", false, "with --out: leave an existing file alone")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *out != "" {
		return token.WriteKeySet(*out, *keep)
	}
	set, err := token.GenerateKeySet()
	if err != nil {
		return err
	}
	_, err = stdout.Write(set)
	return err
}

// openDB opens the database named by DATABASE_URL for an operational
// command; only that variable is required.
func openDB(ctx context.Context, getenv func(string) string) (*bun.DB, error) {
	url, err := config.DatabaseURL(getenv)
	if err != nil {
		return nil, err
	}
	return postgres.Open(ctx, url, postgres.Options{MaxOpenConns: 2})
}

func migrateCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) != 1 || (args[0] != "up" && args[0] != "status") {
		return usageError("usage: parley migrate up|status")
	}
	db, err := openDB(ctx, getenv)
	if err != nil {
		return err
	}
	defer db.Close()
	if args[0] == "up" {
		applied, err := postgres.Migrate(ctx, db, slog.New(slog.NewTextHandler(stderr, nil)))
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		for _, name := range applied {
			fmt.Fprintf(stdout, "applied %s\n", name)
		}
		if len(applied) == 0 {
			fmt.Fprintln(stdout, "up to date")
		}
		return nil
	}
	statuses, err := postgres.Status(ctx, db)
	if err != nil {
		return fmt.Errorf("migration status: %w", err)
	}
	for _, s := range statuses {
		state := "pending"
		if s.Applied {
			state = "applied " + s.AppliedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(stdout, "%s\t%s\n", s.Name, state)
	}
	return nil
}

func agentKeyCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return usageError("usage: parley agent-key create --name NAME")
	}
	fs := newFlagSet("agent-key create", stderr, false)
	name := fs.String("name", "", "name of the agent the key is for (required)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if strings.TrimSpace(*name) == "" {
		return usageError("agent-key create: --name is required")
	}
	db, err := openDB(ctx, getenv)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := postgres.Migrate(ctx, db, slog.New(slog.DiscardHandler)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// Creating a key needs neither tokens nor the revocation cache.
	accounts := account.NewService(postgres.NewAccountStore(db), nil, nil, account.Options{})
	key, plain, err := accounts.CreateAgentKey(ctx, *name)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "created agent key %s (%s); store it now, it is not shown again\n", key.ID, key.Name)
	_, err = fmt.Fprintln(stdout, plain)
	return err
}
