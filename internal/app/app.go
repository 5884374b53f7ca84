// Package app runs one Parley replica: it builds every component from a
// config.Config, explicitly and in order, serves until its context ends,
// drains, and closes what it built in reverse. cmd/parley hands it the
// configuration; the components live in the packages they belong to.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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

// Run runs Parley until ctx is cancelled (SIGTERM), then drains. onReady,
// if set, is called with the listening address once the replica is ready.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, onReady func(addr string)) error {
	start := time.Now()
	a, err := newReplica(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	return rpc.Serve(ctx, rpc.NewServer(cfg.HTTPAddr, a.handler, log), ln, rpc.ServeOptions{
		Probe:         a.probe,
		ShutdownDelay: cfg.ShutdownDelay,
		DrainTimeout:  cfg.DrainTimeout,
		EndStreams:    a.drain,
		OpsAddr:       cfg.OpsAddr,
		Registry:      a.registry,
		Log:           log,
		Ready: func(addr string) {
			log.Info("parley ready", slog.String("addr", addr), slog.String("startup", time.Since(start).String()))
			if onReady != nil {
				onReady(addr)
			}
		},
	})
}

// replica is one replica's wiring: every component built once, in order, and
// closed in reverse.
type replica struct {
	db       *bun.DB
	valkey   valkey.Client
	registry *prometheus.Registry
	probe    *rpc.Probe
	handler  http.Handler
	// drain ends every WatchMessages and WatchItems stream, so clients
	// reconnect elsewhere.
	drain   func()
	closers []func()
}

// goBackground runs f until the replica closes: background work (Valkey
// subscription, outbox) stops before the pools it uses are closed.
func (a *replica) goBackground(ctx context.Context, f func(ctx context.Context)) {
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

// hourly runs the jobs at once and then every hour until the replica closes.
func (a *replica) hourly(ctx context.Context, jobs ...func(ctx context.Context)) {
	a.every(ctx, time.Hour, jobs...)
}

// every runs the jobs at once and then every interval until the replica
// closes.
func (a *replica) every(ctx context.Context, interval time.Duration, jobs ...func(ctx context.Context)) {
	a.goBackground(ctx, func(ctx context.Context) {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			for _, job := range jobs {
				job(ctx)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
}

func (a *replica) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
}

func newReplica(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *replica, err error) {
	a := &replica{registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := a.connect(ctx, cfg, log); err != nil {
		return nil, err
	}
	svc, err := a.newServices(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	a.probe = rpc.NewProbe(
		rpc.Dependency{Name: "postgres", Check: func(ctx context.Context) error { return a.db.PingContext(ctx) }, Required: cfg.ReadyzRequireDatabase},
		rpc.Dependency{Name: "valkey", Check: func(ctx context.Context) error {
			return a.valkey.Do(ctx, a.valkey.B().Ping().Build()).Error()
		}},
	)
	if a.handler, err = a.newHandler(cfg, svc, log); err != nil {
		return nil, err
	}
	return a, nil
}

// connect opens PostgreSQL, migrating it, and the process's one Valkey
// client.
func (a *replica) connect(ctx context.Context, cfg config.Config, log *slog.Logger) (err error) {
	a.db, err = postgres.Open(ctx, cfg.DatabaseURL, postgres.Options{
		MaxOpenConns:    cfg.DBMaxOpenConns,
		MaxIdleConns:    cfg.DBMaxIdleConns,
		ConnMaxLifetime: cfg.DBConnLifetime,
	})
	if err != nil {
		return err
	}
	a.closers = append(a.closers, func() { _ = a.db.Close() })
	applied, err := postgres.Migrate(ctx, a.db, log)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(applied) > 0 {
		log.Info("migrations applied", slog.Any("names", applied))
	}
	a.valkey, err = valkeyconfig.Open(cfg.ValkeyURL, log)
	if err != nil {
		var uerr *valkeyconfig.URLError
		if errors.As(err, &uerr) {
			return &config.Error{Var: "VALKEY_URL", Err: err}
		}
		return err
	}
	a.closers = append(a.closers, a.valkey.Close)
	a.goBackground(ctx, func(ctx context.Context) { valkeyconfig.CheckEvictionPolicy(ctx, a.valkey, log) })
	return nil
}

// services are what the handlers serve.
type services struct {
	accounts      *account.Service
	tokens        *token.Manager
	limiter       *ratelimit.Limiter
	rooms         *room.Service
	webhook       *rpc.WebhookHandler
	webhooks      *rpc.WebhookServer
	conversations *conversation.Service
	files         *file.Service
	blobRoutes    map[string]http.Handler
}

// newServices builds the domain services over their adapters. The file
// outbox comes before the room service, which wakes it when recordings are
// queued, and counts its refusals in the webhook's counter, made first.
func (a *replica) newServices(ctx context.Context, cfg config.Config, log *slog.Logger) (s services, err error) {
	if s.tokens, err = newTokens(cfg); err != nil {
		return s, err
	}
	accountStore := postgres.NewAccountStore(a.db)
	revoked := revocation.New(a.valkey, accountStore, revocation.Options{Logger: log})
	a.closers = append(a.closers, revoked.Close)
	s.accounts = account.NewService(accountStore, s.tokens, revoked, account.Options{
		AccessTTL: cfg.AccessTokenTTL, RefreshTTL: cfg.RefreshTokenTTL, AgentTTL: cfg.AgentTokenTTL, Logger: log,
	})
	s.limiter = ratelimit.New(a.valkey, ratelimit.Options{Logger: log, Registerer: a.registry})
	lk, err := rtc.New(rtc.Config{
		URL: cfg.LiveKitURL, PublicURL: cfg.LiveKitPublicURL, APIKey: cfg.LiveKitAPIKey, APISecret: cfg.LiveKitAPISecret,
		AgentName: cfg.LiveKitAgentName, TokenTTL: cfg.LiveKitTokenTTL,
	})
	if err != nil {
		return s, fmt.Errorf("livekit: %w", err)
	}
	roomStore := postgres.NewRoomStore(a.db)
	conversationStore := postgres.NewConversationStore(a.db)
	if s.conversations, err = a.newConversations(ctx, cfg, conversationStore, roomStore, s.accounts, log); err != nil {
		return s, err
	}
	blobs, blobRoutes, err := blobstore.Open(ctx, blobstore.Config{
		AzureConnectionString: cfg.AzureConnectionString, Container: cfg.BlobContainer, Dir: cfg.BlobDir, PublicURL: cfg.PublicURL,
	})
	if err != nil {
		if cfg.AzureConnectionString == "" {
			err = &config.Error{Var: "PARLEY_BLOB_DIR", Err: err}
		}
		return s, err
	}
	s.blobRoutes = blobRoutes
	refusals := rpc.NewWebhookRefusals(a.registry)
	fileStore := postgres.NewFileStore(a.db)
	outbox := file.NewWorker(fileStore, blobs, file.WorkerOptions{Log: log, SourceRefused: refusals.RecordingSourceRefused})
	s.rooms = room.NewService(roomStore, lk, room.Options{Log: log, AgentName: cfg.LiveKitAgentName, RecordingsQueued: outbox.Wake})
	a.closers = append(a.closers, s.rooms.Close)
	pruneWebhooks, webhooks := a.startWebhooks(ctx, cfg, log)
	s.webhooks = webhooks
	a.hourly(ctx, s.rooms.Prune, s.accounts.Prune, pruneWebhooks)
	// Calls whose room_finished was lost close within a minute or two; the
	// metrics of reports stored without them (before they were, or by an
	// older replica) are stored at start-up and within a minute.
	a.every(ctx, time.Minute, s.rooms.Reconcile, s.rooms.BackfillMetrics)
	s.webhook = rpc.NewWebhookHandler(lk, s.rooms, log, refusals)
	a.goBackground(ctx, func(ctx context.Context) { _ = outbox.Run(ctx) })
	s.files, err = newFiles(cfg, fileStore, blobs, conversationStore, outbox, log)
	return s, err
}

// newTokens reads the JWK set PARLEY_JWT_KEYS names.
func newTokens(cfg config.Config) (*token.Manager, error) {
	keys, err := token.ReadKeySet(cfg.JWTKeysPath)
	if err != nil {
		return nil, &config.Error{Var: "PARLEY_JWT_KEYS", Err: err}
	}
	tokens, err := token.NewManager(keys, token.Options{Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Leeway: 30 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("token manager: %w", err)
	}
	return tokens, nil
}

// newConversations builds the conversation service with its page cache and
// the hubs that follow new messages and items through Valkey.
func (a *replica) newConversations(ctx context.Context, cfg config.Config, store *postgres.ConversationStore, rooms *postgres.RoomStore, accounts *account.Service, log *slog.Logger) (*conversation.Service, error) {
	pages, err := cache.NewPages(a.valkey, 10*time.Minute, a.registry, log)
	if err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	hub := conversation.NewHub(store, log)
	itemHub := conversation.NewItemHub(store, log)
	a.drain = func() { hub.Drain(); itemHub.Drain() }
	changes := valkeypubsub.New(a.valkey, hub, 0, log)
	a.goBackground(ctx, changes.Run)
	itemChanges := valkeypubsub.NewItems(a.valkey, itemHub, 0, log)
	a.goBackground(ctx, itemChanges.Run)
	return conversation.NewService(store, conversation.Options{
		Cache:        pages,
		Notifier:     changes,
		Hub:          hub,
		ItemHub:      itemHub,
		ItemNotifier: itemChanges,
		Sessions:     accounts,
		SessionCheck: cfg.WatchHeartbeat,
		Rooms:        rooms,
		Log:          log,
	}), nil
}

func newFiles(cfg config.Config, store *postgres.FileStore, blobs file.Blobs, conversations *postgres.ConversationStore, outbox *file.Worker, log *slog.Logger) (*file.Service, error) {
	var contentTypes file.ContentTypes // zero: the built-in allow-list
	if len(cfg.FileContentTypes) > 0 {
		var err error
		if contentTypes, err = file.NewContentTypes(cfg.FileContentTypes); err != nil {
			return nil, &config.Error{Var: "PARLEY_FILE_CONTENT_TYPES", Err: err}
		}
	}
	files, err := file.NewService(store, blobs, conversations, file.Options{
		ContentTypes: contentTypes,
		URLTTL:       cfg.FileURLTTL,
		Wake:         outbox.Wake,
		Log:          log,
	})
	if err != nil {
		return nil, fmt.Errorf("file service: %w", err)
	}
	return files, nil
}

// newHandler mounts the services on one handler with the limits and routes
// cfg sets.
func (a *replica) newHandler(cfg config.Config, s services, log *slog.Logger) (http.Handler, error) {
	routes := map[string]http.Handler{
		"GET /.well-known/jwks.json": s.tokens.JWKSHandler(),
		"POST /livekit/webhook":      s.webhook,
	}
	for pattern, h := range s.blobRoutes {
		routes[pattern] = h
	}
	fileServer := rpc.NewFileServer(s.files, log)
	watch := rpc.WatchOptions{Heartbeat: cfg.WatchHeartbeat}
	return rpc.NewHandler(rpc.Services{
		Auth:         rpc.NewAuthServer(s.accounts, log),
		User:         rpc.NewUserServer(s.accounts, log),
		Room:         rpc.NewRoomServer(s.rooms, log),
		Conversation: rpc.WithExports(rpc.NewConversationServer(s.conversations, watch, log), fileServer),
		File:         fileServer,
		Call:         rpc.NewCallServer(s.rooms, s.conversations, log),
		Webhook:      s.webhooks,
		Token:        s.rooms,
	}, rpc.Options{
		Logger:        log,
		Registry:      a.registry,
		Authenticator: s.accounts,
		Limiter:       s.limiter,
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
}
