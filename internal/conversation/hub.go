package conversation

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// How a replica's watches learn of new messages: after each committed change
// the Service tells its own Hub at once and the other replicas through its
// Notifier (one Valkey channel), whose subscriber passes every change to its
// Hub. Per conversation, the Hub reads the new rows from the Store once per
// change and shares them among that conversation's watches. A change is only
// a hint: the Store fills gaps by seq, and a slow periodic re-check of every
// watched conversation's last_seq (one query) catches what lost
// notifications missed.

const (
	// fetchLimit is how many new messages one read takes; a burst larger
	// than this is read in several.
	fetchLimit = 200
	// bufferMessages and bufferBytes bound the recent messages a topic keeps
	// for its watchers that have not read them yet. A watcher that falls
	// further behind reads from PostgreSQL instead.
	bufferMessages = 256
	bufferBytes    = 4 << 20
	// fetchTimeout bounds one read of new messages or last seqs.
	fetchTimeout = 10 * time.Second
	// recheckBatch bounds the ids of one re-check query.
	recheckBatch = 5000
)

// entry is what a feed carries: a message or an item, numbered by seq.
type entry interface {
	seqOf() int64
	// size is what the entry counts for in the topic's byte bound.
	size() int
}

func (m Message) seqOf() int64 { return m.Seq }
func (m Message) size() int    { return len(m.Content) }
func (it Item) seqOf() int64   { return it.Seq }
func (it Item) size() int      { return len(it.Payload) }

// source is what a feed reads: newer is the read after a change (up to
// limit entries after seq after, the conversation's last seq, and whether
// it exists), lastSeqs the periodic re-check, between the catch-up of a
// watch that fell behind (no access check).
type source[T entry] interface {
	newer(ctx context.Context, id uuid.UUID, after int64, limit int) ([]T, int64, bool, error)
	lastSeqs(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]int64, error)
	between(ctx context.Context, id uuid.UUID, after, before int64, limit int) ([]T, error)
}

// messageSource reads a Store's messages.
type messageSource struct{ store Store }

func (s messageSource) newer(ctx context.Context, id uuid.UUID, after int64, limit int) ([]Message, int64, bool, error) {
	return s.store.NewMessages(ctx, id, after, limit)
}

func (s messageSource) lastSeqs(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]int64, error) {
	return s.store.LastSeqs(ctx, ids)
}

func (s messageSource) between(ctx context.Context, id uuid.UUID, after, before int64, limit int) ([]Message, error) {
	return s.store.ListMessages(ctx, MessageRange{ConversationID: id, Order: OrderOldestFirst, After: after, Before: before, Limit: limit})
}

// itemSource reads an ItemStore's items.
type itemSource struct{ store ItemStore }

func (s itemSource) newer(ctx context.Context, id uuid.UUID, after int64, limit int) ([]Item, int64, bool, error) {
	return s.store.NewItems(ctx, id, after, limit)
}

func (s itemSource) lastSeqs(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]int64, error) {
	return s.store.LastItemSeqs(ctx, ids)
}

func (s itemSource) between(ctx context.Context, id uuid.UUID, after, before int64, limit int) ([]Item, error) {
	// The catch-up reads only committed seqs (up to before), which are
	// never removed but with their conversation.
	items, _, _, err := s.store.NewItems(ctx, id, after, limit)
	n := 0
	for n < len(items) && items[n].Seq < before {
		n++
	}
	return items[:n], err
}

// Hub fans the new messages of conversations out to this replica's
// watches, reading each conversation's new rows once for all of them. It
// learns of changes from Changed (this replica's saves and the Notifier's
// subscription) and from Recheck.
type Hub struct{ *feed[Message] }

// NewHub returns a Hub reading from store.
func NewHub(store Store, log *slog.Logger) *Hub {
	return &Hub{newFeed[Message](messageSource{store}, log)}
}

// ItemHub is the Hub of items: it fans the new items of conversations out
// to this replica's WatchItems streams, on its own Notifier.
type ItemHub struct{ *feed[Item] }

// NewItemHub returns an ItemHub reading from store.
func NewItemHub(store ItemStore, log *slog.Logger) *ItemHub {
	return &ItemHub{newFeed[Item](itemSource{store}, log)}
}

// feed is a Hub of entries of one kind.
type feed[T entry] struct {
	src source[T]
	log *slog.Logger
	// draining is set by Drain: every watch ends with ErrDraining.
	draining atomic.Bool

	mu     sync.Mutex
	topics map[uuid.UUID]*topic[T]
}

func newFeed[T entry](src source[T], log *slog.Logger) *feed[T] {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &feed[T]{src: src, log: log, topics: make(map[uuid.UUID]*topic[T])}
}

// topic is one watched conversation: the entries read for its watchers,
// contiguous and ending at fetched.
type topic[T entry] struct {
	id uuid.UUID

	mu       sync.Mutex
	fetched  int64
	buf      []T
	bufBytes int
	gone     bool
	// pending is the highest last seq announced; check asks for a read even
	// when nothing newer was announced (a deletion or a new topic).
	pending  int64
	check    bool
	fetching bool
	watchers map[*subscription[T]]struct{}
}

// subscription is one watcher of a topic.
type subscription[T entry] struct {
	hub   *feed[T]
	topic *topic[T]
	// ready receives a value whenever entries newer than those seen may
	// have arrived, the conversation was deleted or the hub drains.
	ready chan struct{}
	// read is the seq up to which the watcher has everything (guarded by
	// the topic's mu): the topic need not keep those entries for it.
	read int64
}

// subscribe follows conversation id, whose last_seq was lastSeq when the
// caller checked access.
func (h *feed[T]) subscribe(id uuid.UUID, lastSeq int64) *subscription[T] {
	h.mu.Lock()
	t, ok := h.topics[id]
	if !ok {
		t = &topic[T]{id: id, fetched: lastSeq, pending: lastSeq, watchers: make(map[*subscription[T]]struct{})}
		h.topics[id] = t
	}
	s := &subscription[T]{hub: h, topic: t, ready: make(chan struct{}, 1), read: lastSeq}
	t.mu.Lock()
	t.watchers[s] = struct{}{}
	t.mu.Unlock()
	h.mu.Unlock()
	// A new topic looks once at once: a turn committed between the caller's
	// read of lastSeq and this moment was announced to nobody here.
	h.changed(t, lastSeq, !ok)
	return s
}

// Changed tells the hub that conversation id's last_seq is now lastSeq, or
// that it was deleted (lastSeq < 0). A change to an unwatched conversation
// costs a map lookup.
func (h *feed[T]) Changed(id uuid.UUID, lastSeq int64) {
	h.mu.Lock()
	t := h.topics[id]
	h.mu.Unlock()
	if t != nil {
		h.changed(t, lastSeq, lastSeq < 0)
	}
}

// Drain ends every watch of this replica, open or opened later, with
// ErrDraining, so that clients reconnect to another replica.
func (h *feed[T]) Drain() {
	h.draining.Store(true)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range h.topics {
		t.mu.Lock()
		t.wakeLocked()
		t.mu.Unlock()
	}
}

// Watched returns how many conversations have watches here.
func (h *feed[T]) Watched() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.topics)
}

// Recheck compares every watched conversation's last_seq in PostgreSQL with
// what the hub has read, in one query per recheckBatch conversations, and
// reads what notifications missed.
func (h *feed[T]) Recheck(ctx context.Context) error {
	h.mu.Lock()
	ids := make([]uuid.UUID, 0, len(h.topics))
	for id := range h.topics {
		ids = append(ids, id)
	}
	h.mu.Unlock()
	for len(ids) > 0 {
		batch := ids[:min(len(ids), recheckBatch)]
		ids = ids[len(batch):]
		qctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		last, err := h.src.lastSeqs(qctx, batch)
		cancel()
		if err != nil {
			return err
		}
		for _, id := range batch {
			seq, ok := last[id]
			if !ok {
				seq = -1
			}
			h.Changed(id, seq)
		}
	}
	return nil
}

// RunRecheck calls Recheck every interval, and whenever kick receives, until
// ctx is done.
func (h *feed[T]) RunRecheck(ctx context.Context, interval time.Duration, kick <-chan struct{}) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-kick:
		}
		if err := h.Recheck(ctx); err != nil && ctx.Err() == nil {
			h.log.WarnContext(ctx, "watch: re-check failed", slog.String("error", err.Error()))
		}
	}
}

// changed records a change and starts a read unless one is running (it
// will pick the change up) or there is nothing to read.
func (h *feed[T]) changed(t *topic[T], lastSeq int64, check bool) {
	t.mu.Lock()
	if t.gone {
		t.mu.Unlock()
		return
	}
	t.pending = max(t.pending, lastSeq)
	t.check = t.check || check
	start := !t.fetching && (t.check || t.pending > t.fetched)
	t.fetching = t.fetching || start
	t.mu.Unlock()
	if start {
		go h.fetch(t)
	}
}

// fetch reads the topic's new messages until it has read every change
// announced, and wakes its watchers after each read. One fetch runs per
// topic at a time, whatever the number of watchers and changes.
func (h *feed[T]) fetch(t *topic[T]) {
	for {
		t.mu.Lock()
		if t.gone || (!t.check && t.pending <= t.fetched) {
			t.fetching = false
			t.mu.Unlock()
			return
		}
		t.check = false
		after, announced := t.fetched, t.pending
		t.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
		msgs, last, exists, err := h.src.newer(ctx, t.id, after, fetchLimit)
		cancel()

		t.mu.Lock()
		switch {
		case err != nil:
			// Leave it to the next change or re-check.
			t.fetching = false
			t.mu.Unlock()
			h.log.Warn("watch: read new messages", slog.String("conversation_id", t.id.String()), slog.String("error", err.Error()))
			return
		case !exists:
			t.gone = true
			t.fetching = false
			t.buf, t.bufBytes = nil, 0
			t.wakeLocked()
			t.mu.Unlock()
			return
		case len(msgs) > 0 && msgs[0].seqOf() == t.fetched+1:
			t.appendLocked(msgs)
			t.pending = max(t.pending, last)
			t.wakeLocked()
		case t.pending == announced && !t.check:
			// Nothing new and no change announced during the read: every
			// change so far is read (one is only announced after its
			// commit).
			t.pending = t.fetched
			t.fetching = false
			t.mu.Unlock()
			return
		}
		t.mu.Unlock()
	}
}

// appendLocked adds msgs, which follow t.fetched, and drops from the front
// what every watcher has read and what exceeds the bounds. Without the
// first rule every watched conversation would keep its last bufferMessages
// messages for as long as it is watched: tens of megabytes on a replica
// watching a thousand busy conversations.
func (t *topic[T]) appendLocked(msgs []T) {
	floor := t.fetched
	for s := range t.watchers {
		floor = min(floor, s.read)
	}
	n, bytes := len(t.buf)+len(msgs), t.bufBytes
	for _, m := range msgs {
		bytes += m.size()
	}
	at := func(i int) *T {
		if i < len(t.buf) {
			return &t.buf[i]
		}
		return &msgs[i-len(t.buf)]
	}
	drop := 0
	for drop < n && ((*at(drop)).seqOf() <= floor || n-drop > bufferMessages || bytes > bufferBytes) {
		bytes -= (*at(drop)).size()
		drop++
	}
	switch {
	case drop == 0:
		t.buf = append(t.buf, msgs...)
	case drop >= len(t.buf):
		// msgs is the store's fresh slice: it becomes the buffer.
		t.buf = msgs[drop-len(t.buf):]
	default:
		// Copy rather than reslice so dropped messages can be collected;
		// watchers keep the old array as long as they need it.
		t.buf = append(append(make([]T, 0, n-drop), t.buf[drop:]...), msgs...)
	}
	t.bufBytes = bytes
	t.fetched = msgs[len(msgs)-1].seqOf()
}

func (t *topic[T]) wakeLocked() {
	for s := range t.watchers {
		select {
		case s.ready <- struct{}{}:
		default:
		}
	}
}

// since returns the topic's buffered messages with seq > after, in order,
// starting at after+1, or none when the buffer does not reach back that
// far; latest is the highest seq known committed, and gone reports that the
// conversation was deleted. The returned slice shares the topic's array; it
// is capped so that appends by the caller cannot write into it, and the
// topic never changes elements it has handed out.
func (s *subscription[T]) since(after int64) (msgs []T, latest int64, gone bool) {
	t := s.topic
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gone {
		return nil, 0, true
	}
	s.read = max(s.read, after)
	if after >= t.fetched || len(t.buf) == 0 || t.buf[0].seqOf() > after+1 {
		return nil, t.fetched, false
	}
	i := int(after + 1 - t.buf[0].seqOf())
	return t.buf[i:len(t.buf):len(t.buf)], t.fetched, false
}

// close stops following; ready is not signalled afterwards.
func (s *subscription[T]) close() {
	h, t := s.hub, s.topic
	h.mu.Lock()
	defer h.mu.Unlock()
	t.mu.Lock()
	delete(t.watchers, s)
	empty := len(t.watchers) == 0
	t.mu.Unlock()
	if empty && h.topics[t.id] == t {
		delete(h.topics, t.id)
	}
}
