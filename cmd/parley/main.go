// Command parley is Parley's single binary: the API server and its
// operational subcommands. See `parley help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/parley-dev/parley/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

const usage = `Usage: parley [command]

Commands:
  serve                     serve the API (the default)
  dev                       serve with a local setup that needs nothing configured
  migrate up|status         apply or list database migrations
  keys generate             print a new private JWK set for PARLEY_JWT_KEYS
  agent-key create --name N create an agent API key (printed once, last line of stdout)
  help                      show this help

Run 'parley serve --help' for the environment variables.
`

// run is the whole program behind main, with its inputs made explicit so
// tests can drive it in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serveCommand(ctx, args, getenv, stderr)
	case "dev":
		err = devCommand(ctx, args, getenv, stdout, stderr)
	case "migrate":
		err = migrateCommand(ctx, args, getenv, stdout, stderr)
	case "keys":
		err = keysCommand(args, stdout, stderr)
	case "agent-key":
		err = agentKeyCommand(ctx, args, getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "parley: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	var cerr *config.Error
	var uerr usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &cerr):
		fmt.Fprintf(stderr, "parley: %v\n", cerr)
		return exitUsage
	case errors.As(err, &uerr):
		fmt.Fprintf(stderr, "parley: %v\n", uerr)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "parley: %v\n", err)
		return exitFailed
	}
}

// usageError is a mistake in the command line.
type usageError string

func (e usageError) Error() string { return string(e) }

// newFlagSet returns a flag set whose --help also lists the environment.
func newFlagSet(name string, stderr io.Writer, withEnv bool) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: parley %s [flags]\n", name)
		fs.PrintDefaults()
		if withEnv {
			fmt.Fprintln(stderr, "\nEnvironment:")
			_ = config.WriteHelp(stderr)
		}
	}
	return fs
}
