package conversation

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// watchPageSize bounds how many stored messages a watch reads at once while
// it catches up, so a long history streams in steps.
const watchPageSize = 200

// Hub fans the new messages of conversations out to this replica's
// watchers, reading each conversation's new rows once for all of them.
type Hub interface {
	// Subscribe follows conversation id, whose last_seq was lastSeq when the
	// caller checked access.
	Subscribe(id uuid.UUID, lastSeq int64) Subscription
}

// Subscription is one watcher's view of a conversation in the Hub.
type Subscription interface {
	// Ready receives a value whenever messages newer than those seen may
	// have arrived, or the conversation was deleted.
	Ready() <-chan struct{}
	// Since returns the hub's buffered messages with seq > after, in order,
	// starting at after+1, or none when the buffer does not reach back that
	// far. latest is the highest seq known committed; gone reports that the
	// conversation was deleted.
	Since(after int64) (msgs []Message, latest int64, gone bool)
	// Close stops following; Ready is not signalled afterwards.
	Close()
}

// Watch is one WatchMessages stream: it yields every message with seq past
// its position, in order, without gaps or duplicates. It is not safe for
// concurrent use.
type Watch struct {
	store Store
	sub   Subscription
	id    uuid.UUID
	pos   int64
}

// WatchMessages checks that p may read conversation id and starts a watch
// after afterSeq. The caller loops: Next until it returns no messages, then
// wait for Ready; and closes the watch when done.
func (s *Service) WatchMessages(ctx context.Context, p auth.Principal, id uuid.UUID, afterSeq int64) (*Watch, error) {
	scope, err := scopeOf(p)
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
	return &Watch{store: s.store, sub: s.hub.Subscribe(id, h.LastSeq), id: id, pos: afterSeq}, nil
}

// Ready receives a value when Next may have more to return.
func (w *Watch) Ready() <-chan struct{} { return w.sub.Ready() }

// Position is the seq of the last message Next returned (or the watch's
// after_seq).
func (w *Watch) Position() int64 { return w.pos }

// Next returns the next messages in seq order, or none when the watch is
// caught up. Messages the hub still buffers are shared; older ones (a new
// watch catching up, or one that fell behind) are read from the store. It
// returns ErrNotFound once the conversation is deleted.
func (w *Watch) Next(ctx context.Context) ([]Message, error) {
	msgs, latest, gone := w.sub.Since(w.pos)
	if gone {
		return nil, ErrNotFound
	}
	if len(msgs) == 0 {
		if latest <= w.pos {
			return nil, nil
		}
		var err error
		msgs, err = w.store.ListMessages(ctx, MessageRange{
			ConversationID: w.id, Order: OrderOldestFirst,
			After: w.pos, Before: latest + 1, Limit: watchPageSize,
		})
		if err != nil {
			return nil, err
		}
		// Every seq up to latest is committed and messages are only ever
		// removed with their conversation.
		if len(msgs) == 0 {
			return nil, ErrNotFound
		}
	}
	if msgs[0].Seq != w.pos+1 {
		return nil, fmt.Errorf("watch %s: next seq %d after %d", w.id, msgs[0].Seq, w.pos)
	}
	if len(msgs) > watchPageSize {
		msgs = msgs[:watchPageSize]
	}
	w.pos = msgs[len(msgs)-1].Seq
	return msgs, nil
}

// Close ends the watch.
func (w *Watch) Close() { w.sub.Close() }
