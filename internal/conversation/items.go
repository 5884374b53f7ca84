package conversation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// A conversation is also an ordered list of chat items of every kind, after
// LiveKit's ChatContext: its messages are the text messages among them.
// Items have their own gap-free seq; a user, assistant or system message
// with text also gets a Message, with its own seq among the messages, so
// that ListMessages and WatchMessages serve what they always served.

// ItemKind says what a chat item is. The values are stored in the database.
type ItemKind int16

// The kinds of chat item.
const (
	ItemMessage            ItemKind = 1
	ItemFunctionCall       ItemKind = 2
	ItemFunctionCallOutput ItemKind = 3
	ItemAgentHandoff       ItemKind = 4
	ItemAgentConfigUpdate  ItemKind = 5
)

// Type is the item's type as livekit-agents' ChatItem names it.
func (k ItemKind) Type() string {
	switch k {
	case ItemMessage:
		return "message"
	case ItemFunctionCall:
		return "function_call"
	case ItemFunctionCallOutput:
		return "function_call_output"
	case ItemAgentHandoff:
		return "agent_handoff"
	case ItemAgentConfigUpdate:
		return "agent_config_update"
	}
	return fmt.Sprintf("kind_%d", int16(k))
}

// RoleDeveloper is the role of developer instructions. Developer messages
// are items only: they never get a Message.
const RoleDeveloper Role = 4

// Bounds of AppendItems, each named in the error that enforces it.
const (
	MaxItemsPerBatch = 200
	MaxItemIDChars   = 128
	// MaxItemBytes bounds one item's payload.
	MaxItemBytes = 256 << 10
	// MaxBatchBytes bounds the payloads of one batch together, well under
	// the default request limit.
	MaxBatchBytes = 8 << 20
	MaxAgentChars = 128
	// MaxMessageIDChars bounds AppendItems' message_id.
	MaxMessageIDChars = 128
)

// turnItemPrefix starts the ids SaveTurn gives its items (the migration's
// parley_turn_item_id makes the same ones for the previous release's
// writes). Clients may not use it, so a turn never collides with an item.
const turnItemPrefix = "saveturn:"

// Item is one chat item of a conversation.
type Item struct {
	ConversationID uuid.UUID
	// Seq numbers the conversation's items 1, 2, 3, ... in commit order.
	Seq int64
	// ID is the client's item id (LiveKit's), unique in the conversation:
	// the exactly-once key of AppendItems.
	ID   string
	Kind ItemKind
	// Agent is the agent the item was appended by, "" when none was named.
	Agent string
	// MessageID is the AppendItems message_id or SaveTurn turn id.
	MessageID string
	// Role is set on messages only.
	Role Role
	// Text is a message's text, what its Message holds. It is only set on
	// items being appended.
	Text string
	// CallID pairs a function call with its output.
	CallID string
	// Payload is the item as the JSON of parley.v1.ChatContext.ChatItem,
	// made and read by the transport; the domain only bounds its size. It
	// is nil on SaveTurn's items before they are stored: the store writes
	// a plain text message's payload itself.
	Payload []byte
	// MessageSeq is the seq of the item's Message, 0 when it has none.
	MessageSeq int64
	StoredAt   time.Time
}

// hasMessage reports whether the item is also a Message.
func (it Item) hasMessage() bool {
	return it.Kind == ItemMessage && it.Text != "" &&
		(it.Role == RoleUser || it.Role == RoleAssistant || it.Role == RoleSystem)
}

// AppendItemsRequest is a batch of items to append to one conversation.
type AppendItemsRequest struct {
	ConversationID uuid.UUID
	// Agent and MessageID are kept on every item of the batch.
	Agent, MessageID string
	// Items need ID, Kind and Payload; messages Role and Text, function
	// calls and outputs CallID.
	Items []Item
}

// AppendedItems is AppendItems' answer.
type AppendedItems struct {
	// Items are the request's items as stored, in request order.
	Items []Item
	// Replayed is true when every item had been stored before and nothing
	// new was stored.
	Replayed bool
	// New counts the items this call stored; the others had been stored
	// before with the same content.
	New int
}

// ListItemsRequest selects one page of a conversation's items.
type ListItemsRequest struct {
	ConversationID uuid.UUID
	// PageSize is 0 for the default (50); at most 200.
	PageSize  int
	PageToken string
	// Order is 0 for the default (OrderNewestFirst).
	Order Order
	// Agent keeps only that agent's items; "" keeps all.
	Agent string
	// AfterSeq keeps only the items with a larger seq; 0 keeps all.
	AfterSeq int64
}

// ItemPage is one page of ListItems.
type ItemPage struct {
	ConversationID uuid.UUID
	Items          []Item
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// NewItem is an item for the store to append. The store assigns Seq,
// MessageSeq and StoredAt.
type NewItem struct {
	Item
	// MessageRowID is the id of the item's Message, uuid.Nil when the item
	// has none.
	MessageRowID uuid.UUID
}

// ItemBatch is what AppendItems asks the store to write.
type ItemBatch struct {
	// TurnID is set by SaveTurn: a turn id saved before stores nothing and
	// answers the turn's messages with Replayed set, as SaveTurn always did.
	TurnID string
	Items  []NewItem
	// KeepStored makes an id stored before with other content keep what is
	// stored, counted in StoredItems.Conflicting, instead of failing the
	// batch with ErrItemConflict (MergeItems).
	KeepStored bool
}

// StoredItems is the store's answer to AppendItems.
type StoredItems struct {
	// Items are the batch's items as stored, in batch order (none on a
	// replayed turn).
	Items []Item
	// Messages are the Messages of the batch's items, in seq order: new
	// ones, or a replayed turn's.
	Messages []Message
	Replayed bool
	// New counts the batch's items stored by this call; Conflicting those
	// a KeepStored batch found stored with other content.
	New, Conflicting int
}

// ItemRange selects a scoped page of a conversation's items by seq.
type ItemRange struct {
	ConversationID uuid.UUID
	Scope          Scope
	Order          Order
	// After and Before are exclusive bounds on seq; Before 0 is unbounded.
	After, Before int64
	// Agent keeps only that agent's items; "" keeps all.
	Agent string
	Limit int
}

// ItemStore is the persistence of items.
type ItemStore interface {
	// AppendItems appends b's new items with consecutive seqs, and the
	// Messages of those that have one, in one atomic write. Items whose id
	// is stored with the same payload are not stored again; one stored
	// with a different payload fails the batch with ErrItemConflict. When
	// every item was stored before, Replayed is set. When the owner has an
	// endpoint taking conversation.items_appended, the same write records
	// the new items for that event (webhook.ItemBatch).
	AppendItems(ctx context.Context, id uuid.UUID, s Scope, b ItemBatch) (StoredItems, error)
	// ListItems returns the items in r; ErrNotFound when the conversation
	// is outside r.Scope.
	ListItems(ctx context.Context, r ItemRange) ([]Item, error)
	// ItemHead returns the conversation's last_item_seq: WatchItems'
	// access check.
	ItemHead(ctx context.Context, id uuid.UUID, s Scope) (int64, error)
	// NewItems is the item hub's read after a change: up to limit items of
	// conversation id with seq > after, and its last_item_seq; exists is
	// false when it is gone. No access check.
	NewItems(ctx context.Context, id uuid.UUID, after int64, limit int) (items []Item, lastSeq int64, exists bool, err error)
	// LastItemSeqs is the item hub's re-check: the last_item_seq of each of
	// ids that still exists.
	LastItemSeqs(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]int64, error)
}

// ErrItemConflict is returned by AppendItems when an item id was stored
// before with different content.
var ErrItemConflict = errors.New("item id already used with different content")

// AppendItems appends a batch of items atomically, with consecutive seqs,
// exactly once per item id: a batch stored before answers as stored with
// Replayed set, and an id stored with different content is ErrItemConflict.
// Users append to their own conversations, agents to any.
func (s *Service) AppendItems(ctx context.Context, p auth.Principal, r AppendItemsRequest) (AppendedItems, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return AppendedItems{}, err
	}
	batch, err := itemBatch(r)
	if err != nil {
		return AppendedItems{}, err
	}
	stored, err := s.appendItems(ctx, r.ConversationID, scope, batch)
	if err != nil {
		return AppendedItems{}, err
	}
	return AppendedItems{Items: stored.Items, Replayed: stored.Replayed, New: stored.New}, nil
}

// MergedItems is MergeItems' answer, item by item: New were stored by it,
// Replayed were stored before with the same content, Conflicting before
// with other content, and kept as they were.
type MergedItems struct {
	New, Replayed, Conflicting int
}

// MergeItems appends any number of items by id, in order, in batches as
// large as AppendItems takes, each batch atomic: a history (a session
// report's) merging with what was appended live. Unlike AppendItems, an id
// stored with other content keeps the stored item and is counted rather
// than failing the merge.
func (s *Service) MergeItems(ctx context.Context, p auth.Principal, r AppendItemsRequest) (MergedItems, error) {
	var n MergedItems
	scope, err := ScopeOf(p)
	if err != nil {
		return n, err
	}
	for _, items := range mergeBatches(r.Items) {
		part := r
		part.Items = items
		batch, err := itemBatch(part)
		if err != nil {
			return n, err
		}
		batch.KeepStored = true
		stored, err := s.appendItems(ctx, r.ConversationID, scope, batch)
		if err != nil {
			return n, err
		}
		n.New += stored.New
		n.Conflicting += stored.Conflicting
		n.Replayed += len(items) - stored.New - stored.Conflicting
	}
	return n, nil
}

// mergeBatches cuts items, in order, into batches itemBatch takes: at most
// MaxItemsPerBatch items and MaxBatchBytes of payload, and no id twice (a
// history that repeats an id gets the later one replayed).
func mergeBatches(items []Item) [][]Item {
	var out [][]Item
	var cur []Item
	var bytes int
	ids := map[string]bool{}
	for _, it := range items {
		if len(cur) > 0 && (len(cur) == MaxItemsPerBatch || bytes+len(it.Payload) > MaxBatchBytes || ids[it.ID]) {
			out = append(out, cur)
			cur, bytes, ids = nil, 0, map[string]bool{}
		}
		cur = append(cur, it)
		bytes += len(it.Payload)
		ids[it.ID] = true
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// appendItems stores b and tells the caches and watches of what it stored
// before returning.
func (s *Service) appendItems(ctx context.Context, id uuid.UUID, scope Scope, b ItemBatch) (StoredItems, error) {
	stored, err := s.store.AppendItems(ctx, id, scope, b)
	if err != nil {
		return StoredItems{}, err
	}
	var lastMsg, lastItem int64
	for _, m := range stored.Messages {
		lastMsg = max(lastMsg, m.Seq)
	}
	for _, it := range stored.Items {
		lastItem = max(lastItem, it.Seq)
		lastMsg = max(lastMsg, it.MessageSeq)
	}
	if stored.Replayed {
		// The first attempt may have died between its commit and advancing
		// the head; the retry repairs it (AdvanceHead never moves back).
		if s.cache != nil && lastMsg > 0 {
			s.cache.AdvanceHead(context.WithoutCancel(ctx), id, lastMsg)
		}
		return stored, nil
	}
	// Side by side, so that the Valkey client sends them together.
	var notified sync.WaitGroup
	if lastItem > 0 {
		notified.Go(func() { s.notifyItems(ctx, id, lastItem) })
	}
	if lastMsg > 0 {
		s.advanceAndNotify(ctx, id, lastMsg)
	}
	notified.Wait()
	return stored, nil
}

// notifyItems tells this replica's item hub and the other replicas of new
// items. Like notify, it is not stopped by a caller that has gone.
func (s *Service) notifyItems(ctx context.Context, id uuid.UUID, lastSeq int64) {
	if s.itemHub != nil {
		s.itemHub.Changed(id, lastSeq)
	}
	if s.itemNotifier != nil {
		s.itemNotifier.Notify(context.WithoutCancel(ctx), id, lastSeq)
	}
}

// itemBatch checks r against the rules and returns the batch to store.
func itemBatch(r AppendItemsRequest) (ItemBatch, error) {
	switch {
	case len(r.Items) == 0:
		return ItemBatch{}, invalid("items must not be empty")
	case len(r.Items) > MaxItemsPerBatch:
		return ItemBatch{}, invalid(fmt.Sprintf("items: a batch may have at most %d items", MaxItemsPerBatch))
	case utf8.RuneCountInString(r.Agent) > MaxAgentChars || !utf8.ValidString(r.Agent):
		return ItemBatch{}, invalid(fmt.Sprintf("agent must be valid UTF-8 of at most %d characters", MaxAgentChars))
	case utf8.RuneCountInString(r.MessageID) > MaxMessageIDChars || !utf8.ValidString(r.MessageID):
		return ItemBatch{}, invalid(fmt.Sprintf("message_id must be valid UTF-8 of at most %d characters", MaxMessageIDChars))
	}
	b := ItemBatch{Items: make([]NewItem, len(r.Items))}
	seen := make(map[string]struct{}, len(r.Items))
	total := 0
	for i, it := range r.Items {
		if err := checkItem(i, it); err != nil {
			return ItemBatch{}, err
		}
		if _, dup := seen[it.ID]; dup {
			return ItemBatch{}, invalid(fmt.Sprintf("items[%d]: id %q appears twice in the batch", i, it.ID))
		}
		seen[it.ID] = struct{}{}
		total += len(it.Payload)
		if total > MaxBatchBytes {
			return ItemBatch{}, invalid(fmt.Sprintf("items: a batch may have at most %d bytes of items", MaxBatchBytes))
		}
		it.ConversationID, it.Agent, it.MessageID = r.ConversationID, r.Agent, r.MessageID
		it.Seq, it.MessageSeq, it.StoredAt = 0, 0, time.Time{}
		b.Items[i] = NewItem{Item: it}
		if it.hasMessage() {
			id, err := uuid.NewV7()
			if err != nil {
				return ItemBatch{}, fmt.Errorf("new message id: %w", err)
			}
			b.Items[i].MessageRowID = id
		}
	}
	return b, nil
}

// checkItem checks the rules of one client item, the i-th of its batch.
func checkItem(i int, it Item) error {
	switch n := utf8.RuneCountInString(it.ID); {
	case n == 0 || n > MaxItemIDChars || !utf8.ValidString(it.ID):
		return invalid(fmt.Sprintf("items[%d]: the item id must be 1 to %d characters of valid UTF-8", i, MaxItemIDChars))
	case strings.HasPrefix(it.ID, turnItemPrefix):
		return invalid(fmt.Sprintf("items[%d]: item ids starting with %q are reserved for SaveTurn", i, turnItemPrefix))
	case it.Kind < ItemMessage || it.Kind > ItemAgentConfigUpdate:
		return invalid(fmt.Sprintf("items[%d]: the item must be of one known kind", i))
	case len(it.Payload) == 0:
		return invalid(fmt.Sprintf("items[%d]: the item is empty", i))
	case len(it.Payload) > MaxItemBytes:
		return invalid(fmt.Sprintf("items[%d]: an item may have at most %d bytes", i, MaxItemBytes))
	}
	if it.Kind == ItemMessage {
		switch {
		case it.Role < RoleUser || it.Role > RoleDeveloper:
			return invalid(fmt.Sprintf("items[%d]: a message needs a role", i))
		case len(it.Text) > MaxMessageBytes:
			return invalid(fmt.Sprintf("items[%d]: a message may have at most %d bytes of text", i, MaxMessageBytes))
		case !utf8.ValidString(it.Text):
			return invalid(fmt.Sprintf("items[%d]: messages must be valid UTF-8", i))
		}
	}
	return nil
}

// TurnItems returns the batch SaveTurn stores for a turn's msgs: one
// message item each, with ids derived from the turn id (or the message id).
func TurnItems(id uuid.UUID, turnID string, msgs []NewMessage) ItemBatch {
	b := ItemBatch{TurnID: turnID, Items: make([]NewItem, len(msgs))}
	for i, m := range msgs {
		b.Items[i] = NewItem{
			Item: Item{
				ConversationID: id, ID: turnItemID(turnID, m), Kind: ItemMessage,
				MessageID: turnID, Role: m.Role, Text: m.Content,
			},
			MessageRowID: m.ID,
		}
	}
	return b
}

// turnItemID is the id of SaveTurn's item for m, as the migration's
// parley_turn_item_id makes it.
func turnItemID(turnID string, m NewMessage) string {
	if turnID == "" {
		return turnItemPrefix + m.ID.String()
	}
	role := "system"
	switch m.Role {
	case RoleUser:
		role = "user"
	case RoleAssistant:
		role = "assistant"
	}
	return turnItemPrefix + turnID + ":" + role
}

// ListItems returns one page of a conversation's items of every kind,
// keyset-paged on seq, optionally only one agent's.
func (s *Service) ListItems(ctx context.Context, p auth.Principal, r ListItemsRequest) (ItemPage, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return ItemPage{}, err
	}
	size, err := pageSizeOf(r.PageSize)
	if err != nil {
		return ItemPage{}, err
	}
	if utf8.RuneCountInString(r.Agent) > MaxAgentChars {
		return ItemPage{}, invalid(fmt.Sprintf("agent must be at most %d characters", MaxAgentChars))
	}
	order := r.Order
	switch order {
	case 0:
		order = OrderNewestFirst
	case OrderNewestFirst, OrderOldestFirst:
	default:
		return ItemPage{}, invalid("unknown order")
	}
	if r.AfterSeq < 0 {
		return ItemPage{}, invalid("after_seq must not be negative")
	}
	rng := ItemRange{ConversationID: r.ConversationID, Scope: scope, Order: order, Agent: r.Agent, After: r.AfterSeq, Limit: size + 1}
	if r.PageToken != "" {
		tok, err := decodeItemToken(r.PageToken)
		if err != nil {
			return ItemPage{}, err
		}
		if tok.Order != order {
			return ItemPage{}, ErrInvalidPageToken
		}
		if order == OrderNewestFirst {
			rng.Before = tok.Seq
		} else {
			rng.After = max(rng.After, tok.Seq)
		}
	}
	items, err := s.store.ListItems(ctx, rng)
	if err != nil {
		return ItemPage{}, err
	}
	page := ItemPage{ConversationID: r.ConversationID, Items: items}
	if len(items) > size {
		page.Items = items[:size]
		page.NextPageToken = encodeItemToken(messageToken{Order: order, Seq: page.Items[size-1].Seq})
	}
	return page, nil
}

// WatchItems checks that p may read conversation id and starts a watch of
// its items after afterSeq, with WatchMessages' rules: catch-up from the
// store, then every new item in seq order without gaps, until the
// conversation is deleted, the token expires or is revoked, or the replica
// drains.
func (s *Service) WatchItems(ctx context.Context, p auth.Principal, id uuid.UUID, afterSeq int64) (*ItemWatch, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return nil, err
	}
	if afterSeq < 0 {
		return nil, invalid("after_seq must not be negative")
	}
	if s.itemHub == nil {
		return nil, fmt.Errorf("watch items: no item hub configured")
	}
	last, err := s.store.ItemHead(ctx, id, scope)
	if err != nil {
		return nil, err
	}
	return newWatch(s, s.itemHub.feed, id, afterSeq, last, p), nil
}
