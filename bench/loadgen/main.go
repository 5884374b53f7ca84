// Command loadgen is the benchmark's load generator, run by the
// orchestrator (make bench) as a process of its own so that its CPU and
// memory are never counted as Parley's. It writes one JSON load.Result.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/parley-dev/parley/bench/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	var (
		mode     = fs.String("mode", "unary", "unary or watch")
		specPath = fs.String("spec", "", "JSON load.Spec")
		out      = fs.String("out", "", "write the JSON result here (default stdout)")
		baseURL  = fs.String("url", "", "Parley replica (unary; the watched replica in watch mode)")
		saveURL  = fs.String("save-url", "", "watch mode: the replica turns are saved through")
		rpc      = fs.String("rpc", load.RPCSaveTurn, "SaveTurn or ListMessages")
		protocol = fs.String("protocol", load.ProtocolConnectJSON, "connect-json-http1 or grpc-h2c")
		clients  = fs.Int("clients", 16, "concurrent closed-loop clients")
		warmup   = fs.Duration("warmup", 2*time.Second, "unmeasured warm-up")
		duration = fs.Duration("duration", 20*time.Second, "measured time")
		streams  = fs.Int("streams", 1000, "watch mode: idle streams")
		rate     = fs.Float64("rate", 200, "watch mode: turns saved per second")
		settle   = fs.Duration("settle", 3*time.Second, "watch mode: wait for deliveries after the last save")
		runID    = fs.String("run-id", "", "prefix of turn ids (unique per run)")
		seed     = fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	spec, err := load.ReadSpec(*specPath)
	if err != nil {
		return err
	}
	if *runID == "" {
		*runID = fmt.Sprintf("r%x", time.Now().UnixNano())
	}
	var res load.Result
	switch *mode {
	case "unary":
		res, err = load.RunUnary(ctx, spec, load.UnaryOptions{
			BaseURL: *baseURL, RPC: *rpc, Protocol: *protocol, Clients: *clients,
			Warmup: *warmup, Duration: *duration, RunID: *runID, Seed: *seed,
		})
	case "watch":
		res, err = load.RunWatch(ctx, spec, load.WatchOptions{
			WatchURL: *baseURL, SaveURL: *saveURL, Streams: *streams, Rate: *rate,
			Duration: *duration, Settle: *settle, RunID: *runID,
			// The orchestrator reads the replica's memory once this appears.
			Opened: func() { fmt.Fprintln(os.Stderr, "streams open") },
		})
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = os.Stdout.Write(append(b, '\n'))
		return err
	}
	return os.WriteFile(*out, b, 0o644)
}
