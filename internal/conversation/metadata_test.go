package conversation_test

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
)

// pairs returns n metadata pairs k0=v0, k1=v1, ...
func pairs(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprint("k", i)] = fmt.Sprint("v", i)
	}
	return m
}

// TestMetadataBounds: OpenAI's bounds, counted in characters, each named in
// its error, on create, update and filter alike.
func TestMetadataBounds(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner := seedUser(t, r.db)
	ctx := t.Context()
	c := create(t, r, owner)

	// 64 and 512 two-byte characters are within the bounds.
	for name, md := range map[string]map[string]string{
		"16 pairs":       pairs(16),
		"64-char key":    {strings.Repeat("é", 64): "v"},
		"512-char value": {"k": strings.Repeat("é", 512)},
		"empty value":    {"k": ""},
	} {
		if _, err := r.svc.CreateConversationWithMetadata(ctx, owner, "t", uuid.Nil, md); err != nil {
			t.Errorf("create with %s: %v", name, err)
		}
		if _, err := r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: c.ID, Metadata: md, Fields: []string{"metadata"}}); err != nil {
			t.Errorf("update with %s: %v", name, err)
		}
		if _, err := r.svc.ListConversationsMatching(ctx, owner, conversation.Filter{Metadata: md}, 0, ""); err != nil {
			t.Errorf("filter with %s: %v", name, err)
		}
	}
	if _, err := r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: c.ID, Metadata: map[string]string{"k": ""}, Fields: []string{"metadata"}}); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		md    map[string]string
		bound string
	}{
		"17 pairs":       {pairs(17), "16 pairs"},
		"65-char key":    {map[string]string{strings.Repeat("é", 65): "v"}, "1 to 64 characters"},
		"empty key":      {map[string]string{"": "v"}, "1 to 64 characters"},
		"513-char value": {map[string]string{"k": strings.Repeat("é", 513)}, "512 characters"},
		"U+0000":         {map[string]string{"k": "a\x00b"}, "U+0000"},
		"not UTF-8":      {map[string]string{"k": "\xff"}, "UTF-8"},
	} {
		_, errCreate := r.svc.CreateConversationWithMetadata(ctx, owner, "t", uuid.Nil, tc.md)
		_, errUpdate := r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: c.ID, Metadata: tc.md, Fields: []string{"metadata"}})
		_, errList := r.svc.ListConversationsMatching(ctx, owner, conversation.Filter{Metadata: tc.md}, 0, "")
		for call, err := range map[string]error{"create": errCreate, "update": errUpdate, "filter": errList} {
			if !errors.Is(err, conversation.ErrInvalid) || !strings.Contains(err.Error(), tc.bound) {
				t.Errorf("%s with %s = %v, want ErrInvalid naming %q", call, name, err, tc.bound)
			}
		}
	}
	// Nothing was stored by the refused calls.
	got, err := r.svc.GetConversation(ctx, owner, c.ID)
	if err != nil || !maps.Equal(got.Metadata, map[string]string{"k": ""}) {
		t.Errorf("after the refused updates: %v, %v", got.Metadata, err)
	}
}

func TestUpdateConversation(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner, stranger := seedUser(t, r.db), seedUser(t, r.db)
	ctx := t.Context()
	c, err := r.svc.CreateConversationWithMetadata(ctx, owner, "first", uuid.Nil, map[string]string{"a": "1"})
	if err != nil || !maps.Equal(c.Metadata, map[string]string{"a": "1"}) {
		t.Fatalf("create = %+v, %v", c, err)
	}

	up, err := r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: c.ID, Title: "second", Metadata: map[string]string{"ignored": "x"}, Fields: []string{"title"}})
	if err != nil || up.Title != "second" || !maps.Equal(up.Metadata, c.Metadata) || !up.UpdatedAt.After(c.UpdatedAt) {
		t.Errorf("title only = %+v, %v", up, err)
	}
	up, err = r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: c.ID, Title: "ignored", Metadata: map[string]string{"b": "2"}, Fields: []string{"metadata"}})
	if err != nil || up.Title != "second" || !maps.Equal(up.Metadata, map[string]string{"b": "2"}) {
		t.Errorf("metadata only = %+v, %v", up, err)
	}
	up, err = r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: c.ID, Title: "third", Fields: []string{"title", "metadata"}})
	if err != nil || up.Title != "third" || up.Metadata != nil {
		t.Errorf("both, metadata cleared = %+v, %v", up, err)
	}
	if got, err := r.svc.GetConversation(ctx, owner, c.ID); err != nil || got.Title != "third" || got.Metadata != nil || !got.UpdatedAt.Equal(up.UpdatedAt) {
		t.Errorf("GetConversation after the updates = %+v, %v", got, err)
	}

	for name, tc := range map[string]struct {
		u    conversation.Update
		want string
	}{
		"empty mask":   {conversation.Update{ConversationID: c.ID, Title: "x"}, "update_mask"},
		"unknown path": {conversation.Update{ConversationID: c.ID, Fields: []string{"title", "room_id"}}, `"room_id"`},
		"long title":   {conversation.Update{ConversationID: c.ID, Title: strings.Repeat("é", 201), Fields: []string{"title"}}, "200 characters"},
	} {
		if _, err := r.svc.UpdateConversation(ctx, owner, tc.u); !errors.Is(err, conversation.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s = %v, want ErrInvalid naming %s", name, err, tc.want)
		}
	}
	rename := conversation.Update{ConversationID: c.ID, Title: "theirs", Fields: []string{"title"}}
	if _, err := r.svc.UpdateConversation(ctx, stranger, rename); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("a stranger's update = %v, want ErrNotFound", err)
	}
	if _, err := r.svc.UpdateConversation(ctx, owner, conversation.Update{ConversationID: uuid.New(), Title: "x", Fields: []string{"title"}}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("a missing conversation's update = %v, want ErrNotFound", err)
	}
	if _, err := r.svc.UpdateConversation(ctx, agent, rename); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("an agent's update = %v, want ErrPermissionDenied", err)
	}
	if got, err := r.svc.GetConversation(ctx, owner, c.ID); err != nil || got.Title != "third" {
		t.Errorf("after the refused updates: %+v, %v", got, err)
	}
}

func TestListConversationsMatching(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner, stranger := seedUser(t, r.db), seedUser(t, r.db)
	ctx := t.Context()
	var ids []uuid.UUID
	var created []time.Time
	for i := range 6 {
		md := map[string]string{"parity": []string{"even", "odd"}[i%2]}
		if i%3 == 0 {
			md["third"] = "yes"
		}
		c, err := r.svc.CreateConversationWithMetadata(ctx, owner, fmt.Sprint(i), uuid.Nil, md)
		if err != nil {
			t.Fatal(err)
		}
		ids, created = append(ids, c.ID), append(created, c.CreatedAt)
	}
	if _, err := r.svc.CreateConversationWithMetadata(ctx, stranger, "x", uuid.Nil, map[string]string{"parity": "even"}); err != nil {
		t.Fatal(err)
	}
	list := func(f conversation.Filter, size int) []uuid.UUID {
		t.Helper()
		var got []uuid.UUID
		token := ""
		for {
			page, err := r.svc.ListConversationsMatching(ctx, owner, f, size, token)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range page.Conversations {
				got = append(got, c.ID)
			}
			if token = page.NextPageToken; token == "" {
				return got
			}
		}
	}
	for name, tc := range map[string]struct {
		f    conversation.Filter
		want []int
	}{
		"all":           {conversation.Filter{}, []int{5, 4, 3, 2, 1, 0}},
		"even":          {conversation.Filter{Metadata: map[string]string{"parity": "even"}}, []int{4, 2, 0}},
		"even third":    {conversation.Filter{Metadata: map[string]string{"parity": "even", "third": "yes"}}, []int{0}},
		"odd third":     {conversation.Filter{Metadata: map[string]string{"parity": "odd", "third": "yes"}}, []int{3}},
		"range":         {conversation.Filter{CreatedAfter: created[1], CreatedBefore: created[4]}, []int{3, 2, 1}},
		"range and odd": {conversation.Filter{Metadata: map[string]string{"parity": "odd"}, CreatedAfter: created[1], CreatedBefore: created[4]}, []int{3, 1}},
	} {
		var want []uuid.UUID
		for _, i := range tc.want {
			want = append(want, ids[i])
		}
		for _, size := range []int{1, 2, 0} {
			if got := list(tc.f, size); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s, pages of %d = %v, want %v", name, size, got, want)
			}
		}
	}
	if _, err := r.svc.ListConversationsMatching(ctx, owner, conversation.Filter{CreatedAfter: created[2], CreatedBefore: created[2]}, 0, ""); !errors.Is(err, conversation.ErrInvalid) {
		t.Errorf("an empty range = %v, want ErrInvalid", err)
	}
	if _, err := r.svc.ListConversationsMatching(ctx, agent, conversation.Filter{Metadata: map[string]string{"parity": "even"}}, 0, ""); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("an agent's list = %v, want ErrPermissionDenied", err)
	}
}
