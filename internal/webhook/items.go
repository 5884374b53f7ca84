package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
)

// conversation.items_appended is batched: the store records, in each
// append's transaction, that a conversation's items were appended (only
// when the owner has an endpoint taking the type, so others pay no
// write), and a Flusher on every replica turns each batch into events once
// it is due.
const (
	// ItemsWindow is how long a batch gathers appends before it is
	// announced: a live agent appends a turn's few items over a few
	// seconds, so a receiver hears once per turn or so rather than once
	// per append, and never more than this late.
	ItemsWindow = 5 * time.Second
	// MaxItemsPerEvent bounds the items one event announces: a batch that
	// reaches it is due at once, and a longer one (a merged session report,
	// a backlog) goes out in events of this many. The ids fit one event
	// many times over, and one ListItems page (at most 200) reads them.
	MaxItemsPerEvent = 100
)

// ItemBatch is a conversation's appended items not yet announced: seqs
// FirstSeq to LastSeq, the first of them appended at OpenedAt. Each append
// extends its conversation's batch under the conversation's row lock, so
// the seqs are contiguous, and each is announced exactly once.
type ItemBatch struct {
	ConversationID uuid.UUID
	UserID         uuid.UUID
	FirstSeq       int64
	LastSeq        int64
	OpenedAt       time.Time
}

// Len is how many items b holds.
func (b ItemBatch) Len() int64 { return b.LastSeq - b.FirstSeq + 1 }

// DueAt is when b is announced: ItemsWindow after it opened, or at once
// (when it opened) if it holds MaxItemsPerEvent. The append statement
// computes the same from the same constants.
func (b ItemBatch) DueAt() time.Time {
	if b.Len() >= MaxItemsPerEvent {
		return b.OpenedAt
	}
	return b.OpenedAt.Add(ItemsWindow)
}

// Next splits a due batch into the items its next event announces (the
// first MaxItemsPerEvent) and the rest, which stays pending with the same
// OpenedAt; more is false when nothing is left.
func (b ItemBatch) Next() (head, rest ItemBatch, more bool) {
	if b.Len() <= MaxItemsPerEvent {
		return b, ItemBatch{}, false
	}
	head, rest = b, b
	head.LastSeq = b.FirstSeq + MaxItemsPerEvent - 1
	rest.FirstSeq = head.LastSeq + 1
	return head, rest, true
}

// AppendedItem names one announced item.
type AppendedItem struct {
	ID string `json:"id"`
	// Type is the item's type as livekit-agents names it: message,
	// function_call, function_call_output, agent_handoff or
	// agent_config_update.
	Type string `json:"type"`
}

// ItemsAppendedData is the data of conversation.items_appended: seqs
// FirstSeq to LastSeq of the conversation were appended. A conversation's
// consecutive events cover contiguous ranges, none twice; receivers read
// the items with ListItems after FirstSeq-1.
type ItemsAppendedData struct {
	ConversationID uuid.UUID      `json:"conversation_id"`
	FirstSeq       int64          `json:"first_seq"`
	LastSeq        int64          `json:"last_seq"`
	ItemCount      int64          `json:"item_count"`
	Items          []AppendedItem `json:"items"`
}

// NewItemsAppendedEvent returns the event announcing b (a head from Next,
// so at most MaxItemsPerEvent items), whose items are items in seq order,
// at now.
func NewItemsAppendedEvent(b ItemBatch, items []AppendedItem, now time.Time) (Event, error) {
	if items == nil {
		items = []AppendedItem{} // a conversation deleted meanwhile has none left
	}
	data, err := json.Marshal(ItemsAppendedData{
		ConversationID: b.ConversationID, FirstSeq: b.FirstSeq, LastSeq: b.LastSeq, ItemCount: b.Len(), Items: items,
	})
	if err != nil {
		return Event{}, fmt.Errorf("%s event: %w", ItemsAppended, err)
	}
	return NewEvent(b.UserID, ItemsAppended, data, now)
}

// ItemBatches is the store's pending batches of appended items.
type ItemBatches interface {
	// FlushItemBatches takes up to limit batches due at now that no other
	// flusher holds and, for each, in one transaction with the change to
	// the batch, writes the event of its Next head to the outbox
	// (NewItemsAppendedEvent) and keeps the rest pending, due at its
	// DueAt, or deletes the batch. It returns how many events it wrote;
	// a batch that fails stays pending, the pass goes on with the
	// others, and the failures are returned with the count.
	FlushItemBatches(ctx context.Context, now time.Time, limit int) (int, error)
}

// FlusherOptions tune a Flusher. Zero fields take the defaults.
type FlusherOptions struct {
	// Batch is how many batches one pass takes (default 20).
	Batch int
	// Poll is the pause between passes that found nothing due (default
	// 1s, so an event goes out at most that long after ItemsWindow).
	Poll time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Flusher turns due batches of appended items into
// conversation.items_appended events. Every replica runs one, beside its
// Dispatcher; the store gives each batch to one flusher at a time.
type Flusher struct {
	batches ItemBatches
	opts    FlusherOptions
}

// NewFlusher returns a Flusher of batches.
func NewFlusher(batches ItemBatches, opts FlusherOptions) *Flusher {
	if opts.Batch <= 0 {
		opts.Batch = 20
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Flusher{batches: batches, opts: opts}
}

// Run flushes until ctx ends, then returns nil.
func (f *Flusher) Run(ctx context.Context) error {
	runPasses(ctx, f.opts.Poll, f.opts.Log, "webhook items flush failed", f.RunOnce)
	return nil
}

// RunOnce flushes one pass of due batches and returns how many events it
// wrote.
func (f *Flusher) RunOnce(ctx context.Context) (int, error) {
	n, err := f.batches.FlushItemBatches(ctx, f.opts.Now(), f.opts.Batch)
	if err != nil {
		return n, fmt.Errorf("flush item batches: %w", err)
	}
	return n, nil
}
