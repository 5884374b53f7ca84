package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"time"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/outage"
)

// Authenticator turns a bearer token into the caller. account.Service
// implements it: signature, claims and revocation are checked there.
type Authenticator interface {
	// Authenticate is VerifyAccessToken then CheckRevoked.
	Authenticate(ctx context.Context, bearer string) (auth.Principal, error)
	// VerifyAccessToken checks the token's signature and claims, without
	// I/O; the principal is not to be trusted before CheckRevoked passes.
	VerifyAccessToken(bearer string) (auth.Principal, error)
	CheckRevoked(ctx context.Context, p auth.Principal) error
}

// publicProcedures need no access token.
var publicProcedures = map[string]bool{
	parleyv1connect.AuthServiceRegisterProcedure:         true,
	parleyv1connect.AuthServiceLoginProcedure:            true,
	parleyv1connect.AuthServiceRefreshProcedure:          true,
	parleyv1connect.AuthServiceExchangeAgentKeyProcedure: true,
}

// authenticator puts the verified principal into the context of every
// non-public procedure. The admission middleware has usually checked the
// token already, to know whose budget the request spends; then its result
// is used, not checked again.
type authenticator struct {
	auth Authenticator
	log  *slog.Logger
}

func (a *authenticator) authenticate(ctx context.Context, procedure, header string) (context.Context, error) {
	if publicProcedures[procedure] {
		return ctx, nil
	}
	var (
		p   auth.Principal
		err error
	)
	if res, ok := ctx.Value(authResultKey{}).(*authResult); ok {
		p, err = res.principal, res.err
	} else {
		token, ok := bearerToken(header)
		if !ok {
			return ctx, missingTokenError()
		}
		p, err = a.auth.Authenticate(ctx, token)
	}
	if err != nil {
		if errors.Is(err, auth.ErrUnauthenticated) {
			return ctx, invalidTokenError()
		}
		return ctx, toConnectError(ctx, a.log, err)
	}
	return auth.WithPrincipal(ctx, p), nil
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header. The scheme is case-insensitive (RFC 9110, section 11.1).
func bearerToken(header string) (string, bool) {
	const scheme = "bearer "
	if len(header) <= len(scheme) || !strings.EqualFold(header[:len(scheme)], scheme) {
		return "", false
	}
	token := strings.TrimSpace(header[len(scheme):])
	return token, token != ""
}

func (a *authenticator) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := a.authenticate(ctx, req.Spec().Procedure, req.Header().Get("Authorization"))
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a *authenticator) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *authenticator) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := a.authenticate(ctx, conn.Spec().Procedure, conn.RequestHeader().Get("Authorization"))
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// validator enforces the protovalidate rules written in the proto schema,
// and refuses U+0000 in any string (see nulError), so handlers only ever
// see well-formed requests.
type validator struct {
	v protovalidate.Validator
}

func newValidator() (*validator, error) {
	v, err := protovalidate.New()
	if err != nil {
		return nil, err
	}
	return &validator{v: v}, nil
}

func (v *validator) validate(msg any) error {
	m, ok := msg.(proto.Message)
	if !ok {
		return nil
	}
	err := nulError(m.ProtoReflect())
	if err == nil {
		err = v.v.Validate(m)
	}
	if err == nil {
		return nil
	}
	return invalidMessageError(err)
}

func (v *validator) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := v.validate(req.Any()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (v *validator) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (v *validator) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, &validatingConn{StreamingHandlerConn: conn, v: v})
	}
}

type validatingConn struct {
	connect.StreamingHandlerConn
	v *validator
}

func (c *validatingConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	return c.v.validate(msg)
}

// observer logs one structured line per call and records its metrics.
type observer struct {
	log      *slog.Logger
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// unavailable logs the causes of calls answered unavailable because a
	// dependency is down, at most once per outage.Interval.
	unavailable *outage.Log
}

func newObserver(log *slog.Logger, reg prometheus.Registerer) *observer {
	o := &observer{
		log:         log,
		unavailable: outage.New(log, "dependency unavailable", nil),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_rpc_requests_total",
			Help: "RPCs handled, by procedure and Connect code.",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "parley_rpc_duration_seconds",
			Help:    "RPC handling time, by procedure.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"procedure"}),
	}
	reg.MustRegister(o.calls, o.duration)
	return o
}

func (o *observer) done(ctx context.Context, procedure, requestID, peer string, start time.Time, err error) {
	elapsed := time.Since(start)
	code := "ok"
	level := slog.LevelInfo
	if err != nil {
		c := connect.CodeOf(err)
		code = c.String()
		if ce := (*causedError)(nil); c == connect.CodeUnavailable && errors.As(err, &ce) {
			o.unavailable.Failed(ctx, ce.cause)
		}
		if c == connect.CodeInternal || c == connect.CodeUnknown {
			level = slog.LevelError
		}
	}
	o.calls.WithLabelValues(procedure, code).Inc()
	o.duration.WithLabelValues(procedure).Observe(elapsed.Seconds())
	if !o.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("procedure", procedure),
		slog.String("code", code),
		slog.Duration("duration", elapsed),
		slog.String("request_id", requestID),
		slog.String("peer", peer),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	o.log.LogAttrs(ctx, level, "rpc", attrs...)
}

// requestID keeps a caller's X-Request-Id when it is sane, so a request can be
// followed across a proxy, and makes one up otherwise.
func requestID(given string) string {
	if n := len(given); n > 0 && n <= 128 && !strings.ContainsAny(given, "\r\n") {
		return given
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (o *observer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		id := requestID(req.Header().Get("X-Request-Id"))
		resp, err := next(ctx, req)
		if resp != nil {
			resp.Header().Set("X-Request-Id", id)
		}
		var cerr *connect.Error
		if errors.As(err, &cerr) {
			cerr.Meta().Set("X-Request-Id", id)
		}
		o.done(ctx, req.Spec().Procedure, id, req.Peer().Addr, start, err)
		return resp, err
	}
}

func (o *observer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (o *observer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		id := requestID(conn.RequestHeader().Get("X-Request-Id"))
		conn.ResponseHeader().Set("X-Request-Id", id)
		err := next(ctx, conn)
		o.done(ctx, conn.Spec().Procedure, id, conn.Peer().Addr, start, err)
		return err
	}
}
