package rpc

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/blobstore"
	"github.com/parley-dev/parley/internal/cache"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/limit"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/ratelimit"
	"github.com/parley-dev/parley/internal/revocation"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/token"
	"github.com/parley-dev/parley/internal/valkeypubsub"
	"github.com/parley-dev/parley/internal/webhook"
	"github.com/parley-dev/parley/internal/webhookhttp"
)

// testAPI is Parley's API wired as cmd/parley wires it: every service over
// its real domain service and store, the watch hub with its Valkey notifier,
// the file outbox worker, the real token manager (over a key made for the
// test), revocation cache and Valkey rate limiter, all behind NewHandler
// and NewServer on a new database and a fake LiveKit.
type testAPI struct {
	url string
	// hc speaks h2c, which gRPC needs.
	hc       *http.Client
	db       *bun.DB
	dbURL    string
	tokens   *token.Manager
	accounts *account.Service
	revoked  *revocation.Cache
	// limiter is the Valkey rate limiter, unless the options gave another.
	limiter *countedLimiter
	lk      *rtctest.Server
	rooms   *room.Service
	webhook *WebhookHandler
	// webhooks keeps outbound webhook endpoints, events and deliveries.
	webhooks *postgres.WebhookStore
	blobs    file.Blobs
	dirRoot  string // the directory store's root, "" for Azure
	// azConn and azContainer name the Azure store's container, "" for dir.
	azConn, azContainer string
	// wake starts a pass of the outbox worker.
	wake func()
}

// apiOptions tune newTestAPI; the zero value is the wiring of cmd/parley.
type apiOptions struct {
	// handler are NewHandler's options. The logger, registry,
	// authenticator, limiter, limits (generous, so no test is refused by
	// chance), request size and probe are filled in when left zero.
	handler Options
	watch   watchSetup
	// blobs is the blob store, "dir" or "azure"; with "" there are no
	// files, and FileService and ExportConversation answer unimplemented.
	blobs string
	files fileEnvOptions
	// liveKitURL is where the LiveKit client connects ("": the fake).
	liveKitURL string
	// services, if set, changes the services before NewHandler mounts them.
	services func(*Services)
	// serve, if set, wraps the handler NewServer serves.
	serve func(http.Handler) http.Handler

	// A replica of another testAPI shares its database (dbURL), Valkey
	// (valkeyURL), Valkey key prefix and token keys (tokens); each is new
	// when left zero.
	dbURL, valkeyURL, prefix string
	tokens                   *token.Manager
	// revocations, if set, wraps the store the revocation cache falls back to.
	revocations func(*postgres.AccountStore) revocation.Source
	// webhookAllowHTTP is PARLEY_WEBHOOK_ALLOW_HTTP. Endpoints may always
	// reach 127.0.0.1, as the tests' receivers listen there.
	webhookAllowHTTP bool
}

// watchSetup tunes a test server's watches: the heartbeat on the wire,
// which is also how often a watch asks whether its token was revoked, and
// a channel whose closing drains the server.
type watchSetup struct {
	Heartbeat time.Duration
	Drain     chan struct{}
}

type fileEnvOptions struct {
	urlTTL time.Duration
	// wrap, if set, wraps the blob store the service and worker use.
	wrap func(file.Blobs) file.Blobs
	// sourceRefused is the worker's file.WorkerOptions.SourceRefused.
	sourceRefused func()
}

// testLimits are rate limits no test reaches by accident; the tests of
// the limits set their own.
var testLimits = Limits{UserPerMinute: 100_000, AgentPerMinute: 100_000, IPPerMinute: 100_000}

// newTestTokens is a token manager over an Ed25519 key made for the test.
func newTestTokens(t testing.TB) *token.Manager {
	t.Helper()
	set, err := token.GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.ParseKeySet(set)
	if err != nil {
		t.Fatal(err)
	}
	m, err := token.NewManager(keys, token.Options{Issuer: "https://parley.test", Audience: "parley-test", Leeway: token.DefaultLeeway})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newTestAPI(t testing.TB, o apiOptions) *testAPI {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if o.handler.Logger != nil {
		log = o.handler.Logger
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &testAPI{url: "http://" + ln.Addr().String(), lk: rtctest.NewServer(t, roomTestKey, roomTestSecret), dbURL: o.dbURL, tokens: o.tokens}
	if a.dbURL == "" {
		a.dbURL = testenv.DatabaseURL(t)
	}
	if o.liveKitURL == "" {
		o.liveKitURL = a.lk.URL
	}
	a.db, a.rooms, a.webhook = newRoomReplica(t, a.dbURL, o.liveKitURL)
	if o.valkeyURL == "" {
		o.valkeyURL = testenv.ValkeyURL(t)
	}
	vc := testenv.ValkeyClient(t, o.valkeyURL)
	prefix := o.prefix
	if prefix == "" {
		prefix = "test:" + uuid.NewString() + ":"
	}

	if a.tokens == nil {
		a.tokens = newTestTokens(t)
	}
	accountStore := postgres.NewAccountStore(a.db)
	var source revocation.Source = accountStore
	if o.revocations != nil {
		source = o.revocations(accountStore)
	}
	a.revoked = revocation.New(vc, source, revocation.Options{KeyPrefix: prefix + "revoked:", Logger: log})
	t.Cleanup(a.revoked.Close)
	a.accounts = account.NewService(accountStore, a.tokens, a.revoked, account.Options{Logger: log})

	reg := o.handler.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	pages, err := cache.NewPages(vc, time.Minute, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	convStore := postgres.NewConversationStore(a.db)
	hub := conversation.NewHub(convStore, log)
	notifier := valkeypubsub.New(vc, hub, 500*time.Millisecond, log)
	itemHub := conversation.NewItemHub(convStore, log)
	itemNotifier := valkeypubsub.NewItems(vc, itemHub, 500*time.Millisecond, log)
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	t.Cleanup(func() { cancel(); running.Wait() })
	running.Go(func() { notifier.Run(ctx) })
	running.Go(func() { itemNotifier.Run(ctx) })
	if o.watch.Drain != nil {
		go func() {
			select {
			case <-o.watch.Drain:
				hub.Drain()
				itemHub.Drain()
			case <-ctx.Done():
			}
		}()
	}
	conversations := conversation.NewService(convStore, conversation.Options{Cache: pages, Notifier: notifier, Hub: hub,
		ItemHub: itemHub, ItemNotifier: itemNotifier, Sessions: a.accounts, SessionCheck: o.watch.Heartbeat, Rooms: postgres.NewRoomStore(a.db), Log: log})
	conv := NewConversationServer(conversations, WatchOptions{Heartbeat: o.watch.Heartbeat}, log)
	a.webhooks = postgres.NewWebhookStore(a.db)
	urls := webhookhttp.Policy{AllowHTTP: o.webhookAllowHTTP, Allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	hooks := NewWebhookServer(webhook.NewService(a.webhooks, urls, webhook.Options{Log: log}), webhook.NewEvents(a.webhooks, webhook.Options{Log: log}), log)
	svc := Services{Auth: NewAuthServer(a.accounts, log), User: NewUserServer(a.accounts, log), Room: NewRoomServer(a.rooms, log), Conversation: conv, Webhook: hooks, Token: a.rooms,
		Call: NewCallServer(a.rooms, conversations, log)}

	routes := map[string]http.Handler{
		"GET /.well-known/jwks.json": a.tokens.JWKSHandler(),
		"POST /livekit/webhook":      a.webhook,
	}
	if o.blobs != "" {
		worker, files := a.openFiles(t, o, convStore, routes, log)
		running.Go(func() { _ = worker.Run(ctx) })
		fileServer := NewFileServer(files, log)
		svc.Conversation, svc.File = WithExports(conv, fileServer), fileServer
	}

	opts := o.handler
	opts.Logger, opts.Registry = log, reg
	if opts.Authenticator == nil {
		opts.Authenticator = a.accounts
	}
	if opts.Limiter == nil {
		a.limiter = &countedLimiter{l: ratelimit.New(vc, ratelimit.Options{Logger: log, KeyPrefix: prefix + "rl:"})}
		opts.Limiter = a.limiter
	}
	if opts.Limits == (Limits{}) {
		opts.Limits = testLimits
	}
	if opts.MaxRequestBytes == 0 {
		opts.MaxRequestBytes = 16 << 20
	}
	if opts.Probe == nil {
		opts.Probe = NewProbe()
	}
	if opts.Routes == nil {
		opts.Routes = routes
	}
	if o.services != nil {
		o.services(&svc)
	}
	h, err := NewHandler(svc, opts)
	if err != nil {
		t.Fatal(err)
	}
	if o.serve != nil {
		h = o.serve(h)
	}
	srv := NewServer(ln.Addr().String(), h, log)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	transport := &http.Transport{Protocols: new(http.Protocols)}
	transport.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(transport.CloseIdleConnections)
	a.hc = &http.Client{Transport: transport}
	return a
}

// openFiles opens the blob store o names, adding its routes, and returns
// the outbox worker (not yet running) and the file service over it.
func (a *testAPI) openFiles(t testing.TB, o apiOptions, convStore *postgres.ConversationStore, routes map[string]http.Handler, log *slog.Logger) (*file.Worker, *file.Service) {
	t.Helper()
	switch o.blobs {
	case "azure":
		a.azConn, a.azContainer = testenv.AzuriteContainer(t)
		az, err := blobstore.NewAzure(t.Context(), a.azConn, a.azContainer)
		if err != nil {
			t.Fatal(err)
		}
		a.blobs = az
	case "dir":
		a.dirRoot = filepath.Join(t.TempDir(), "blobs")
		d, err := blobstore.NewDir(a.dirRoot, a.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for pattern, h := range d.Routes() {
			routes[pattern] = h
		}
		a.blobs = d
	default:
		t.Fatalf("unknown blob store %q", o.blobs)
	}
	blobs := a.blobs
	if o.files.wrap != nil {
		blobs = o.files.wrap(blobs)
	}
	fileStore := postgres.NewFileStore(a.db)
	worker := file.NewWorker(fileStore, blobs, file.WorkerOptions{Poll: 100 * time.Millisecond, MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		SourceRefused: o.files.sourceRefused, Log: log})
	a.wake = worker.Wake
	files, err := file.NewService(fileStore, blobs, convStore, file.Options{URLTTL: o.files.urlTTL, Wake: worker.Wake, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return worker, files
}

// countedLimiter is the Valkey limiter as cmd/parley wires it, counting its
// calls and their outcomes.
type countedLimiter struct {
	l                               *ratelimit.Limiter
	calls, failed, allowed, refused atomic.Int64
}

func (c *countedLimiter) AllowAll(ctx context.Context, checks ...limit.Check) ([]limit.Decision, error) {
	c.calls.Add(1)
	ds, err := c.l.AllowAll(ctx, checks...)
	if err != nil {
		c.failed.Add(1)
		return nil, err
	}
	if ds[len(ds)-1].Allowed {
		c.allowed.Add(1)
	} else {
		c.refused.Add(1)
	}
	return ds, nil
}

func (c *countedLimiter) Refund(ctx context.Context, check limit.Check) error {
	return c.l.Refund(ctx, check)
}

// caller is a user or agent seeded through account.Service, with the access
// token it signed in with.
type caller struct {
	uuid.UUID
	token string
}

// newUser registers a user named name and returns it signed in.
func (a *testAPI) newUser(t testing.TB, name string) caller {
	t.Helper()
	u, pair, err := a.accounts.Register(t.Context(), uuid.NewString()+"@example.com", "correct horse battery", name)
	if err != nil {
		t.Fatal(err)
	}
	return caller{UUID: u.ID, token: pair.AccessToken}
}

func (a *testAPI) user(t testing.TB) caller { return a.newUser(t, "Tester") }

// agent makes an agent key and returns the agent signed in with it.
func (a *testAPI) agent(t testing.TB) caller {
	t.Helper()
	k, plain, err := a.accounts.CreateAgentKey(t.Context(), "test agent")
	if err != nil {
		t.Fatal(err)
	}
	at, err := a.accounts.ExchangeAgentKey(t.Context(), plain)
	if err != nil {
		t.Fatal(err)
	}
	return caller{UUID: k.ID, token: at.Token}
}

// expiring is c with a new access token that expires within ttl.
func (a *testAPI) expiring(t testing.TB, c caller, ttl time.Duration) caller {
	t.Helper()
	p := a.principal(t, c)
	at, err := a.tokens.IssueAccess(c.UUID, p.Kind, p.FamilyID, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return caller{UUID: c.UUID, token: at.Token}
}

// principal is whom the handler takes c's token for.
func (a *testAPI) principal(t testing.TB, c caller) auth.Principal {
	t.Helper()
	p, err := a.accounts.VerifyAccessToken(c.token)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// as returns a request for msg made by c.
func as[T any](c caller, msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set("Authorization", "Bearer "+c.token)
	return req
}

// clients returns a client of a service over each of Connect, gRPC and
// gRPC-Web, by name.
func clients[C any](a *testAPI, newClient func(connect.HTTPClient, string, ...connect.ClientOption) C) map[string]C {
	return map[string]C{
		"connect": newClient(a.hc, a.url),
		"grpc":    newClient(a.hc, a.url, connect.WithGRPC()),
		"grpcweb": newClient(a.hc, a.url, connect.WithGRPCWeb()),
	}
}
