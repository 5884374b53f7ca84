// Package ratelimit limits request rates across all replicas with GCRA state
// kept in Valkey, one round trip per check. Whenever Valkey does not answer a
// check (it is down or slow, or the request gave up first) the check is
// made by an in-process limiter with the same limits, so an outage loosens
// limits (each replica counts alone) but never removes them, and a request
// cannot skip its limit by cancelling itself.
package ratelimit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/internal/limit"
	"github.com/parley-dev/parley/internal/outage"
)

// Defaults for Options' zero values.
const (
	DefaultKeyPrefix     = "parley:rl:"
	DefaultTimeout       = 100 * time.Millisecond
	DefaultRetryInterval = time.Second
	DefaultMaxLocalKeys  = 100_000
)

// Options configures a Limiter. The zero value is usable.
type Options struct {
	// Logger receives the outage and recovery messages. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the limiter's metrics. Nil leaves them unregistered.
	Registerer prometheus.Registerer
	// KeyPrefix is prepended to every key in Valkey. Default DefaultKeyPrefix.
	KeyPrefix string
	// Timeout bounds each Valkey call, so a stalled server costs a request
	// at most this much. Default DefaultTimeout.
	Timeout time.Duration
	// RetryInterval is how often, during an outage, one request probes Valkey
	// while the rest go straight to the local limiter. Default
	// DefaultRetryInterval.
	RetryInterval time.Duration
	// MaxLocalKeys bounds the keys the local fallback remembers. Default
	// DefaultMaxLocalKeys.
	MaxLocalKeys int
	// Now is the clock for the local limiter and outage bookkeeping (Valkey
	// uses its own clock). Default time.Now.
	Now func() time.Time
}

// Limiter checks request rates against limits shared by every replica. It is
// safe for concurrent use.
type Limiter struct {
	client        valkey.Client
	prefix        string
	timeout       time.Duration
	retryInterval time.Duration
	now           func() time.Time
	outage        *outage.Log
	local         *localLimiter

	// probeAt is when Valkey may next be tried, in Unix nanoseconds; zero
	// while Valkey is healthy.
	probeAt atomic.Int64
	// failedAt is when the latest failed call began, in Unix nanoseconds.
	failedAt atomic.Int64
	// degraded is true from a failed call until Valkey answers again.
	degraded atomic.Bool

	allowed  prometheus.Counter
	refused  prometheus.Counter
	fallback prometheus.Counter
}

// New returns a Limiter keeping its state in Valkey through client. The client
// is not closed by the Limiter.
func New(client valkey.Client, opts Options) *Limiter {
	l := &Limiter{
		client:        client,
		prefix:        cmp.Or(opts.KeyPrefix, DefaultKeyPrefix),
		timeout:       cmp.Or(opts.Timeout, DefaultTimeout),
		retryInterval: cmp.Or(opts.RetryInterval, DefaultRetryInterval),
		now:           opts.Now,
		local:         newLocalLimiter(cmp.Or(opts.MaxLocalKeys, DefaultMaxLocalKeys)),
	}
	if l.now == nil {
		l.now = time.Now
	}
	l.outage = outage.New(opts.Logger, "rate limiter falling back to local limits", l.now)
	decisions := register(opts.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "parley_ratelimit_decisions_total",
		Help: "Rate limit decisions, by result (allowed or refused).",
	}, []string{"result"}))
	l.allowed = decisions.WithLabelValues("allowed")
	l.refused = decisions.WithLabelValues("refused")
	l.fallback = register(opts.Registerer, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_ratelimit_fallback_total",
		Help: "Rate limit decisions made by the local limiter because Valkey did not answer (down, slow, or the request gave up first).",
	}))
	return l
}

// Allow counts one request against key under lim and reports whether it may
// proceed. Every replica calling Allow with the same key shares one budget; a
// key should always be used with the same Limit.
//
// When Valkey fails, is slower than Options.Timeout or the ctx's deadline,
// or ctx is done before it answers, Allow answers from the local limiter
// and returns a nil error. It returns an error only for an invalid lim
// (ErrInvalidLimit).
func (l *Limiter) Allow(ctx context.Context, key string, lim limit.Limit) (limit.Decision, error) {
	ds, err := l.AllowAll(ctx, limit.Check{Key: key, Limit: lim})
	if err != nil {
		return limit.Decision{}, err
	}
	return ds[0], nil
}

// AllowAll counts one request against each budget in turn, in one Valkey
// round trip, as consecutive Allow calls would: it stops at the first budget
// that refuses, leaving the later ones uncharged, and returns the decisions
// made, the last of which is the refusal if there was one. The request may
// proceed when every check was made and allowed it.
//
// Errors and the fallback to local limits are as for Allow.
func (l *Limiter) AllowAll(ctx context.Context, checks ...limit.Check) ([]limit.Decision, error) {
	if len(checks) == 0 {
		return nil, nil
	}
	ps := make([]gcraParams, len(checks))
	for i, c := range checks {
		p, err := params(c.Limit)
		if err != nil {
			return nil, err
		}
		ps[i] = p
	}
	now := l.now()
	// A request that has already given up (an HTTP/2 stream reset at once)
	// is counted locally without a round trip.
	if ctx.Err() == nil && l.shouldTryValkey(now) {
		ds, err := l.allowValkey(ctx, checks, ps)
		if err == nil {
			l.healthy(ctx, now)
			l.count(ds[len(ds)-1])
			return ds, nil
		}
		// A caller that gave up, or whose deadline was shorter than the
		// timeout, says nothing about Valkey's health; either way the
		// request is counted locally, never let through uncounted.
		if ctx.Err() == nil {
			l.unhealthy(ctx, now, err)
		}
		now = l.now() // the failed call may have used up the timeout
	}
	ds := make([]limit.Decision, 0, len(checks))
	for i, c := range checks {
		d := l.local.allow(now, c.Key, ps[i])
		ds = append(ds, d)
		if !d.Allowed {
			break
		}
	}
	l.fallback.Inc()
	l.count(ds[len(ds)-1])
	return ds, nil
}

// Refund gives back one request's worth of c's budget, which AllowAll
// charged for a request that then turned out not to be the caller's (say,
// its token was revoked). It never fills a budget past full. Like Allow it
// falls back to the local limiter while Valkey is unreachable. It returns
// an error only for an invalid limit or when ctx is done before Valkey
// answers; the refund is the owner's, so a caller may pass a ctx that a
// request's end does not cancel.
func (l *Limiter) Refund(ctx context.Context, c limit.Check) error {
	p, err := params(c.Limit)
	if err != nil {
		return err
	}
	now := l.now()
	if l.shouldTryValkey(now) {
		vctx, cancel := context.WithTimeout(ctx, l.timeout)
		err := refundScript.Exec(vctx, l.client, []string{l.prefix + c.Key},
			[]string{strconv.FormatInt(p.interval.Microseconds(), 10)}).Error()
		cancel()
		if err == nil {
			return nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("rate limit refund: %w", ctxErr)
		}
		l.unhealthy(ctx, now, err)
	}
	l.local.refund(l.now(), c.Key, p)
	return nil
}

// refundScript moves a key's theoretical arrival time back by one emission
// interval, deleting the key once its bucket is full.
//
// KEYS[1] key; ARGV[1] emission interval (µs).
var refundScript = valkey.NewLuaScript(`
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new_tat = tat - tonumber(ARGV[1])
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
end
return 1`)

// shouldTryValkey reports whether this call should go to Valkey. During an
// outage only one call per retry interval probes it, so a dead or stalled
// server does not add a timeout to every request.
func (l *Limiter) shouldTryValkey(now time.Time) bool {
	at := l.probeAt.Load()
	if at == 0 {
		return true
	}
	n := now.UnixNano()
	if n < at {
		return false
	}
	return l.probeAt.CompareAndSwap(at, n+int64(l.retryInterval))
}

// healthy records that a call begun at start was answered by Valkey.
func (l *Limiter) healthy(ctx context.Context, start time.Time) {
	if l.probeAt.Load() == 0 && !l.degraded.Load() {
		return // the hot path: no shared writes
	}
	if start.UnixNano() < l.failedAt.Load() {
		// In flight since before the latest failure; says nothing about now.
		return
	}
	l.probeAt.Store(0)
	if l.degraded.CompareAndSwap(true, false) {
		l.outage.Recovered(ctx, "rate limiter using Valkey again")
	}
}

// unhealthy records that a call begun at start failed with err. During an
// outage only the probes fail (one per retry interval), and the log says so
// at most once per outage.Interval.
func (l *Limiter) unhealthy(ctx context.Context, start time.Time, err error) {
	l.failedAt.Store(start.UnixNano())
	l.probeAt.Store(start.UnixNano() + int64(l.retryInterval))
	l.degraded.Store(true)
	l.outage.Failed(ctx, err)
}

func (l *Limiter) count(d limit.Decision) {
	if d.Allowed {
		l.allowed.Inc()
	} else {
		l.refused.Inc()
	}
}

// gcraScript is gcra (gcra.go) run inside Valkey over one or more keys, each
// holding its theoretical arrival time in microseconds since the epoch. It
// reads the server's clock, so replicas with skewed clocks agree, and expires
// a key when its bucket is full again, so idle keys vanish. Keys are checked
// in order and the first refusal ends the script, as separate calls would.
//
// Microseconds keep every value below 2^53, exact in Lua's doubles;
// string.format('%d') stores the integer, which tostring would turn into
// 1.8e+15.
//
// The script is retryable: valkey-go then retries it, within the call's
// timeout, on a connection that broke (say, a pooled connection left stale by
// a Valkey restart) instead of failing over to local limits for nothing. A
// reply lost after the script ran costs one extra request of budget.
//
// KEYS[i] key i; ARGV[2i-1] its emission interval (µs); ARGV[2i] its burst.
// Returns, for each key checked, {allowed (0|1), remaining, retry after (µs),
// reset after (µs)}, flattened.
var gcraScript = valkey.NewLuaScriptRetryable(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst_offset = interval * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local diff = now - (new_tat - burst_offset)
  if diff < 0 then
    table.insert(out, 0); table.insert(out, 0); table.insert(out, -diff); table.insert(out, tat - now)
    return out
  end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  table.insert(out, 1); table.insert(out, math.floor(diff / interval)); table.insert(out, 0); table.insert(out, new_tat - now)
end
return out
`)

func (l *Limiter) allowValkey(ctx context.Context, checks []limit.Check, ps []gcraParams) ([]limit.Decision, error) {
	// Skip the extra context when the caller's deadline is already tighter.
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > l.timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.timeout)
		defer cancel()
	}
	keys := make([]string, len(checks))
	args := make([]string, 0, 2*len(checks))
	for i, c := range checks {
		keys[i] = l.prefix + c.Key
		args = append(args, strconv.FormatInt(ps[i].interval.Microseconds(), 10), strconv.Itoa(ps[i].burst))
	}
	vals, err := gcraScript.Exec(ctx, l.client, keys, args).ToArray()
	if err != nil {
		return nil, fmt.Errorf("rate limit script: %w", err)
	}
	if len(vals) == 0 || len(vals)%4 != 0 || len(vals) > 4*len(checks) {
		return nil, fmt.Errorf("rate limit script: %d values for %d keys", len(vals), len(checks))
	}
	ds := make([]limit.Decision, len(vals)/4)
	for i := range ds {
		var n [4]int64
		for j := range n {
			if n[j], err = vals[4*i+j].AsInt64(); err != nil {
				return nil, fmt.Errorf("rate limit script: value %d: %w", 4*i+j, err)
			}
		}
		ds[i] = limit.Decision{
			Allowed:    n[0] == 1,
			Limit:      ps[i].burst,
			Remaining:  int(n[1]),
			RetryAfter: time.Duration(n[2]) * time.Microsecond,
			ResetAfter: time.Duration(n[3]) * time.Microsecond,
		}
	}
	if last := ds[len(ds)-1]; last.Allowed && len(ds) != len(checks) {
		return nil, fmt.Errorf("rate limit script: stopped after %d of %d keys without a refusal", len(ds), len(checks))
	}
	return ds, nil
}

// register registers c, or returns the collector already registered under
// its name (two Limiters in one process share their metrics).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// A different metric under our name is a wiring bug, as MustRegister treats it.
		panic(fmt.Sprintf("ratelimit: register metrics: %v", err))
	}
	return c
}
