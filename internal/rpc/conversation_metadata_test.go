package rpc

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

func TestConversationMetadataRPC(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner, stranger, agentID := ts.user(t), ts.user(t), ts.agent(t)
		var convs []*parleyv1.Conversation
		for i := range 4 {
			md := map[string]string{"team": []string{"red", "blue"}[i%2], "n": fmt.Sprint(i)}
			created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{Title: fmt.Sprint("c", i), Metadata: md}))
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(created.Msg.GetConversation().GetMetadata(), md) {
				t.Errorf("created metadata = %v, want %v", created.Msg.GetConversation().GetMetadata(), md)
			}
			convs = append(convs, created.Msg.GetConversation())
		}
		id := convs[0].GetId()

		tooMany := map[string]string{}
		for i := range 17 {
			tooMany[fmt.Sprint("k", i)] = "v"
		}
		for name, md := range map[string]map[string]string{
			"17 pairs":       tooMany,
			"65-char key":    {strings.Repeat("é", 65): "v"},
			"513-char value": {"k": strings.Repeat("é", 513)},
		} {
			if _, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{Metadata: md})); codeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("CreateConversation with %s = %v, want invalid_argument", name, err)
			}
			if _, err := c.UpdateConversation(ctx, as(owner, &parleyv1.UpdateConversationRequest{ConversationId: id, Metadata: md, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"metadata"}}})); codeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("UpdateConversation with %s = %v, want invalid_argument", name, err)
			}
			if _, err := c.ListConversations(ctx, as(owner, &parleyv1.ListConversationsRequest{Metadata: md})); codeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("ListConversations with %s = %v, want invalid_argument", name, err)
			}
		}

		up, err := c.UpdateConversation(ctx, as(owner, &parleyv1.UpdateConversationRequest{
			ConversationId: id, Title: "renamed", Metadata: map[string]string{"team": "green"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}},
		}))
		if got := up.Msg.GetConversation(); err != nil || got.GetTitle() != "renamed" || got.GetMetadata()["team"] != "red" ||
			!got.GetUpdatedAt().AsTime().After(convs[0].GetUpdatedAt().AsTime()) {
			t.Errorf("rename = %v, %v", up, err)
		}
		up, err = c.UpdateConversation(ctx, as(owner, &parleyv1.UpdateConversationRequest{
			ConversationId: id, Metadata: map[string]string{"team": "green"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"metadata"}},
		}))
		if got := up.Msg.GetConversation(); err != nil || got.GetTitle() != "renamed" || !maps.Equal(got.GetMetadata(), map[string]string{"team": "green"}) {
			t.Errorf("metadata update = %v, %v", up, err)
		}
		for name, tc := range map[string]struct {
			req  *parleyv1.UpdateConversationRequest
			want string
		}{
			"no mask":      {&parleyv1.UpdateConversationRequest{ConversationId: id, Title: "x"}, "update_mask"},
			"empty mask":   {&parleyv1.UpdateConversationRequest{ConversationId: id, Title: "x", UpdateMask: &fieldmaskpb.FieldMask{}}, "update_mask"},
			"unknown path": {&parleyv1.UpdateConversationRequest{ConversationId: id, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"user_id"}}}, `"user_id"`},
			"bad id":       {&parleyv1.UpdateConversationRequest{ConversationId: "nope", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}, "conversation_id"},
		} {
			_, err := c.UpdateConversation(ctx, as(owner, tc.req))
			if codeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("UpdateConversation with %s = %v, want invalid_argument naming %s", name, err, tc.want)
			}
		}
		rename := &parleyv1.UpdateConversationRequest{ConversationId: id, Title: "theirs", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}
		if _, err := c.UpdateConversation(ctx, as(stranger, rename)); codeOf(err) != connect.CodeNotFound {
			t.Errorf("a stranger's UpdateConversation = %v, want not_found", err)
		}
		if _, err := c.UpdateConversation(ctx, as(agentID, rename)); codeOf(err) != connect.CodePermissionDenied {
			t.Errorf("an agent's UpdateConversation = %v, want permission_denied", err)
		}

		list := func(req *parleyv1.ListConversationsRequest) []string {
			t.Helper()
			var ids []string
			for {
				page, err := c.ListConversations(ctx, as(owner, req))
				if err != nil {
					t.Fatal(err)
				}
				for _, conv := range page.Msg.GetConversations() {
					ids = append(ids, conv.GetId())
				}
				if req.PageToken = page.Msg.GetNextPageToken(); req.PageToken == "" {
					return ids
				}
			}
		}
		idsOf := func(idx ...int) []string {
			var out []string
			for _, i := range idx {
				out = append(out, convs[i].GetId())
			}
			return out
		}
		for name, tc := range map[string]struct {
			req  *parleyv1.ListConversationsRequest
			want []string
		}{
			"all":       {&parleyv1.ListConversationsRequest{}, idsOf(3, 2, 1, 0)},
			"blue":      {&parleyv1.ListConversationsRequest{PageSize: 1, Metadata: map[string]string{"team": "blue"}}, idsOf(3, 1)},
			"red":       {&parleyv1.ListConversationsRequest{Metadata: map[string]string{"team": "red"}}, idsOf(2)},
			"two pairs": {&parleyv1.ListConversationsRequest{Metadata: map[string]string{"team": "blue", "n": "1"}}, idsOf(1)},
			"range": {&parleyv1.ListConversationsRequest{PageSize: 1,
				CreatedAfter: convs[1].GetCreatedAt(), CreatedBefore: convs[3].GetCreatedAt()}, idsOf(2, 1)},
			"range and pair": {&parleyv1.ListConversationsRequest{Metadata: map[string]string{"team": "blue"},
				CreatedAfter: convs[1].GetCreatedAt(), CreatedBefore: convs[3].GetCreatedAt()}, idsOf(1)},
		} {
			if got := list(tc.req); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("ListConversations %s = %v, want %v", name, got, tc.want)
			}
		}
		if got := list(&parleyv1.ListConversationsRequest{Metadata: map[string]string{"team": "green"}}); fmt.Sprint(got) != fmt.Sprint(idsOf(0)) {
			t.Errorf("team=green after the update = %v", got)
		}
		for name, req := range map[string]*parleyv1.ListConversationsRequest{
			"an empty range":  {CreatedAfter: convs[2].GetCreatedAt(), CreatedBefore: convs[1].GetCreatedAt()},
			"a bad timestamp": {CreatedAfter: &timestamppb.Timestamp{Seconds: -62135596801}},
		} {
			if _, err := c.ListConversations(ctx, as(owner, req)); codeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("ListConversations with %s = %v, want invalid_argument", name, err)
			}
		}
		if page, err := c.ListConversations(ctx, as(stranger, &parleyv1.ListConversationsRequest{Metadata: map[string]string{"team": "blue"}})); err != nil || len(page.Msg.GetConversations()) != 0 {
			t.Errorf("a stranger's filtered list = %v, %v", page, err)
		}
		if got, err := c.GetConversation(ctx, as(agentID, &parleyv1.GetConversationRequest{ConversationId: id})); err != nil ||
			!maps.Equal(got.Msg.GetConversation().GetMetadata(), map[string]string{"team": "green"}) {
			t.Errorf("GetConversation = %v, %v", got, err)
		}
	})
}
