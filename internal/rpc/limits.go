package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/limit"
	"github.com/parley-dev/parley/internal/outage"
)

// Limiter counts requests against budgets shared by every replica.
// *ratelimit.Limiter implements it over Valkey.
type Limiter interface {
	// AllowAll counts one request against each check in turn, in one round
	// trip, and stops at the first that refuses it. It returns the decisions
	// made: the request may proceed when there is one per check and the last
	// allows it. It decides even when ctx is done (a reset stream is counted
	// like any request); an error means it could not decide at all.
	AllowAll(ctx context.Context, checks ...limit.Check) ([]limit.Decision, error)
	// Refund gives back one request's worth of a budget AllowAll charged.
	Refund(ctx context.Context, check limit.Check) error
}

// Limits are the per-minute budgets of each kind of caller.
type Limits struct {
	UserPerMinute  int
	AgentPerMinute int
	IPPerMinute    int
}

// rateHeaders adds the IETF RateLimit and RateLimit-Policy fields for one
// named policy. Several policies (ip, then user or agent) form a list.
func rateHeaders(h http.Header, name string, d limit.Decision) {
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

// isAPIPath reports whether path is served by Parley's services, over Connect,
// gRPC, gRPC-Web, the REST paths or the LiveKit token endpoint: the requests
// whose caller a bearer token names.
func isAPIPath(path string) bool {
	return strings.HasPrefix(path, "/parley.v1.") || strings.HasPrefix(path, restPrefix) || path == TokenPath
}

// authResult is the admission's check of a request's bearer token, handed on
// to the authenticator interceptor so the token is checked once.
type authResult struct {
	principal auth.Principal
	err       error
}

type authResultKey struct{}

// admission authenticates an API request's bearer token and counts the
// request against the per-IP budget and, when the token names a caller, the
// caller's budget, in one round trip to the limiter, with the token's
// revocation checked alongside. Every other request
// (webhooks, signed blob URLs, JWKS) counts against the per-IP budget alone.
// Doing both here, before any handler, also counts requests the handlers
// would refuse before their interceptors run (a malformed body, an unknown
// content type).
type admission struct {
	auth      Authenticator
	lim       Limiter
	limits    Limits
	trusted   []netip.Prefix
	obs       *observer
	errWriter *connect.ErrorWriter
	// limitFailed and refundFailed log the limiter's failures, which are
	// per request, at most once per outage.Interval.
	limitFailed, refundFailed *outage.Log
}

// admissionProcedure labels the requests the admission refuses in the
// observer's metrics: they never reach a procedure, and the path they asked
// for is the caller's to choose, which a label must not be.
const admissionProcedure = "(admission)"

func admit(next http.Handler, a *admission) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if unlimitedPaths[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		ctx := r.Context()
		names := []string{"ip"}
		checks := []limit.Check{{Key: ipLimitKey(clientIP(r, a.trusted)), Limit: limit.PerMinute(a.limits.IPPerMinute)}}
		var (
			res     *authResult
			revoked chan error
		)
		if isAPIPath(r.URL.Path) && !publicProcedures[r.URL.Path] && a.auth != nil {
			if token, ok := bearerToken(r.Header.Get("Authorization")); ok {
				res = &authResult{}
				res.principal, res.err = a.auth.VerifyAccessToken(token)
				if res.err == nil {
					name, perMinute := "user", a.limits.UserPerMinute
					if res.principal.IsAgent() {
						name, perMinute = "agent", a.limits.AgentPerMinute
					}
					names = append(names, name)
					checks = append(checks, limit.Check{Key: name + ":" + res.principal.ID.String(), Limit: limit.PerMinute(perMinute)})
					// The revocation check runs beside the limiter's call:
					// the Valkey client sends concurrent calls together, so
					// the two usually share one round trip.
					revoked = make(chan error, 1)
					go func(p auth.Principal) { revoked <- a.auth.CheckRevoked(ctx, p) }(res.principal)
				}
				r = r.WithContext(context.WithValue(ctx, authResultKey{}, res))
			}
		}
		var (
			ds  []limit.Decision
			err error
		)
		if a.lim != nil {
			ds, err = a.lim.AllowAll(ctx, checks...)
		}
		if revoked != nil {
			if rerr := <-revoked; rerr != nil {
				res.err = rerr
				// The caller's budget was charged before the token turned
				// out to be revoked: whoever holds a revoked token must not
				// spend its owner's budget. The refund is the owner's, so
				// the request's end does not cancel it.
				if len(ds) == 2 && ds[1].Allowed {
					if err := a.lim.Refund(context.WithoutCancel(ctx), checks[1]); err != nil {
						a.refundFailed.Failed(ctx, err)
					}
				}
			}
		}
		if a.lim == nil || err != nil || len(ds) == 0 {
			if a.lim != nil {
				// The limiter falls back to local limits by itself, for a
				// reset stream too; an error here means it could not decide
				// at all (a bug), and refusing every request would turn it
				// into a full outage.
				if err == nil {
					err = errors.New("no decision")
				}
				a.limitFailed.Failed(ctx, err)
			}
			next.ServeHTTP(w, r)
			return
		}
		for i, d := range ds {
			rateHeaders(w.Header(), names[i], d)
		}
		last := ds[len(ds)-1]
		if last.Allowed {
			next.ServeHTTP(w, r)
			return
		}
		what := "address"
		if len(ds) > 1 {
			what = names[len(ds)-1]
		}
		cerr := rateLimitedError(what, max(1, ceilSeconds(last.RetryAfter)))
		id := requestID(r.Header.Get("X-Request-Id"))
		w.Header().Set("X-Request-Id", id)
		a.refuse(w, r, cerr)
		if a.obs != nil {
			a.obs.done(ctx, admissionProcedure, id, r.RemoteAddr, start, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, cerr))
		}
	})
}

// refuse writes cerr in the caller's protocol: Connect, gRPC and gRPC-Web
// as their clients expect, the REST paths as the transcoder writes errors
// (JSON with the numeric code), anything else as plain text.
func (a *admission) refuse(w http.ResponseWriter, r *http.Request, cerr *connect.Error) {
	switch {
	case strings.HasPrefix(r.URL.Path, restPrefix):
		body, _ := json.Marshal(map[string]any{"code": int(cerr.Code()), "message": cerr.Message()})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write(body)
	case a.errWriter.IsSupported(r):
		_ = a.errWriter.Write(w, r, cerr)
	default:
		http.Error(w, cerr.Message(), http.StatusTooManyRequests)
	}
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
