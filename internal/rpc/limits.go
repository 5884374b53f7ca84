package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/auth"
)

// Limiter counts requests against a shared per-key budget of perMinute
// requests. internal/ratelimit implements it over Valkey.
type Limiter interface {
	Allow(ctx context.Context, key string, perMinute int) (Decision, error)
}

// Decision is a Limiter's answer for one request.
type Decision struct {
	Allowed    bool
	Limit      int
	Remaining  int
	RetryAfter time.Duration
	ResetAfter time.Duration
}

// Limits are the per-minute budgets of each kind of caller.
type Limits struct {
	UserPerMinute  int
	AgentPerMinute int
	IPPerMinute    int
}

// rateHeaders adds the IETF RateLimit and RateLimit-Policy fields for one
// named policy. Several policies (ip, then user or agent) form a list.
func rateHeaders(h http.Header, name string, d Decision) {
	h.Add("RateLimit-Policy", fmt.Sprintf("%q;q=%d;w=60", name, d.Limit))
	h.Add("RateLimit", fmt.Sprintf("%q;r=%d;t=%d", name, d.Remaining, ceilSeconds(d.ResetAfter)))
	if !d.Allowed {
		h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(d.RetryAfter))))
	}
}

func ceilSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// unlimitedPaths are probed by orchestrators and scrapers, whose addresses
// must not eat into (or be refused by) the per-IP budget.
var unlimitedPaths = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// limitIP enforces the per-IP budget on every request, authenticated or not.
func limitIP(next http.Handler, lim Limiter, perMinute int, trusted []netip.Prefix, log *slog.Logger) http.Handler {
	errWriter := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if lim == nil || unlimitedPaths[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		d, err := lim.Allow(r.Context(), ipLimitKey(clientIP(r, trusted)), perMinute)
		if err != nil {
			// The limiter degrades to local limits by itself; an error here
			// means it could not decide at all, and refusing every request
			// would turn a cache outage into a full outage.
			log.WarnContext(r.Context(), "rate limit check failed", slog.String("error", err.Error()))
			next.ServeHTTP(w, r)
			return
		}
		rateHeaders(w.Header(), "ip", d)
		if d.Allowed {
			next.ServeHTTP(w, r)
			return
		}
		cerr := connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("rate limit exceeded for this address: retry in %ds", max(1, ceilSeconds(d.RetryAfter))))
		if errWriter.IsSupported(r) {
			_ = errWriter.Write(w, r, cerr)
			return
		}
		http.Error(w, cerr.Message(), http.StatusTooManyRequests)
	})
}

// ipLimitKey names the per-IP budget of addr. An IPv6 client usually holds
// a whole /64 and could take a fresh budget with every address in it, so
// IPv6 addresses share their /64's budget.
func ipLimitKey(addr netip.Addr) string {
	if addr.Is6() {
		return "ip:" + netip.PrefixFrom(addr, 64).Masked().String()
	}
	return "ip:" + addr.String()
}

// principalLimiter enforces the per-user and per-agent budgets once the
// caller is known.
type principalLimiter struct {
	lim    Limiter
	limits Limits
	log    *slog.Logger
}

func (l *principalLimiter) check(ctx context.Context, h http.Header) error {
	p, ok := auth.FromContext(ctx)
	if !ok || l.lim == nil {
		return nil
	}
	name, perMinute := "user", l.limits.UserPerMinute
	if p.IsAgent() {
		name, perMinute = "agent", l.limits.AgentPerMinute
	}
	d, err := l.lim.Allow(ctx, name+":"+p.ID.String(), perMinute)
	if err != nil {
		l.log.WarnContext(ctx, "rate limit check failed", slog.String("error", err.Error()))
		return nil
	}
	rateHeaders(h, name, d)
	if d.Allowed {
		return nil
	}
	cerr := connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("rate limit exceeded for this %s: retry in %ds", name, max(1, ceilSeconds(d.RetryAfter))))
	return cerr
}

func (l *principalLimiter) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		h := make(http.Header)
		if err := l.check(ctx, h); err != nil {
			var cerr *connect.Error
			if errors.As(err, &cerr) {
				copyHeader(cerr.Meta(), h)
			}
			return nil, err
		}
		resp, err := next(ctx, req)
		if err != nil {
			var cerr *connect.Error
			if errors.As(err, &cerr) {
				copyHeader(cerr.Meta(), h)
			}
			return resp, err
		}
		copyHeader(resp.Header(), h)
		return resp, nil
	}
}

func (l *principalLimiter) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l *principalLimiter) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := l.check(ctx, conn.ResponseHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		for _, v := range vs {
			dst.Add(k, v)
		}
	}
}
