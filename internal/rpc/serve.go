package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ServeOptions say how Serve announces readiness and drains.
type ServeOptions struct {
	// Probe turns ready once the server serves and draining on ctx's end.
	Probe *Probe
	// ShutdownDelay is how long /readyz answers 503 before the listener
	// closes, so load balancers stop sending new requests first.
	ShutdownDelay time.Duration
	// DrainTimeout bounds how long in-flight calls may take to finish.
	DrainTimeout time.Duration
	// EndStreams ends every WatchMessages stream, so clients reconnect
	// elsewhere; nil for none.
	EndStreams func()
	// Ready, if set, is called with the listening address once the
	// replica is ready.
	Ready func(addr string)
	// OpsAddr, if set, is where /metrics (Registry) and Go's profiles are
	// served, on a listener of their own.
	OpsAddr  string
	Registry *prometheus.Registry
	Log      *slog.Logger
}

// Serve serves srv on ln until ctx is done (SIGTERM), then drains: first it
// tells the load balancer (readyz 503) while still serving, then stops
// accepting, ends streams so clients reconnect elsewhere, and lets in-flight
// calls finish within the drain timeout, half-closing idle HTTP/2
// connections as it goes (idleConns).
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, opts ServeOptions) error {
	log := opts.Log
	if opts.OpsAddr != "" {
		stop, err := serveOps(opts.OpsAddr, opts.Registry, log)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	idle := newIdleConns()
	srv.ConnState = idle.track
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	opts.Probe.SetReady()
	if opts.Ready != nil {
		opts.Ready(ln.Addr().String())
	}
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	log.Info("draining", slog.Duration("shutdown_delay", opts.ShutdownDelay), slog.Duration("drain_timeout", opts.DrainTimeout))
	opts.Probe.SetDraining()
	time.Sleep(opts.ShutdownDelay)
	if opts.EndStreams != nil {
		opts.EndStreams()
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.DrainTimeout)
	defer cancel()
	stopClosing := idle.closeIdle()
	err := srv.Shutdown(shutdownCtx)
	stopClosing()
	if err != nil {
		log.Warn("drain timed out; closing remaining connections", slog.String("error", err.Error()))
		_ = srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}
