// Package rpc serves Parley's API: thin Connect handlers over the domain
// services, the interceptors every call passes through, and the HTTP
// endpoints around them (probes, metrics, CORS). It maps domain errors to
// Connect codes in one place (errors.go) and knows nothing of SQL, Valkey or
// SDKs.
package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"time"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/vanguard"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/cors"

	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/outage"
)

// serviceNames are the fully-qualified names of Parley's services, for
// reflection and the gRPC health service.
var serviceNames = []string{
	parleyv1connect.AuthServiceName,
	parleyv1connect.UserServiceName,
	parleyv1connect.RoomServiceName,
	parleyv1connect.ConversationServiceName,
	parleyv1connect.FileServiceName,
	parleyv1connect.CallServiceName,
	parleyv1connect.WebhookServiceName,
}

// Services are the handlers of Parley's services. A nil one answers
// unimplemented.
type Services struct {
	Auth         parleyv1connect.AuthServiceHandler
	User         parleyv1connect.UserServiceHandler
	Room         parleyv1connect.RoomServiceHandler
	Conversation parleyv1connect.ConversationServiceHandler
	File         parleyv1connect.FileServiceHandler
	Call         parleyv1connect.CallServiceHandler
	Webhook      parleyv1connect.WebhookServiceHandler
	// Token serves POST /livekit/token (TokenPath), LiveKit's standard
	// token endpoint, when it is not nil.
	Token RoomEntrance
}

// Options configure NewHandler.
type Options struct {
	Logger        *slog.Logger
	Registry      *prometheus.Registry
	Authenticator Authenticator
	// Limiter may be nil, which disables rate limiting.
	Limiter         Limiter
	Limits          Limits
	TrustedProxies  []netip.Prefix
	CORSOrigins     []string
	MaxRequestBytes int64
	// BodyTime bounds the time a request body takes to arrive, on every
	// path (the zero value: no bound).
	BodyTime BodyTime
	// Metrics serves GET /metrics (Registry) on this handler too.
	Metrics bool
	Probe   *Probe
	// Routes are extra plain-HTTP endpoints (JWKS, webhooks, signed blob
	// URLs), mounted on the same port behind the per-IP limit.
	Routes map[string]http.Handler
}

// NewHandler returns the HTTP handler serving every protocol and endpoint of
// Parley on one port.
func NewHandler(svc Services, opts Options) (http.Handler, error) {
	v, err := newValidator()
	if err != nil {
		return nil, fmt.Errorf("build validator: %w", err)
	}
	log := opts.Logger
	obs := newObserver(log, opts.Registry)
	inflate := newInflation(opts.MaxRequestBytes, opts.Registry)
	handlerOpts := []connect.HandlerOption{
		// Outermost first: observe everything, then authenticate, then
		// validate the now-authorised request. Rate limits are counted
		// before any handler, by the admission middleware.
		connect.WithInterceptors(
			obs,
			&authenticator{auth: opts.Authenticator, log: log},
			v,
		),
		connect.WithReadMaxBytes(int(opts.MaxRequestBytes)),
		inflate.handlerOption(),
		// Compressing a small answer costs more CPU than the bytes it saves
		// (connect-go clients ask for gzip by default).
		connect.WithCompressMinBytes(1024),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			log.ErrorContext(ctx, "panic in handler", slog.String("procedure", spec.Procedure), slog.Any("panic", p),
				slog.String("stack", string(debug.Stack())))
			return internalError()
		}),
	}
	handlerOpts = append(handlerOpts, jsonCodecs()...)

	mux := http.NewServeMux()
	mount := func(path string, h http.Handler) { mux.Handle(path, h) }
	// The REST paths (google.api.http) are transcoded by vanguard into Connect
	// calls of the very same handlers, so they pass the same interceptors.
	var rest []*vanguard.Service
	mountService := func(path string, h http.Handler) {
		mount(path, h)
		rest = append(rest, vanguard.NewService(path, restReached(h)))
	}
	mountService(parleyv1connect.NewAuthServiceHandler(orUnimplemented[parleyv1connect.AuthServiceHandler](svc.Auth, parleyv1connect.UnimplementedAuthServiceHandler{}), handlerOpts...))
	mountService(parleyv1connect.NewUserServiceHandler(orUnimplemented[parleyv1connect.UserServiceHandler](svc.User, parleyv1connect.UnimplementedUserServiceHandler{}), handlerOpts...))
	mountService(parleyv1connect.NewRoomServiceHandler(orUnimplemented[parleyv1connect.RoomServiceHandler](svc.Room, parleyv1connect.UnimplementedRoomServiceHandler{}), handlerOpts...))
	mountService(parleyv1connect.NewConversationServiceHandler(orUnimplemented[parleyv1connect.ConversationServiceHandler](svc.Conversation, parleyv1connect.UnimplementedConversationServiceHandler{}), handlerOpts...))
	mountService(parleyv1connect.NewFileServiceHandler(orUnimplemented[parleyv1connect.FileServiceHandler](svc.File, parleyv1connect.UnimplementedFileServiceHandler{}), handlerOpts...))
	mountService(parleyv1connect.NewCallServiceHandler(orUnimplemented[parleyv1connect.CallServiceHandler](svc.Call, parleyv1connect.UnimplementedCallServiceHandler{}), handlerOpts...))
	mountService(parleyv1connect.NewWebhookServiceHandler(orUnimplemented[parleyv1connect.WebhookServiceHandler](svc.Webhook, parleyv1connect.UnimplementedWebhookServiceHandler{}), handlerOpts...))
	transcoder, err := vanguard.NewTranscoder(rest)
	if err != nil {
		return nil, fmt.Errorf("build REST transcoder: %w", err)
	}
	mount(restPrefix, restRequest(transcoder, opts.MaxRequestBytes, inflate))

	mount(grpchealth.NewHandler(opts.Probe.health))
	reflector := grpcreflect.NewStaticReflector(append([]string{grpchealth.HealthV1ServiceName}, serviceNames...)...)
	mount(grpcreflect.NewHandlerV1(reflector))
	mount(grpcreflect.NewHandlerV1Alpha(reflector))

	mux.HandleFunc("GET /healthz", opts.Probe.healthz)
	mux.HandleFunc("GET /readyz", opts.Probe.readyz)
	if opts.Metrics {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{Registry: opts.Registry}))
	}
	if svc.Token != nil {
		mux.Handle("POST "+TokenPath, &tokenHandler{
			rooms: svc.Token,
			auth:  &authenticator{auth: opts.Authenticator, log: log},
			obs:   obs,
			errs:  connect.NewErrorWriter(),
			log:   log,
		})
	}
	for path, h := range opts.Routes {
		mux.Handle(path, h)
	}

	var h http.Handler = mux
	h = admit(h, &admission{
		auth:         opts.Authenticator,
		lim:          opts.Limiter,
		limits:       opts.Limits,
		trusted:      opts.TrustedProxies,
		obs:          obs,
		errWriter:    connect.NewErrorWriter(),
		limitFailed:  outage.New(log, "rate limit check failed; requests let through", nil),
		refundFailed: outage.New(log, "rate limit refund failed", nil),
	})
	h = withCORS(h, opts.CORSOrigins)
	h = limitBodyTime(h, opts.BodyTime, opts.Registry)
	return h, nil
}

func orUnimplemented[T any](h T, fallback T) T {
	if any(h) == nil {
		return fallback
	}
	return h
}

// withCORS lets the configured browser origins call every protocol, with the
// methods and headers Connect, gRPC-Web and our rate-limit headers use.
func withCORS(h http.Handler, origins []string) http.Handler {
	if len(origins) == 0 {
		return h
	}
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		// PUT: uploads to the directory store's signed URLs.
		AllowedMethods: append(connectcors.AllowedMethods(), http.MethodPut),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization", "X-Request-Id"),
		ExposedHeaders: append(connectcors.ExposedHeaders(), "RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id"),
		MaxAge:         int((2 * time.Hour).Seconds()),
	}).Handler(h)
}

// NewServer returns an http.Server for h that speaks HTTP/1.1 and
// unencrypted HTTP/2 (h2c) on one port, so gRPC works without TLS behind a
// terminating proxy. There is no write timeout: WatchMessages streams live
// for as long as the client stays.
func NewServer(addr string, h http.Handler, log *slog.Logger) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
