package conversation

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/keyset"
)

// Bounds of a conversation's metadata, OpenAI's: they keep a conversation
// row and its filter index entries small. Lengths count characters (code
// points), as protovalidate's max_len does at the edge.
const (
	MaxMetadataPairs      = 16
	MaxMetadataKeyChars   = 64
	MaxMetadataValueChars = 512
)

// The field mask paths UpdateConversation knows.
const (
	FieldTitle    = "title"
	FieldMetadata = "metadata"
)

// Update is what UpdateConversation is asked to change: the fields Fields
// names (FieldTitle, FieldMetadata) take the values given here; the others
// keep theirs. Metadata, when named, replaces the whole map.
type Update struct {
	ConversationID uuid.UUID
	Title          string
	Metadata       map[string]string
	Fields         []string
}

// Change is an Update checked against the rules, for the store to apply.
type Change struct {
	SetTitle    bool
	Title       string
	SetMetadata bool
	Metadata    map[string]string
}

// Filter selects which of a user's conversations ListConversations
// returns. Its zero value selects all.
type Filter struct {
	// Metadata keeps conversations whose metadata holds every pair given.
	Metadata map[string]string
	// CreatedAfter keeps conversations created at or after it; zero for no
	// bound.
	CreatedAfter time.Time
	// CreatedBefore keeps conversations created before it; zero for no bound.
	CreatedBefore time.Time
}

// IsZero reports whether f selects every conversation.
func (f Filter) IsZero() bool {
	return len(f.Metadata) == 0 && f.CreatedAfter.IsZero() && f.CreatedBefore.IsZero()
}

// checkMetadata checks m against the metadata bounds; field names it in the
// error.
func checkMetadata(field string, m map[string]string) error {
	if len(m) > MaxMetadataPairs {
		return invalid(fmt.Sprintf("%s may have at most %d pairs", field, MaxMetadataPairs))
	}
	for k, v := range m {
		if k == "" || utf8.RuneCountInString(k) > MaxMetadataKeyChars {
			return invalid(fmt.Sprintf("%s keys must have 1 to %d characters", field, MaxMetadataKeyChars))
		}
		if utf8.RuneCountInString(v) > MaxMetadataValueChars {
			return invalid(fmt.Sprintf("%s values may have at most %d characters (key %q)", field, MaxMetadataValueChars, k))
		}
		// The store keeps text, which holds neither.
		if !utf8.ValidString(k) || !utf8.ValidString(v) || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return invalid(fmt.Sprintf("%s keys and values must be valid UTF-8 without U+0000", field))
		}
	}
	return nil
}

func checkTitle(title string) error {
	if utf8.RuneCountInString(title) > MaxTitleChars || !utf8.ValidString(title) {
		return invalid(fmt.Sprintf("title must be valid UTF-8 of at most %d characters", MaxTitleChars))
	}
	return nil
}

// change checks u against the rules.
func (u Update) change() (Change, error) {
	if len(u.Fields) == 0 {
		return Change{}, invalid(`update_mask must name at least one of "title" and "metadata"`)
	}
	var ch Change
	for _, f := range u.Fields {
		switch f {
		case FieldTitle:
			if err := checkTitle(u.Title); err != nil {
				return Change{}, err
			}
			ch.SetTitle, ch.Title = true, u.Title
		case FieldMetadata:
			if err := checkMetadata("metadata", u.Metadata); err != nil {
				return Change{}, err
			}
			ch.SetMetadata, ch.Metadata = true, u.Metadata
		default:
			return Change{}, invalid(fmt.Sprintf(`update_mask path %q is not one of "title" and "metadata"`, f))
		}
	}
	return ch, nil
}

// CreateConversationWithMetadata is CreateConversation with metadata, which
// must keep within the metadata bounds.
func (s *Service) CreateConversationWithMetadata(ctx context.Context, p auth.Principal, title string, roomID uuid.UUID, metadata map[string]string) (Conversation, error) {
	if err := checkMetadata("metadata", metadata); err != nil {
		return Conversation{}, err
	}
	return s.createConversation(ctx, p, Conversation{Title: title, RoomID: roomID, Metadata: metadata})
}

// UpdateConversation changes the title and metadata of one of p's
// conversations, as u says, and bumps its updated_at. Agents may not;
// another user's conversation is ErrNotFound. Neither field is cached
// (ListMessages' cache holds owners and last_seqs only), so nothing is
// retired.
func (s *Service) UpdateConversation(ctx context.Context, p auth.Principal, u Update) (Conversation, error) {
	if err := userOnly(p); err != nil {
		return Conversation{}, err
	}
	ch, err := u.change()
	if err != nil {
		return Conversation{}, err
	}
	return s.store.UpdateConversation(ctx, u.ConversationID, Scope{UserID: p.ID}, ch)
}

// ListConversationsMatching lists those of p's conversations that f
// selects, newest first, keyset-paged like ListConversations. A page token
// is a position only: the caller repeats f with it. Agents may not.
func (s *Service) ListConversationsMatching(ctx context.Context, p auth.Principal, f Filter, pageSize int, pageToken string) (ConversationPage, error) {
	if err := userOnly(p); err != nil {
		return ConversationPage{}, err
	}
	if err := checkMetadata("metadata filter", f.Metadata); err != nil {
		return ConversationPage{}, err
	}
	if !f.CreatedAfter.IsZero() && !f.CreatedBefore.IsZero() && !f.CreatedAfter.Before(f.CreatedBefore) {
		return ConversationPage{}, invalid("created_after must be before created_before")
	}
	size, err := pageSizeOf(pageSize)
	if err != nil {
		return ConversationPage{}, err
	}
	after, err := keyset.Decode(keyset.Conversations, pageToken)
	if err != nil {
		return ConversationPage{}, err
	}
	var cs []Conversation
	if f.IsZero() {
		cs, err = s.store.ListConversations(ctx, p.ID, after, size+1)
	} else {
		cs, err = s.store.ListConversationsMatching(ctx, p.ID, f, after, size+1)
	}
	if err != nil {
		return ConversationPage{}, err
	}
	var page ConversationPage
	page.Conversations, page.NextPageToken = keyset.Page(keyset.Conversations, cs, size, func(c Conversation) ConversationCursor {
		return ConversationCursor{CreatedAt: c.CreatedAt, ID: c.ID}
	})
	return page, nil
}
