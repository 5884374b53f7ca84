package conversation

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/outage"
)

// Limits of the rules the service enforces. The proto schema checks the
// same shape at the edge; the domain re-checks because it is the owner of
// the rules and has callers besides the rpc layer.
const (
	MaxMessageBytes = 65536
	MaxTitleChars   = 200
	DefaultPageSize = 50
	MaxPageSize     = 200
)

var turnIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Options are the optional collaborators of a Service.
type Options struct {
	// Cache serves ListMessages pages; nil disables caching.
	Cache PageCache
	// Notifier tells other replicas of SaveTurn and DeleteConversation;
	// nil leaves their watches to the periodic re-check.
	Notifier Notifier
	// Hub feeds WatchMessages; nil makes WatchMessages fail.
	Hub *Hub
	// ItemHub feeds WatchItems; nil makes WatchItems fail.
	ItemHub *ItemHub
	// ItemNotifier tells other replicas of new items (with the
	// conversation's last item seq) and of deletions; nil leaves their
	// item watches to the periodic re-check.
	ItemNotifier Notifier
	// Sessions ends watches whose token is revoked while they run; nil
	// leaves them to their token's expiry.
	Sessions Sessions
	// SessionCheck is how often a watch asks Sessions; 0 means
	// DefaultSessionCheck.
	SessionCheck time.Duration
	// Rooms checks CreateConversation's room id; nil refuses every room id.
	Rooms Rooms
	Log   *slog.Logger
}

// Service is the conversation use cases. It is safe for concurrent use.
type Service struct {
	store    Store
	cache    PageCache
	notifier Notifier
	hub      *Hub
	rooms    Rooms

	itemHub      *ItemHub
	itemNotifier Notifier
	log          *slog.Logger

	sessions     Sessions
	sessionCheck time.Duration
	// sessionCheckFailed logs the watches' failed revocation checks: every
	// watch checks each interval, so an outage would log one line per
	// watch per interval.
	sessionCheckFailed *outage.Log
}

// NewService returns a Service over store.
func NewService(store Store, opts Options) *Service {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.SessionCheck <= 0 {
		opts.SessionCheck = DefaultSessionCheck
	}
	return &Service{
		store:              store,
		cache:              opts.Cache,
		notifier:           opts.Notifier,
		hub:                opts.Hub,
		itemHub:            opts.ItemHub,
		itemNotifier:       opts.ItemNotifier,
		rooms:              opts.Rooms,
		log:                log,
		sessions:           opts.Sessions,
		sessionCheck:       opts.SessionCheck,
		sessionCheckFailed: outage.New(log, "watch: revocation check failed; streams go on", nil),
	}
}

// ScopeOf returns the conversations p may reach: users their own, agents
// any. The file domain scopes files by it too.
func ScopeOf(p auth.Principal) (Scope, error) {
	switch {
	case p.IsUser() && p.ID != uuid.Nil:
		return Scope{UserID: p.ID}, nil
	case p.IsAgent():
		return Scope{}, nil
	default:
		return Scope{}, auth.ErrUnauthenticated
	}
}

// userOnly refuses agents the user-scoped calls.
func userOnly(p auth.Principal) error {
	switch {
	case p.IsAgent():
		return auth.ErrPermissionDenied
	case !p.IsUser() || p.ID == uuid.Nil:
		return auth.ErrUnauthenticated
	}
	return nil
}

// CreateConversation creates a conversation owned by p, optionally linked to
// one of p's rooms (roomID uuid.Nil for none). Agents may not.
func (s *Service) CreateConversation(ctx context.Context, p auth.Principal, title string, roomID uuid.UUID) (Conversation, error) {
	return s.createConversation(ctx, p, Conversation{Title: title, RoomID: roomID})
}

// createConversation creates c (its title, room and metadata) owned by p.
func (s *Service) createConversation(ctx context.Context, p auth.Principal, c Conversation) (Conversation, error) {
	if err := userOnly(p); err != nil {
		return Conversation{}, err
	}
	if err := checkTitle(c.Title); err != nil {
		return Conversation{}, err
	}
	if c.RoomID != uuid.Nil {
		if s.rooms == nil {
			return Conversation{}, ErrRoomNotFound
		}
		ok, err := s.rooms.RoomOwnedBy(ctx, c.RoomID, p.ID)
		if err != nil {
			return Conversation{}, fmt.Errorf("check room: %w", err)
		}
		if !ok {
			return Conversation{}, ErrRoomNotFound
		}
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Conversation{}, fmt.Errorf("new conversation id: %w", err)
	}
	c.ID, c.UserID = id, p.ID
	return s.store.CreateConversation(ctx, c)
}

// GetConversation returns one conversation p may reach.
func (s *Service) GetConversation(ctx context.Context, p auth.Principal, id uuid.UUID) (Conversation, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return Conversation{}, err
	}
	return s.store.GetConversation(ctx, id, scope)
}

// ListConversations lists p's own conversations, newest first. Agents may not.
func (s *Service) ListConversations(ctx context.Context, p auth.Principal, pageSize int, pageToken string) (ConversationPage, error) {
	return s.ListConversationsMatching(ctx, p, Filter{}, pageSize, pageToken)
}

// DeleteConversation deletes one of p's conversations with its messages and
// ends every replica's WatchMessages streams on it. Agents may not.
func (s *Service) DeleteConversation(ctx context.Context, p auth.Principal, id uuid.UUID) error {
	if err := userOnly(p); err != nil {
		return err
	}
	if err := s.store.DeleteConversation(ctx, id, Scope{UserID: p.ID}); err != nil {
		return err
	}
	// The delete is committed: its mark must be written even if the
	// caller has gone.
	if s.cache != nil {
		s.cache.DeleteHead(context.WithoutCancel(ctx), id)
	}
	s.notify(ctx, id, -1)
	s.notifyItems(ctx, id, -1)
	return nil
}

// SaveTurn appends a turn's messages with consecutive seqs, user first,
// exactly once per turn id: a repeat with the same content stores nothing and
// answers the first call's messages with Replayed set; different content
// under a used turn id is ErrTurnConflict.
func (s *Service) SaveTurn(ctx context.Context, p auth.Principal, t Turn) (SavedTurn, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return SavedTurn{}, err
	}
	msgs, err := turnMessages(t)
	if err != nil {
		return SavedTurn{}, err
	}
	// A turn is a batch of message items; its turn id keeps SaveTurn's
	// own replay rule: the whole turn, compared message by message.
	stored, err := s.appendItems(ctx, t.ConversationID, scope, TurnItems(t.ConversationID, t.TurnID, msgs))
	if err != nil {
		return SavedTurn{}, err
	}
	if stored.Replayed && !sameTurn(stored.Messages, msgs) {
		return SavedTurn{}, ErrTurnConflict
	}
	return SavedTurn{Messages: stored.Messages, Replayed: stored.Replayed}, nil
}

// turnMessages checks t against the rules and returns the messages to store.
func turnMessages(t Turn) ([]NewMessage, error) {
	if t.TurnID != "" && !turnIDPattern.MatchString(t.TurnID) {
		return nil, invalid("turn_id must be 1 to 64 of A-Z, a-z, 0-9, '_' and '-'")
	}
	if t.UserMessage == "" && t.AssistantMessage == "" {
		return nil, invalid("at least one of user_message and assistant_message must be non-empty")
	}
	msgs := make([]NewMessage, 0, 2)
	for _, m := range []NewMessage{{Role: RoleUser, Content: t.UserMessage}, {Role: RoleAssistant, Content: t.AssistantMessage}} {
		if m.Content == "" {
			continue
		}
		if len(m.Content) > MaxMessageBytes {
			return nil, invalid(fmt.Sprintf("a message may have at most %d bytes", MaxMessageBytes))
		}
		if !utf8.ValidString(m.Content) {
			return nil, invalid("messages must be valid UTF-8")
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("new message id: %w", err)
		}
		m.ID = id
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// sameTurn reports whether stored holds exactly the messages of want.
func sameTurn(stored []Message, want []NewMessage) bool {
	if len(stored) != len(want) {
		return false
	}
	for i := range stored {
		if stored[i].Role != want[i].Role || stored[i].Content != want[i].Content {
			return false
		}
	}
	return true
}

// advanceAndNotify advances the cached head and announces the change after a
// committed turn, and returns when both are done, so that the turn is
// listed everywhere before SaveTurn answers. The two are independent: they
// run side by side, and the Valkey client sends them together.
func (s *Service) advanceAndNotify(ctx context.Context, id uuid.UUID, lastSeq int64) {
	if s.cache == nil {
		s.notify(ctx, id, lastSeq)
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Committed: the head must move even if the caller has gone.
		s.cache.AdvanceHead(context.WithoutCancel(ctx), id, lastSeq)
	}()
	s.notify(ctx, id, lastSeq)
	<-done
}

// notify tells this replica's hub of a committed change at once, and the
// other replicas through the notifier. The change is durable whatever
// happens here, so a caller that has gone away must not stop it.
func (s *Service) notify(ctx context.Context, id uuid.UUID, lastSeq int64) {
	if s.hub != nil {
		s.hub.Changed(id, lastSeq)
	}
	if s.notifier != nil {
		s.notifier.Notify(context.WithoutCancel(ctx), id, lastSeq)
	}
}

// ListMessages returns one page of a conversation's messages, keyset-paged
// on seq. Pages come from the cache when possible, at the conversation's
// current last_seq, so a page never misses a turn whose SaveTurn answered.
func (s *Service) ListMessages(ctx context.Context, p auth.Principal, r ListMessagesRequest) (MessagePage, error) {
	scope, err := ScopeOf(p)
	if err != nil {
		return MessagePage{}, err
	}
	size, err := pageSizeOf(r.PageSize)
	if err != nil {
		return MessagePage{}, err
	}
	order := r.Order
	switch order {
	case 0:
		order = OrderNewestFirst
	case OrderNewestFirst, OrderOldestFirst:
	default:
		return MessagePage{}, invalid("unknown order")
	}
	var cursor int64
	if r.PageToken != "" {
		tok, err := decodeMessageToken(r.PageToken)
		if err != nil {
			return MessagePage{}, err
		}
		if tok.Order != order {
			return MessagePage{}, ErrInvalidPageToken
		}
		cursor = tok.Seq
	}

	k := PageKey{ConversationID: r.ConversationID, Order: order, Cursor: cursor, Size: size}
	cp, err := s.page(ctx, scope, k)
	if err != nil {
		return MessagePage{}, err
	}
	page := MessagePage{ConversationID: r.ConversationID, Messages: cp.Messages}
	if cp.More && len(cp.Messages) > 0 {
		page.NextPageToken = encodeMessageToken(messageToken{Order: order, Seq: cp.Messages[len(cp.Messages)-1].Seq})
	}
	return page, nil
}

// page returns the page k names (k.LastSeq aside) at the conversation's
// current last_seq. An unchanged conversation's page comes from the cache in
// one lookup; otherwise the head comes from the store, which checks access,
// and the page from the cache or the store.
func (s *Service) page(ctx context.Context, scope Scope, k PageKey) (CachedPage, error) {
	var (
		cached  CachedPage
		pageSeq int64 = -1
	)
	if s.cache != nil {
		var h Head
		var ok bool
		h, ok, cached, pageSeq = s.cache.Lookup(ctx, k)
		if ok {
			// Owners never change, so a cached owner answers the access
			// check as the store would.
			if h.Deleted || (!scope.Any() && h.Owner != scope.UserID) {
				return CachedPage{}, ErrNotFound
			}
			if pageSeq == h.LastSeq {
				return cached, nil
			}
			k.LastSeq = h.LastSeq
			return s.readPage(ctx, k)
		}
	}
	readAt := time.Now()
	h, err := s.store.Head(ctx, k.ConversationID, scope)
	if err != nil {
		return CachedPage{}, err
	}
	if s.cache != nil {
		s.cache.RecordHead(ctx, k.ConversationID, h, readAt)
	}
	if pageSeq == h.LastSeq {
		return cached, nil
	}
	k.LastSeq = h.LastSeq
	return s.readPage(ctx, k)
}

// readPage reads the page k names from the store, bounded by k.LastSeq so
// the page is exactly what k names, and caches it.
func (s *Service) readPage(ctx context.Context, k PageKey) (CachedPage, error) {
	if k.LastSeq == 0 {
		return CachedPage{}, nil
	}
	rng := MessageRange{ConversationID: k.ConversationID, Order: k.Order, Before: k.LastSeq + 1, Limit: k.Size + 1}
	if k.Order == OrderNewestFirst {
		if k.Cursor > 0 {
			rng.Before = min(k.Cursor, rng.Before)
		}
	} else {
		rng.After = k.Cursor
	}
	msgs, err := s.store.ListMessages(ctx, rng)
	if err != nil {
		return CachedPage{}, err
	}
	cp := CachedPage{Messages: msgs}
	if len(msgs) > k.Size {
		cp.Messages, cp.More = msgs[:k.Size], true
	}
	if s.cache != nil {
		s.cache.PutPage(ctx, k, cp)
	}
	return cp, nil
}

func pageSizeOf(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultPageSize, nil
	case n < 0 || n > MaxPageSize:
		return 0, invalid(fmt.Sprintf("page_size must be between 0 and %d", MaxPageSize))
	}
	return n, nil
}
