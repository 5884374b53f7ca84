package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// TestItemsAppendedWebhook runs serve and appends items (AppendItems, then
// SaveTurn, then AppendItems again once the first items were announced)
// to a conversation whose owner has an endpoint taking
// conversation.items_appended. The endpoint receives events, each verified
// by the Standard Webhooks reference library, covering seq 1 to the last
// exactly once in contiguous ranges, and ListItems after first_seq-1 reads
// exactly the items each names.
func TestItemsAppendedWebhook(t *testing.T) {
	verifier := testenv.WebhookReceiver(t)
	s := startServer(t, webhookEnv(t))
	ctx := context.Background()
	token := registerUser(t, s.base)
	received := receiveEvents(t, s, verifier, token, webhook.ItemsAppended)
	convs := parleyv1connect.NewConversationServiceClient(http.DefaultClient, s.base)
	created, err := convs.CreateConversation(ctx, bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "announced"}), token))
	if err != nil {
		t.Fatal(err)
	}
	conv := created.Msg.GetConversation().GetId()
	appendItems := func(p string) {
		t.Helper()
		if _, err := convs.AppendItems(ctx, bearer(connect.NewRequest(&parleyv1.AppendItemsRequest{ConversationId: conv, Agent: "support-bot", Items: []*parleyv1.ChatContext_ChatItem{
			{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{Id: p + "call", CallId: p + "c", Name: "lookup", Arguments: "{}"}}},
			{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{Id: p + "out", CallId: p + "c", Name: "lookup", Output: "found"}}},
		}}), token)); err != nil {
			t.Fatal(err)
		}
	}
	// covered returns the last seq the events announce, contiguously from 1.
	covered := func(got []receivedCallEvent) int64 {
		last := int64(0)
		for _, e := range got {
			var d webhook.ItemsAppendedData
			if err := json.Unmarshal(e.Raw, &d); err != nil || e.Type != webhook.ItemsAppended {
				t.Fatalf("delivery %s %s: %v", e.Type, e.Raw, err)
			}
			if d.ConversationID.String() != conv || d.FirstSeq != last+1 || d.LastSeq < d.FirstSeq ||
				d.ItemCount != d.LastSeq-d.FirstSeq+1 || len(d.Items) != int(d.ItemCount) {
				t.Fatalf("event %s after seq %d; all: %+v", e.Raw, last, got)
			}
			last = d.LastSeq
		}
		return last
	}

	appendItems("a-")
	if _, err := convs.SaveTurn(ctx, bearer(connect.NewRequest(&parleyv1.SaveTurnRequest{ConversationId: conv, TurnId: "t1", UserMessage: "hi", AssistantMessage: "hello"}), token)); err != nil {
		t.Fatal(err)
	}
	received.until(t, "seqs 1 to 4 announced", func(got []receivedCallEvent) bool { return covered(got) >= 4 })
	appendItems("b-")
	got := received.until(t, "seqs 1 to 6 announced", func(got []receivedCallEvent) bool { return covered(got) >= 6 })
	if covered(got) != 6 || len(got) < 2 {
		t.Fatalf("events %+v, want seqs 1 to 6 in two events at least", got)
	}

	for _, e := range got {
		var d webhook.ItemsAppendedData
		if err := json.Unmarshal(e.Raw, &d); err != nil {
			t.Fatal(err)
		}
		page, err := convs.ListItems(ctx, bearer(connect.NewRequest(&parleyv1.ListItemsRequest{
			ConversationId: conv, AfterSeq: d.FirstSeq - 1, Order: parleyv1.Order_ORDER_OLDEST_FIRST, PageSize: int32(d.ItemCount),
		}), token))
		if err != nil {
			t.Fatal(err)
		}
		var listed []webhook.AppendedItem
		for _, it := range page.Msg.GetItems() {
			listed = append(listed, named(it))
		}
		if fmt.Sprint(listed) != fmt.Sprint(d.Items) {
			t.Errorf("event %d..%d names %v; ListItems after seq %d answers %v", d.FirstSeq, d.LastSeq, d.Items, d.FirstSeq-1, listed)
		}
	}
}

// named is a stored item as items_appended names it (the kinds this test
// appends).
func named(it *parleyv1.Item) webhook.AppendedItem {
	switch c := it.GetItem(); {
	case c.GetMessage() != nil:
		return webhook.AppendedItem{ID: c.GetMessage().GetId(), Type: "message"}
	case c.GetFunctionCall() != nil:
		return webhook.AppendedItem{ID: c.GetFunctionCall().GetId(), Type: "function_call"}
	case c.GetFunctionCallOutput() != nil:
		return webhook.AppendedItem{ID: c.GetFunctionCallOutput().GetId(), Type: "function_call_output"}
	}
	return webhook.AppendedItem{}
}
