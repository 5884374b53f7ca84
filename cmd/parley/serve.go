package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/uptrace/bun"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/blobstore"
	"github.com/parley-dev/parley/internal/cache"
	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/ratelimit"
	"github.com/parley-dev/parley/internal/revocation"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rpc"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/token"
	"github.com/parley-dev/parley/internal/valkeyconfig"
	"github.com/parley-dev/parley/internal/valkeypubsub"
)

func serveCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel)
	applyMemoryLimit(cfg.MemoryLimit, getenv, log)
	return serve(ctx, cfg, log, nil)
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// serve runs Parley until ctx is cancelled (SIGTERM), then drains. onReady,
// if set, is called with the listening address once the replica is ready.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, onReady func(addr string)) error {
	start := time.Now()
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	srv := rpc.NewServer(cfg.HTTPAddr, a.handler, log)
	idle := newIdleConns()
	srv.ConnState = idle.track
	if cfg.OpsAddr != "" {
		stop, err := serveOps(cfg.OpsAddr, a.registry, log)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	a.probe.SetReady()
	log.Info("parley ready", slog.String("addr", ln.Addr().String()), slog.String("startup", time.Since(start).String()))
	if onReady != nil {
		onReady(ln.Addr().String())
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	// Drain: first tell the load balancer (readyz 503) while still serving,
	// then stop accepting, end streams so clients reconnect elsewhere, and
	// let in-flight calls finish within the drain timeout.
	log.Info("draining", slog.Duration("shutdown_delay", cfg.ShutdownDelay), slog.Duration("drain_timeout", cfg.DrainTimeout))
	a.probe.SetDraining()
	time.Sleep(cfg.ShutdownDelay)
	a.drain()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.DrainTimeout)
	defer cancel()
	stopClosing := idle.closeIdle()
	err = srv.Shutdown(shutdownCtx)
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

// app is one replica's wiring: every component built once, in order, and
// closed in reverse.
type app struct {
	db       *bun.DB
	valkey   valkey.Client
	registry *prometheus.Registry
	probe    *rpc.Probe
	handler  http.Handler
	// drain ends every WatchMessages stream, so clients reconnect elsewhere.
	drain   func()
	closers []func()
}

// goBackground runs f until the app closes: background work (Valkey
// subscription, outbox) stops before the pools it uses are closed.
func (a *app) goBackground(ctx context.Context, f func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(ctx)
	}()
	a.closers = append(a.closers, func() {
		cancel()
		<-done
	})
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
}

func newApp(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *app, err error) {
	a := &app{}
	defer func() {
		if err != nil {
			a.close()
		}
	}()

	reg := prometheus.NewRegistry()
	a.registry = reg
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	a.db, err = postgres.Open(ctx, cfg.DatabaseURL, postgres.Options{
		MaxOpenConns:    cfg.DBMaxOpenConns,
		MaxIdleConns:    cfg.DBMaxIdleConns,
		ConnMaxLifetime: cfg.DBConnLifetime,
	})
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, func() { _ = a.db.Close() })
	applied, err := postgres.Migrate(ctx, a.db, log)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if len(applied) > 0 {
		log.Info("migrations applied", slog.Any("names", applied))
	}

	a.valkey, err = openValkey(cfg.ValkeyURL, log)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, a.valkey.Close)
	a.goBackground(ctx, func(ctx context.Context) { valkeyconfig.CheckEvictionPolicy(ctx, a.valkey, log) })

	keysJSON, err := readFile(cfg.JWTKeysPath)
	if err != nil {
		return nil, &config.Error{Var: "PARLEY_JWT_KEYS", Err: err}
	}
	keys, err := token.ParseKeySet(keysJSON)
	if err != nil {
		return nil, &config.Error{Var: "PARLEY_JWT_KEYS", Err: err}
	}
	tokens, err := token.NewManager(keys, token.Options{Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Leeway: 30 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("token manager: %w", err)
	}

	accountStore := postgres.NewAccountStore(a.db)
	revoked := revocation.New(a.valkey, accountStore, revocation.Options{Logger: log})
	a.closers = append(a.closers, revoked.Close)
	accounts := account.NewService(accountStore, tokens, revoked, account.Options{
		AccessTTL:  cfg.AccessTokenTTL,
		RefreshTTL: cfg.RefreshTokenTTL,
		AgentTTL:   cfg.AgentTokenTTL,
		Logger:     log,
	})
	limiter := ratelimit.New(a.valkey, ratelimit.Options{Logger: log, Registerer: reg})

	lk, err := rtc.New(rtc.Config{
		URL:       cfg.LiveKitURL,
		PublicURL: cfg.LiveKitPublicURL,
		APIKey:    cfg.LiveKitAPIKey,
		APISecret: cfg.LiveKitAPISecret,
		AgentName: cfg.LiveKitAgentName,
		TokenTTL:  cfg.LiveKitTokenTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("livekit: %w", err)
	}
	roomStore := postgres.NewRoomStore(a.db)
	a.goBackground(ctx, func(ctx context.Context) { pruneExpired(ctx, roomStore, accounts, log) })
	var outbox *file.Worker // made below, before anything serves the webhook
	rooms := room.NewService(roomStore, lk, room.Options{Log: log, RecordingsQueued: func() { outbox.Wake() }})
	a.closers = append(a.closers, rooms.Close)
	webhook := rpc.NewWebhookHandler(lk, rooms, log, reg)

	pages, err := cache.NewPages(a.valkey, 10*time.Minute, reg, log)
	if err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	conversationStore := postgres.NewConversationStore(a.db)
	hub := conversation.NewHub(conversationStore, log)
	a.drain = hub.Drain
	changes := valkeypubsub.New(a.valkey, hub, 0, log)
	a.goBackground(ctx, changes.Run)
	conversations := conversation.NewService(conversationStore, conversation.Options{
		Cache:        pages,
		Notifier:     changes,
		Hub:          hub,
		Sessions:     accounts,
		SessionCheck: cfg.WatchHeartbeat,
		Rooms:        roomStore,
		Log:          log,
	})

	blobs, blobRoutes, err := openBlobs(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var contentTypes file.ContentTypes // zero: the built-in allow-list
	if len(cfg.FileContentTypes) > 0 {
		if contentTypes, err = file.NewContentTypes(cfg.FileContentTypes); err != nil {
			return nil, &config.Error{Var: "PARLEY_FILE_CONTENT_TYPES", Err: err}
		}
	}
	fileStore := postgres.NewFileStore(a.db)
	outbox = file.NewWorker(fileStore, blobs, file.WorkerOptions{Log: log, SourceRefused: webhook.RecordingSourceRefused})
	a.goBackground(ctx, func(ctx context.Context) { _ = outbox.Run(ctx) })
	files, err := file.NewService(fileStore, blobs, conversationStore, file.Options{
		ContentTypes: contentTypes,
		URLTTL:       cfg.FileURLTTL,
		Wake:         outbox.Wake,
		Log:          log,
	})
	if err != nil {
		return nil, fmt.Errorf("file service: %w", err)
	}
	fileServer := rpc.NewFileServer(files, log)

	routes := map[string]http.Handler{
		"GET /.well-known/jwks.json": tokens.JWKSHandler(),
		"POST /livekit/webhook":      webhook,
	}
	for pattern, h := range blobRoutes {
		routes[pattern] = h
	}

	a.probe = rpc.NewProbe(
		rpc.Dependency{Name: "postgres", Check: func(ctx context.Context) error { return a.db.PingContext(ctx) }, Required: cfg.ReadyzRequireDatabase},
		rpc.Dependency{Name: "valkey", Check: func(ctx context.Context) error {
			return a.valkey.Do(ctx, a.valkey.B().Ping().Build()).Error()
		}},
	)
	watch := rpc.WatchOptions{Heartbeat: cfg.WatchHeartbeat}
	a.handler, err = rpc.NewHandler(rpc.Services{
		Auth:         rpc.NewAuthServer(accounts, log),
		User:         rpc.NewUserServer(accounts, log),
		Room:         rpc.NewRoomServer(rooms, log),
		Conversation: rpc.WithExports(rpc.NewConversationServer(conversations, watch, log), fileServer),
		File:         fileServer,
	}, rpc.Options{
		Logger:        log,
		Registry:      reg,
		Authenticator: accounts,
		Limiter:       limiterAdapter{limiter},
		Limits: rpc.Limits{
			UserPerMinute:  cfg.RateLimitUserPerMinute,
			AgentPerMinute: cfg.RateLimitAgentPerMinute,
			IPPerMinute:    cfg.RateLimitIPPerMinute,
		},
		TrustedProxies:  cfg.TrustedProxies,
		CORSOrigins:     cfg.CORSOrigins,
		MaxRequestBytes: cfg.MaxRequestBytes,
		BodyTime:        rpc.BodyTime{Timeout: cfg.BodyTimeout, MinRate: cfg.BodyMinRate},
		// With an operations address, /metrics is served there only.
		Metrics: cfg.OpsAddr == "",
		Probe:   a.probe,
		Routes:  routes,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// pruneExpired deletes, at start-up and then every hour, what no request
// needs any more: LiveKit event ids older than a day (LiveKit stops
// redelivering within minutes), and expired refresh tokens and access-token
// revocations. Every replica runs it: the deletes are idempotent, and the
// token deletes batched, so replicas pruning at once neither clash nor hold
// long locks.
func pruneExpired(ctx context.Context, rooms *postgres.RoomStore, accounts *account.Service, log *slog.Logger) {
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		if n, err := rooms.PruneEvents(ctx, time.Now().Add(-24*time.Hour)); err != nil && ctx.Err() == nil {
			log.Warn("prune webhook events", slog.String("error", err.Error()))
		} else if n > 0 {
			log.Info("pruned webhook events", slog.Int64("count", n))
		}
		if p, err := accounts.PruneExpired(ctx); err != nil && ctx.Err() == nil {
			log.Warn("prune expired tokens", slog.String("error", err.Error()))
		} else if p != (account.Pruned{}) {
			log.Info("pruned expired tokens", slog.Int64("revocations", p.Revocations),
				slog.Int64("family_revocations", p.FamilyRevocations), slog.Int64("refresh_tokens", p.RefreshTokens))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// openBlobs returns Azure Blob storage when a connection string is set, else
// the local directory store with the routes that serve its signed URLs.
func openBlobs(ctx context.Context, cfg config.Config) (file.Blobs, map[string]http.Handler, error) {
	if cfg.AzureConnectionString != "" {
		az, err := blobstore.NewAzure(ctx, cfg.AzureConnectionString, cfg.BlobContainer)
		if err != nil {
			return nil, nil, fmt.Errorf("azure blob storage: %w", err)
		}
		return az, nil, nil
	}
	dir, err := blobstore.NewDir(cfg.BlobDir, cfg.PublicURL, nil)
	if err != nil {
		return nil, nil, &config.Error{Var: "PARLEY_BLOB_DIR", Err: err}
	}
	return dir, dir.Routes(), nil
}

// openValkey builds the process's one Valkey client. Valkey is a cache, not a
// source of truth: a replica starts (and keeps serving) while it is down, and
// the client reconnects on its own.
func openValkey(url string, log *slog.Logger) (valkey.Client, error) {
	opt, err := valkey.ParseURL(url)
	if err != nil {
		return nil, &config.Error{Var: "VALKEY_URL", Err: errors.New(strings.ReplaceAll(err.Error(), url, "<url>"))}
	}
	opt.ForceSingleClient = true
	opt.DisableCache = true
	opt.Dialer.Timeout = 2 * time.Second
	// Every request makes two to four small Valkey calls. Waiting up to
	// 20 µs after each flush lets the calls of concurrent requests share
	// one write and one read, which under load saves Parley and Valkey
	// more CPU than the wait costs in latency.
	opt.MaxFlushDelay = 20 * time.Microsecond
	client, err := valkey.NewClient(opt)
	if client == nil {
		return nil, fmt.Errorf("valkey client: %w", err)
	}
	if err != nil {
		log.Warn("valkey unreachable at start-up; serving with fallbacks until it answers", slog.String("error", err.Error()))
	}
	return client, nil
}

// limiterAdapter adapts ratelimit.Limiter to rpc.Limiter.
type limiterAdapter struct{ l *ratelimit.Limiter }

func (a limiterAdapter) Allow(ctx context.Context, checks ...rpc.LimitCheck) ([]rpc.Decision, error) {
	cs := make([]ratelimit.Check, len(checks))
	for i, c := range checks {
		cs[i] = ratelimit.Check{Key: c.Key, Limit: ratelimit.PerMinute(c.PerMinute)}
	}
	ds, err := a.l.AllowAll(ctx, cs...)
	if err != nil {
		return nil, err
	}
	out := make([]rpc.Decision, len(ds))
	for i, d := range ds {
		out[i] = rpc.Decision{Allowed: d.Allowed, Limit: d.Limit, Remaining: d.Remaining, RetryAfter: d.RetryAfter, ResetAfter: d.ResetAfter}
	}
	return out, nil
}

func (a limiterAdapter) Refund(ctx context.Context, c rpc.LimitCheck) error {
	return a.l.Refund(ctx, ratelimit.Check{Key: c.Key, Limit: ratelimit.PerMinute(c.PerMinute)})
}
