// Package outage logs a failing dependency (Valkey, PostgreSQL) the way an
// operator wants to read it while every request keeps failing: the first
// failure at once, then at most one line per Interval, each saying how many
// failures it stands for, and one line when the dependency answers again.
// A flood of requests (a load spike, an HTTP/2 rapid reset) during an outage
// then costs a few lines, not one per request.
package outage

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// Interval is the least time between two failure lines of one Log.
const Interval = 10 * time.Second

// Log reports the failures of one dependency as one caller sees them (the
// rate limiter's Valkey calls, the revocation checks, the page cache). It
// is safe for concurrent use; a failure that is not logged costs a clock
// read and a few atomic operations.
type Log struct {
	log *slog.Logger
	msg string
	now func() time.Time

	pending atomic.Int64 // failures not yet in a line
	next    atomic.Int64 // unix nanoseconds before which failures are only counted
	failing atomic.Bool  // a failure line went out and no recovery line since
}

// New returns a Log that writes msg to log (nil discards) for failures,
// reading the time from now (nil for time.Now).
func New(log *slog.Logger, msg string, now func() time.Time) *Log {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Log{log: log, msg: msg, now: now}
}

// Failed counts a failure with err. It is logged, as a warning with the
// number of failures since the previous line (this one included), unless a
// line went out less than Interval ago.
func (l *Log) Failed(ctx context.Context, err error) {
	l.pending.Add(1)
	now := l.now().UnixNano()
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(Interval)) {
		return
	}
	l.failing.Store(true)
	l.log.WarnContext(ctx, l.msg, slog.String("error", err.Error()), slog.Int64("failures", l.pending.Swap(0)))
}

// Recovered reports that the dependency answered. After a failure line it
// logs msg once, with the failures counted since that line; otherwise it
// costs one atomic load. It does not shorten the interval, so a dependency
// that fails every other call still gets at most two lines per Interval.
func (l *Log) Recovered(ctx context.Context, msg string) {
	if !l.failing.Load() || !l.failing.CompareAndSwap(true, false) {
		return
	}
	l.log.InfoContext(ctx, msg, slog.Int64("unlogged_failures", l.pending.Swap(0)))
}
