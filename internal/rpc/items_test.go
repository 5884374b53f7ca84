package rpc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/agentsjson"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// everyKind is a chat context with one item of each kind, the message
// with LiveKit's voice fields.
func everyKind(prefix string) []*parleyv1.ChatContext_ChatItem {
	at := timestamppb.New(time.Date(2026, 12, 1, 10, 0, 0, 500_000_000, time.UTC))
	conf, ttft := 0.93, 0.21
	instructions := "be brief"
	return []*parleyv1.ChatContext_ChatItem{
		{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Id: prefix + "msg", Role: parleyv1.ChatRole_CHAT_ROLE_ASSISTANT, Interrupted: true,
			Content:              []*parleyv1.ChatMessage_ChatContent{{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: "Let me"}}, {Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: "check"}}},
			TranscriptConfidence: &conf, Extra: map[string]string{"b": "2", "a": "1"},
			Metrics: &parleyv1.MetricsReport{StartedSpeakingAt: at, LlmNodeTtft: &ttft}, CreatedAt: at,
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{Id: prefix + "call", CallId: prefix + "c1", Name: "weather", Arguments: `{"city":"Oslo"}`}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{Id: prefix + "out", CallId: prefix + "c1", Name: "weather", Output: "sunny", IsError: true}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{Id: prefix + "handoff", NewAgentId: "billing"}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentConfigUpdate{AgentConfigUpdate: &parleyv1.AgentConfigUpdate{Id: prefix + "config", Instructions: &instructions, ToolsAdded: []string{"refund"}}}},
	}
}

func chatItemsOf(items []*parleyv1.Item) []*parleyv1.ChatContext_ChatItem {
	out := make([]*parleyv1.ChatContext_ChatItem, len(items))
	for i, it := range items {
		out[i] = it.GetItem()
	}
	return out
}

func itemSeqs(items []*parleyv1.Item) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.GetSeq()
	}
	return out
}

func TestItemsRPC(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner, stranger, agentID := ts.user(t), ts.user(t), ts.agent(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{Title: "items"}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		if _, err := c.SaveTurn(ctx, as(owner, &parleyv1.SaveTurnRequest{ConversationId: id, TurnId: "t1", UserMessage: "weather?"})); err != nil {
			t.Fatal(err)
		}

		req := &parleyv1.AppendItemsRequest{ConversationId: id, Items: everyKind(""), Agent: "voice", MessageId: "m-1"}
		appended, err := c.AppendItems(ctx, as(agentID, req))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(req.GetItems(), chatItemsOf(appended.Msg.GetItems()), protocmp.Transform()); diff != "" || appended.Msg.GetReplayed() {
			t.Errorf("AppendItems answered other items (-sent +stored), replayed %v:\n%s", appended.Msg.GetReplayed(), diff)
		}
		first := appended.Msg.GetItems()[0]
		if !cmp.Equal(itemSeqs(appended.Msg.GetItems()), []int64{2, 3, 4, 5, 6}) || first.GetAgent() != "voice" || first.GetMessageId() != "m-1" ||
			first.GetMessageSeq() != 2 || appended.Msg.GetItems()[1].GetMessageSeq() != 0 || first.GetConversationId() != id || first.GetStoredAt() == nil {
			t.Errorf("stored items %v", appended.Msg.GetItems())
		}

		replay, err := c.AppendItems(ctx, as(owner, req))
		if err != nil || !replay.Msg.GetReplayed() || !cmp.Equal(itemSeqs(replay.Msg.GetItems()), []int64{2, 3, 4, 5, 6}) {
			t.Errorf("replay = %v, %v", replay.Msg, err)
		}
		changed := proto.Clone(req).(*parleyv1.AppendItemsRequest)
		changed.GetItems()[2].GetFunctionCallOutput().Output = "rain"
		if _, err := c.AppendItems(ctx, as(owner, changed)); codeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("same id, other content = %v, want already_exists", err)
		}

		page, err := c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, PageSize: 4}))
		if err != nil || !cmp.Equal(itemSeqs(page.Msg.GetItems()), []int64{6, 5, 4, 3}) || page.Msg.GetNextPageToken() == "" {
			t.Fatalf("ListItems newest first = %v, %v", page.Msg, err)
		}
		rest, err := c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, PageSize: 4, PageToken: page.Msg.GetNextPageToken()}))
		if err != nil || !cmp.Equal(itemSeqs(rest.Msg.GetItems()), []int64{2, 1}) || rest.Msg.GetNextPageToken() != "" {
			t.Errorf("ListItems second page = %v, %v", rest.Msg, err)
		}
		turnItem := rest.Msg.GetItems()[1]
		if m := turnItem.GetItem().GetMessage(); m.GetId() != "saveturn:t1:user" || m.GetRole() != parleyv1.ChatRole_CHAT_ROLE_USER ||
			m.GetContent()[0].GetText() != "weather?" || m.GetCreatedAt() == nil || turnItem.GetMessageId() != "t1" {
			t.Errorf("SaveTurn's item = %v", turnItem)
		}
		// after_seq bounds either order, and pages within its bound.
		after, err := c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, AfterSeq: 2, PageSize: 3, Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
		if err != nil || !cmp.Equal(itemSeqs(after.Msg.GetItems()), []int64{3, 4, 5}) || after.Msg.GetNextPageToken() == "" {
			t.Fatalf("ListItems oldest first after seq 2 = %v, %v", after.Msg, err)
		}
		after, err = c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, AfterSeq: 2, PageSize: 3, Order: parleyv1.Order_ORDER_OLDEST_FIRST, PageToken: after.Msg.GetNextPageToken()}))
		if err != nil || !cmp.Equal(itemSeqs(after.Msg.GetItems()), []int64{6}) || after.Msg.GetNextPageToken() != "" {
			t.Errorf("ListItems oldest first after seq 2, second page = %v, %v", after.Msg, err)
		}
		after, err = c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, AfterSeq: 4}))
		if err != nil || !cmp.Equal(itemSeqs(after.Msg.GetItems()), []int64{6, 5}) {
			t.Errorf("ListItems newest first after seq 4 = %v, %v", after.Msg, err)
		}
		voice, err := c.ListItems(ctx, as(agentID, &parleyv1.ListItemsRequest{ConversationId: id, Agent: "voice", Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
		if err != nil || !cmp.Equal(itemSeqs(voice.Msg.GetItems()), []int64{2, 3, 4, 5, 6}) {
			t.Errorf("ListItems of agent voice = %v, %v", voice.Msg, err)
		}
		msgs, err := c.ListMessages(ctx, as(owner, &parleyv1.ListMessagesRequest{ConversationId: id, Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
		if err != nil || len(msgs.Msg.GetMessages()) != 2 || msgs.Msg.GetMessages()[1].GetContent() != "Let me\ncheck" {
			t.Errorf("ListMessages = %v, %v", msgs.Msg, err)
		}
		conv, err := c.GetConversation(ctx, as(owner, &parleyv1.GetConversationRequest{ConversationId: id}))
		if err != nil || conv.Msg.GetConversation().GetItemCount() != 6 || conv.Msg.GetConversation().GetLastItemSeq() != 6 {
			t.Errorf("GetConversation = %v, %v", conv.Msg, err)
		}

		for name, r := range map[string]*parleyv1.AppendItemsRequest{
			"items_json of no items": {ConversationId: id, ItemsJson: `{"items":[]}`},
			"items_json not JSON":    {ConversationId: id, ItemsJson: `{"items":`},
			"both":                   {ConversationId: id, ItemsJson: `[]`, Items: everyKind("b")},
			"201 items":              {ConversationId: id, Items: slices.Repeat(everyKind("r"), 41)[:201]},
			"no items":               {ConversationId: id},
			"no kind":                {ConversationId: id, Items: []*parleyv1.ChatContext_ChatItem{{}}},
			"no id":                  {ConversationId: id, Items: []*parleyv1.ChatContext_ChatItem{{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{}}}}},
			"no role":                {ConversationId: id, Items: []*parleyv1.ChatContext_ChatItem{{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{Id: "x"}}}}},
			"reserved id":            {ConversationId: id, Items: []*parleyv1.ChatContext_ChatItem{{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{Id: "saveturn:x"}}}}},
			"malformed id":           {ConversationId: "nope", Items: everyKind("z")},
		} {
			if _, err := c.AppendItems(ctx, as(owner, r)); codeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("AppendItems %s = %v, want invalid_argument", name, err)
			}
		}
		if _, err := c.AppendItems(ctx, as(owner, &parleyv1.AppendItemsRequest{ConversationId: id, ItemsJson: `{"items":[{"type":"nope"}]}`})); codeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "items_json") {
			t.Errorf("items_json error %v is not invalid_argument naming it", err)
		}

		// Items as livekit-agents' to_dict() JSON store what they read as
		// (with from_dict()'s defaults filled in).
		dict, err := agentsjson.Encode(everyKind("json-"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := agentsjson.Decode(dict)
		if err != nil {
			t.Fatal(err)
		}
		viaJSON, err := c.AppendItems(ctx, as(agentID, &parleyv1.AppendItemsRequest{ConversationId: id, ItemsJson: string(dict)}))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, chatItemsOf(viaJSON.Msg.GetItems()), protocmp.Transform()); diff != "" || !cmp.Equal(itemSeqs(viaJSON.Msg.GetItems()), []int64{7, 8, 9, 10, 11}) {
			t.Errorf("items_json stored other items (-sent +stored):\n%s", diff)
		}
		if _, err := c.AppendItems(ctx, as(stranger, &parleyv1.AppendItemsRequest{ConversationId: id, Items: everyKind("s")})); codeOf(err) != connect.CodeNotFound {
			t.Errorf("stranger's AppendItems = %v, want not_found", err)
		}
		if _, err := c.ListItems(ctx, as(stranger, &parleyv1.ListItemsRequest{ConversationId: id})); codeOf(err) != connect.CodeNotFound {
			t.Errorf("stranger's ListItems = %v, want not_found", err)
		}
		if _, err := c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, PageToken: "garbage"})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("ListItems garbage token = %v, want invalid_argument", err)
		}
		if _, err := c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, AfterSeq: -1})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("negative after_seq = %v, want invalid_argument", err)
		}
	})
}

func TestWatchItemsRPC(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		owner, agentID := ts.user(t), ts.agent(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		if _, err := c.AppendItems(ctx, as(agentID, &parleyv1.AppendItemsRequest{ConversationId: id, Items: everyKind("old-")})); err != nil {
			t.Fatal(err)
		}
		s, err := c.WatchItems(ctx, as(owner, &parleyv1.WatchItemsRequest{ConversationId: id, AfterSeq: 3}))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var writer sync.WaitGroup
		defer writer.Wait()
		writer.Go(func() {
			for i := range 3 {
				if _, err := c.AppendItems(ctx, as(agentID, &parleyv1.AppendItemsRequest{ConversationId: id, Items: everyKind(fmt.Sprint("new", i, "-"))})); err != nil {
					t.Error(err)
				}
			}
		})
		var got []*parleyv1.Item
		for len(got) < 2+15 && s.Receive() {
			if it := s.Msg().GetItem(); it != nil {
				got = append(got, it)
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		want := make([]int64, 17)
		for i := range want {
			want[i] = int64(i + 4)
		}
		if !cmp.Equal(itemSeqs(got), want) {
			t.Fatalf("watched seqs %v, want %v", itemSeqs(got), want)
		}
		if diff := cmp.Diff(everyKind("new2-"), chatItemsOf(got[12:]), protocmp.Transform()); diff != "" {
			t.Errorf("watched items differ (-sent +watched):\n%s", diff)
		}
	})
}
