package conversation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/outage"
)

const (
	// watchPageSize bounds how many stored messages a watch reads at once
	// while it catches up, so a long history streams in steps.
	watchPageSize = 200
	// DefaultSessionCheck is how often an open watch asks Sessions whether
	// its caller's token was revoked, when Options leaves it zero.
	DefaultSessionCheck = 15 * time.Second
)

// Sessions tells an open watch whether its caller is still signed in:
// account.Service implements it. A watch is authenticated when it opens and
// may then run for as long as its token lives, so a Logout or a refresh
// token's reuse on any replica must reach it too.
type Sessions interface {
	// CheckRevoked returns an error wrapping auth.ErrUnauthenticated if p's
	// token, or the refresh family it was issued from, was revoked, and
	// another error if that cannot be checked now.
	CheckRevoked(ctx context.Context, p auth.Principal) error
}

// Watch is one WatchMessages stream: it yields every message with seq past
// its position, in order, without gaps or duplicates, and says when the
// stream must end. It is not safe for concurrent use.
type Watch = watch[Message]

// ItemWatch is one WatchItems stream, with Watch's rules for items.
type ItemWatch = watch[Item]

// watch is a stream of the entries of one feed.
type watch[T entry] struct {
	src source[T]
	sub *subscription[T]
	id  uuid.UUID
	pos int64

	p        auth.Principal
	sessions Sessions
	every    time.Duration
	// checkAt is when sessions is asked next.
	checkAt time.Time
	failed  *outage.Log
}

// WatchMessages checks that p may read conversation id and starts a watch
// after afterSeq. The caller loops: Next until it returns no messages, then
// wait for Ready or Due; and closes the watch when done.
func (s *Service) WatchMessages(ctx context.Context, p auth.Principal, id uuid.UUID, afterSeq int64) (*Watch, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return nil, err
	}
	if afterSeq < 0 {
		return nil, invalid("after_seq must not be negative")
	}
	if s.hub == nil {
		return nil, fmt.Errorf("watch messages: no hub configured")
	}
	h, err := s.store.Head(ctx, id, scope)
	if err != nil {
		return nil, err
	}
	return newWatch(s, s.hub.feed, id, afterSeq, h.LastSeq, p), nil
}

// newWatch starts a watch of f's conversation id after afterSeq, for p,
// whose access was checked when its last seq was lastSeq.
func newWatch[T entry](s *Service, f *feed[T], id uuid.UUID, afterSeq, lastSeq int64, p auth.Principal) *watch[T] {
	return &watch[T]{
		src: f.src, sub: f.subscribe(id, lastSeq), id: id, pos: afterSeq,
		p: p, sessions: s.sessions, every: s.sessionCheck,
		checkAt: time.Now().Add(s.sessionCheck), failed: s.sessionCheckFailed,
	}
}

// Ready receives a value when Next may have more to return, or the stream
// may have to end.
func (w *watch[T]) Ready() <-chan struct{} { return w.sub.ready }

// Due is when Next must be called even if Ready does not receive: the
// token's expiry or its next revocation check. It is zero when neither
// applies.
func (w *watch[T]) Due() time.Time {
	var t time.Time
	if w.sessions != nil {
		t = w.checkAt
	}
	if exp := w.p.ExpiresAt; !exp.IsZero() && (t.IsZero() || exp.Before(t)) {
		t = exp
	}
	return t
}

// Position is the seq of the last message Next returned (or the watch's
// after_seq).
func (w *watch[T]) Position() int64 { return w.pos }

// Next returns the next messages in seq order, or none when the watch is
// caught up. Messages the hub still buffers are shared; older ones (a new
// watch catching up, or one that fell behind) are read from the store.
//
// Next returns an error when the stream must end: ErrDraining once the
// replica drains, ErrTokenExpired once the caller's token has expired,
// ErrTokenRevoked once Sessions reports it revoked, and ErrNotFound once
// the conversation is deleted. The checks that fall due come first on
// every call, so a busy stream is held to them too.
func (w *watch[T]) Next(ctx context.Context) ([]T, error) {
	if err := w.check(ctx, time.Now()); err != nil {
		return nil, err
	}
	msgs, latest, gone := w.sub.since(w.pos)
	if gone {
		return nil, ErrNotFound
	}
	if len(msgs) == 0 {
		if latest <= w.pos {
			return nil, nil
		}
		var err error
		msgs, err = w.src.between(ctx, w.id, w.pos, latest+1, watchPageSize)
		if err != nil {
			return nil, err
		}
		// Every seq up to latest is committed and messages are only ever
		// removed with their conversation.
		if len(msgs) == 0 {
			return nil, ErrNotFound
		}
	}
	if msgs[0].seqOf() != w.pos+1 {
		return nil, fmt.Errorf("watch %s: next seq %d after %d", w.id, msgs[0].seqOf(), w.pos)
	}
	if len(msgs) > watchPageSize {
		msgs = msgs[:watchPageSize]
	}
	w.pos = msgs[len(msgs)-1].seqOf()
	return msgs, nil
}

// check ends a watch whose replica drains, or whose token expired or was
// revoked after the watch opened. When revocation cannot be checked, the
// watch, authenticated at its start, goes on until the next check.
func (w *watch[T]) check(ctx context.Context, now time.Time) error {
	if w.sub.hub.draining.Load() {
		return ErrDraining
	}
	if exp := w.p.ExpiresAt; !exp.IsZero() && !now.Before(exp) {
		return ErrTokenExpired
	}
	if w.sessions == nil || now.Before(w.checkAt) {
		return nil
	}
	w.checkAt = now.Add(w.every)
	err := w.sessions.CheckRevoked(ctx, w.p)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, auth.ErrUnauthenticated):
		return ErrTokenRevoked
	case ctx.Err() == nil:
		w.failed.Failed(ctx, err)
	}
	return nil
}

// Close ends the watch.
func (w *watch[T]) Close() { w.sub.close() }
