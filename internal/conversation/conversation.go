// Package conversation holds Parley's conversations and their messages: who
// may reach them, how a turn is saved exactly once and in order, how history
// is paged, cached and watched. It knows nothing of SQL, Valkey or protos; the
// adapters implement the interfaces declared here.
package conversation

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/parley-dev/parley/internal/keyset"
)

// Conversation is an ordered history of messages, owned by one user and
// optionally tied to a room.
type Conversation struct {
	ID     uuid.UUID
	UserID uuid.UUID
	// RoomID is uuid.Nil when the conversation has no room.
	RoomID uuid.UUID
	Title  string
	// Metadata is the conversation's own key-value data, nil when empty.
	Metadata     map[string]string
	MessageCount int64
	// LastSeq is the seq of the newest message, 0 when there is none.
	LastSeq int64
	// ItemCount and LastItemSeq are the same for the conversation's items.
	ItemCount   int64
	LastItemSeq int64
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Role says who spoke a message.
type Role int16

// The roles a message may have. The values are stored in the database.
const (
	RoleUser      Role = 1
	RoleAssistant Role = 2
	RoleSystem    Role = 3
)

// Message is one utterance in a conversation. Messages are immutable once
// saved; Seq numbers them 1, 2, 3, ... per conversation in commit order.
type Message struct {
	ID             uuid.UUID
	ConversationID uuid.UUID
	Seq            int64
	Role           Role
	Content        string
	// TurnID is the SaveTurn turn id the message was saved under, "" when none.
	TurnID    string
	CreatedAt time.Time
}

// Order is the direction a listing walks seq in.
type Order int8

const (
	// OrderNewestFirst walks seq downwards; it is the default.
	OrderNewestFirst Order = 1
	// OrderOldestFirst walks seq upwards.
	OrderOldestFirst Order = 2
)

// Turn is what SaveTurn is asked to store: a user and an assistant message,
// either of which may be empty (and is then not stored), but not both.
type Turn struct {
	ConversationID uuid.UUID
	// TurnID makes the call idempotent; "" when the caller gave none.
	TurnID           string
	UserMessage      string
	AssistantMessage string
}

// SavedTurn is SaveTurn's answer.
type SavedTurn struct {
	Messages []Message
	// Replayed is true when the turn id had been saved before and nothing
	// new was stored.
	Replayed bool
}

// MessagePage is one page of ListMessages.
type MessagePage struct {
	ConversationID uuid.UUID
	Messages       []Message
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// ConversationPage is one page of ListConversations.
type ConversationPage struct {
	Conversations []Conversation
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// ListMessagesRequest selects one page of a conversation's messages.
type ListMessagesRequest struct {
	ConversationID uuid.UUID
	// PageSize is 0 for the default (50); at most 200.
	PageSize  int
	PageToken string
	// Order is 0 for the default (OrderNewestFirst).
	Order Order
}

// Scope restricts which conversations a store call may reach: a user's own,
// or any (agents). Stores answer ErrNotFound for conversations outside it.
type Scope struct {
	// UserID is the owner a conversation must have; uuid.Nil means any owner.
	UserID uuid.UUID
}

// Any reports whether the scope reaches every conversation.
func (s Scope) Any() bool { return s.UserID == uuid.Nil }

// NewMessage is a message for the store to insert; the store assigns Seq
// and CreatedAt.
type NewMessage struct {
	ID      uuid.UUID
	Role    Role
	Content string
}

// MessageRange selects stored messages of one conversation by seq.
type MessageRange struct {
	ConversationID uuid.UUID
	Order          Order
	// After and Before are exclusive bounds on seq. Before is always set:
	// ListMessages bounds it by the last_seq it keyed the cache with, so a
	// page's content is a pure function of its key even while turns are
	// being saved.
	After, Before int64
	Limit         int
}

// ConversationCursor is where a ListConversations page continues: strictly
// older than (CreatedAt, ID) in (created_at DESC, id DESC) order.
type ConversationCursor = keyset.Position

// Store is the persistence the domain needs. Every call that takes a Scope
// answers ErrNotFound for a conversation that does not exist or lies outside
// the scope, so callers cannot tell the two apart.
type Store interface {
	// CreateConversation stores c (ID, UserID, RoomID, Title, Metadata set by
	// the caller) and returns it with the stored timestamps.
	CreateConversation(ctx context.Context, c Conversation) (Conversation, error)
	GetConversation(ctx context.Context, id uuid.UUID, s Scope) (Conversation, error)
	// ListConversations returns up to limit of userID's conversations, newest
	// first, strictly after cursor (nil for the first page).
	ListConversations(ctx context.Context, userID uuid.UUID, after *ConversationCursor, limit int) ([]Conversation, error)
	// ListConversationsMatching is ListConversations of only those that f
	// selects, at a cost per page that does not grow with the number of
	// conversations f passes over.
	ListConversationsMatching(ctx context.Context, userID uuid.UUID, f Filter, after *ConversationCursor, limit int) ([]Conversation, error)
	// UpdateConversation applies ch to the conversation, bumps its
	// updated_at and returns it as stored.
	UpdateConversation(ctx context.Context, id uuid.UUID, s Scope, ch Change) (Conversation, error)
	// DeleteConversation deletes the conversation with its messages and turns.
	DeleteConversation(ctx context.Context, id uuid.UUID, s Scope) error
	// Head returns the conversation's owner and last_seq: the access check
	// and the page key of ListMessages in one primary-key lookup.
	Head(ctx context.Context, id uuid.UUID, s Scope) (Head, error)
	// ListMessages returns the messages in r without an access check.
	ListMessages(ctx context.Context, r MessageRange) ([]Message, error)
	// NewMessages is the Hub's read after a change: up to limit messages of
	// conversation id with seq > after, and its last_seq; exists is false
	// when it is gone. No access check.
	NewMessages(ctx context.Context, id uuid.UUID, after int64, limit int) (msgs []Message, lastSeq int64, exists bool, err error)
	// LastSeqs is the Hub's re-check: the last_seq of each of ids that still
	// exists.
	LastSeqs(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]int64, error)
	ItemStore
}

// PageKey identifies a cached ListMessages page. LastSeq is the
// conversation's last_seq when the page was read: a page is served only
// while its conversation's head still has that last_seq, so a saved turn
// retires every cached page of its conversation.
type PageKey struct {
	ConversationID uuid.UUID
	LastSeq        int64
	Order          Order
	// Cursor is the exclusive seq bound the page starts after (or before),
	// 0 for the first page.
	Cursor int64
	Size   int
}

// CachedPage is a cached ListMessages page.
type CachedPage struct {
	Messages []Message
	// More is true when messages beyond this page exist.
	More bool
}

// Head is what ListMessages must know of a conversation before it can pick
// a page: its owner, for the access check, and its last_seq.
type Head struct {
	Owner   uuid.UUID
	LastSeq int64
	// Deleted marks a deleted conversation: ids are never reused, so it
	// answers not found for as long as the mark is kept.
	Deleted bool
}

// PageCache caches conversation heads and ListMessages pages, so that a
// ListMessages of an unchanged conversation needs neither the store nor more
// than one round trip. A failing or empty cache makes ListMessages slower,
// never wrong, so implementations report misses and errors alike as a miss.
//
// Heads are kept current by the writers: AdvanceHead after every committed
// (or replayed) turn and DeleteHead after a delete, each before the caller is
// answered, so a reader never misses a turn whose SaveTurn has answered.
// Implementations keep heads briefly (seconds): that bounds how long a writer
// that dies between its commit and AdvanceHead leaves readers behind.
type PageCache interface {
	// Lookup returns the conversation's cached head, if any, and the page k
	// names (k.LastSeq aside) with the last_seq it was cached at, if any
	// (pageSeq -1 when none). The page is current when pageSeq is the
	// head's last_seq.
	Lookup(ctx context.Context, k PageKey) (h Head, headOK bool, p CachedPage, pageSeq int64)
	// PutPage caches p as the page k names, at k.LastSeq.
	PutPage(ctx context.Context, k PageKey, p CachedPage)
	// RecordHead caches a head read from the store by a query started at
	// readAt. It never moves a cached last_seq back and never revives a
	// deleted conversation; it may drop a head read too long ago.
	RecordHead(ctx context.Context, id uuid.UUID, h Head, readAt time.Time)
	// AdvanceHead moves a cached head's last_seq forward to lastSeq (never
	// back) after a turn was committed. When it returns, no reader finds a
	// head older than lastSeq: if the cache cannot be written it waits for
	// such heads to expire.
	AdvanceHead(ctx context.Context, id uuid.UUID, lastSeq int64)
	// DeleteHead marks the conversation deleted; like AdvanceHead, when it
	// returns no reader finds the conversation's head.
	DeleteHead(ctx context.Context, id uuid.UUID)
}

// Notifier tells the other replicas' hubs of a committed change: lastSeq is
// the conversation's new last_seq, or -1 when it was deleted. Notifications
// are hints; a lost one delays watches, never misleads them.
type Notifier interface {
	Notify(ctx context.Context, id uuid.UUID, lastSeq int64)
}

// Rooms checks room ownership for CreateConversation. Until rooms exist the
// service may have none, and then refuses every room id.
type Rooms interface {
	// RoomOwnedBy reports whether roomID exists and belongs to userID.
	RoomOwnedBy(ctx context.Context, roomID, userID uuid.UUID) (bool, error)
}
