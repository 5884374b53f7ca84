package rpc

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/parley-dev/parley/internal/agentsjson"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// allKindsJSON is what livekit-agents 1.8.9's to_dict() wrote for a
// context of every item kind (see internal/agentsjson/testdata).
func allKindsJSON(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../agentsjson/testdata/all_kinds.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// numbersAsText parses JSON keeping each number's text.
func numbersAsText(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	return v
}

func contextSeqs(t *testing.T, c parleyv1connect.ConversationServiceClient, tok caller, req *parleyv1.GetChatContextRequest) ([]string, *parleyv1.GetChatContextResponse) {
	t.Helper()
	resp, err := c.GetChatContext(t.Context(), as(tok, req))
	if err != nil {
		t.Fatal(err)
	}
	items, err := agentsjson.Decode([]byte(resp.Msg.GetChatContextJson()))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, it := range items {
		ids = append(ids, idOf(it))
	}
	return ids, resp.Msg
}

func idOf(it *parleyv1.ChatContext_ChatItem) string {
	switch v := it.GetItem().(type) {
	case *parleyv1.ChatContext_ChatItem_Message:
		return v.Message.GetId()
	case *parleyv1.ChatContext_ChatItem_FunctionCall:
		return v.FunctionCall.GetId()
	case *parleyv1.ChatContext_ChatItem_FunctionCallOutput:
		return v.FunctionCallOutput.GetId()
	case *parleyv1.ChatContext_ChatItem_AgentHandoff:
		return v.AgentHandoff.GetId()
	case *parleyv1.ChatContext_ChatItem_AgentConfigUpdate:
		return v.AgentConfigUpdate.GetId()
	}
	return ""
}

func TestGetChatContext(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	fixture := allKindsJSON(t)
	want, err := agentsjson.Decode(fixture)
	if err != nil {
		t.Fatal(err)
	}
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner := ts.user(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{Title: "ctx"}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		app := &parleyv1.AppendItemsRequest{ConversationId: id, ItemsJson: string(fixture), Agent: "py"}
		first, err := c.AppendItems(ctx, as(owner, app))
		if err != nil {
			t.Fatal(err)
		}
		if first.Msg.GetReplayed() || len(first.Msg.GetItems()) != len(want) {
			t.Fatalf("AppendItems(items_json) = %d items, replayed %v", len(first.Msg.GetItems()), first.Msg.GetReplayed())
		}
		if again, err := c.AppendItems(ctx, as(owner, app)); err != nil || !again.Msg.GetReplayed() {
			t.Fatalf("AppendItems(items_json) again = %v, %v; want a replay", again, err)
		}

		// The whole context: the fixture again, in proto and in its own JSON.
		ids, resp := contextSeqs(t, c, owner, &parleyv1.GetChatContextRequest{ConversationId: id})
		if diff := cmp.Diff(want, resp.GetChatContext().GetItems(), protocmp.Transform()); diff != "" {
			t.Fatalf("chat_context (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(numbersAsText(t, fixture), numbersAsText(t, []byte(resp.GetChatContextJson()))); diff != "" {
			t.Fatalf("chat_context_json differs from what to_dict() wrote (-want +got):\n%s", diff)
		}
		if resp.GetFirstSeq() != 1 || resp.GetLastSeq() != 13 || resp.GetTruncated() || len(ids) != 13 {
			t.Fatalf("whole context: seqs %d..%d, truncated %v", resp.GetFirstSeq(), resp.GetLastSeq(), resp.GetTruncated())
		}

		// Budgets. The fixture's seqs: 1 system, 2 developer, 3 user,
		// 4 call_1, 5 its output, 6 assistant, 7 images, 8 call_2, 9 its
		// output, 10-11 handoffs, 12-13 config updates.
		for _, tc := range []struct {
			name       string
			req        *parleyv1.GetChatContextRequest
			first, end int64 // seqs first..end, 0 for none
			truncated  bool
		}{
			{"last 9 would split call_1", &parleyv1.GetChatContextRequest{MaxItems: 9}, 6, 13, true},
			{"last 10 keeps call_1", &parleyv1.GetChatContextRequest{MaxItems: 10}, 4, 13, true},
			{"last 5 would split call_2", &parleyv1.GetChatContextRequest{MaxItems: 5}, 10, 13, true},
			{"after and until", &parleyv1.GetChatContextRequest{AfterSeq: 4, UntilSeq: 9}, 5, 9, false},
			{"until with a budget", &parleyv1.GetChatContextRequest{UntilSeq: 9, MaxItems: 3}, 7, 9, true},
			{"bytes for none", &parleyv1.GetChatContextRequest{MaxBytes: 1}, 0, 0, true},
			{"after the end", &parleyv1.GetChatContextRequest{AfterSeq: 13}, 0, 0, false},
		} {
			tc.req.ConversationId = id
			ids, resp := contextSeqs(t, c, owner, tc.req)
			if resp.GetFirstSeq() != tc.first || resp.GetLastSeq() != tc.end || resp.GetTruncated() != tc.truncated {
				t.Errorf("%s: seqs %d..%d truncated %v, want %d..%d truncated %v", tc.name, resp.GetFirstSeq(), resp.GetLastSeq(), resp.GetTruncated(), tc.first, tc.end, tc.truncated)
			}
			wantN := 0
			if tc.end > 0 {
				wantN = int(tc.end - tc.first + 1)
			}
			if len(ids) != wantN || len(resp.GetChatContext().GetItems()) != wantN {
				t.Errorf("%s: %d items (%v), want %d", tc.name, len(ids), ids, wantN)
			}
		}
		// Without instructions: the system and developer messages go, and
		// take no budget.
		ids, resp = contextSeqs(t, c, owner, &parleyv1.GetChatContextRequest{ConversationId: id, ExcludeInstructions: true, MaxItems: 11})
		if slices.Contains(ids, "item_sys") || slices.Contains(ids, "item_dev") || len(ids) != 11 || resp.GetTruncated() || resp.GetFirstSeq() != 3 {
			t.Errorf("exclude_instructions: %v, truncated %v", ids, resp.GetTruncated())
		}
	})
}

// TestUnknownKeysSurvive: keys a newer livekit-agents writes are stored
// with their item, part of its content, and given back by GetChatContext's
// JSON and by ListItems.
func TestUnknownKeysSurvive(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	const future = `{"items":[{"id":"m","type":"message","role":"user","content":["hi"],"interrupted":false,"extra":{},` +
		`"metrics":{"e2e_latency":0.5,"speech_rate":{"wpm":150}},"created_at":1800000000.5,"sentiment":{"label":"calm"}},` +
		`{"id":"h","type":"agent_handoff","new_agent_id":"b","created_at":1800000001.0,"reason":"escalation"}]}`
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner := ts.user(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		app := &parleyv1.AppendItemsRequest{ConversationId: id, ItemsJson: future}
		if _, err := c.AppendItems(ctx, as(owner, app)); err != nil {
			t.Fatal(err)
		}
		if again, err := c.AppendItems(ctx, as(owner, app)); err != nil || !again.Msg.GetReplayed() {
			t.Fatalf("the same items again = %v, %v; want a replay", again, err)
		}
		changed := &parleyv1.AppendItemsRequest{ConversationId: id, ItemsJson: strings.Replace(future, "escalation", "transfer", 1)}
		if _, err := c.AppendItems(ctx, as(owner, changed)); codeOf(err) != connect.CodeAlreadyExists {
			t.Fatalf("an item again with another unknown value = %v, want already_exists", err)
		}
		_, resp := contextSeqs(t, c, owner, &parleyv1.GetChatContextRequest{ConversationId: id})
		if diff := cmp.Diff(numbersAsText(t, []byte(future)), numbersAsText(t, []byte(resp.GetChatContextJson()))); diff != "" {
			t.Fatalf("chat_context_json (-sent +got):\n%s", diff)
		}
		list, err := c.ListItems(ctx, as(owner, &parleyv1.ListItemsRequest{ConversationId: id, Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
		if err != nil {
			t.Fatal(err)
		}
		items := list.Msg.GetItems()
		if len(items) != 2 {
			t.Fatalf("ListItems: %d items", len(items))
		}
		m := items[0].GetItem().GetMessage()
		if diff := cmp.Diff(map[string]string{"sentiment": `{"label":"calm"}`}, m.GetUnknownJson()); diff != "" {
			t.Errorf("ListItems message unknown_json (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]string{"speech_rate": `{"wpm":150}`}, m.GetMetrics().GetUnknownJson()); diff != "" {
			t.Errorf("ListItems metrics unknown_json (-want +got):\n%s", diff)
		}
		if got := items[1].GetItem().GetAgentHandoff().GetUnknownJson(); !cmp.Equal(got, map[string]string{"reason": `"escalation"`}) {
			t.Errorf("ListItems handoff unknown_json = %v", got)
		}
	})
}

func TestGetChatContextRefuses(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner, other := ts.user(t), ts.user(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		for name, tc := range map[string]struct {
			tok  caller
			req  *parleyv1.GetChatContextRequest
			code connect.Code
		}{
			"someone else's": {other, &parleyv1.GetChatContextRequest{ConversationId: id}, connect.CodeNotFound},
			"too many items": {owner, &parleyv1.GetChatContextRequest{ConversationId: id, MaxItems: 10001}, connect.CodeInvalidArgument},
			"too many bytes": {owner, &parleyv1.GetChatContextRequest{ConversationId: id, MaxBytes: 4<<20 + 1}, connect.CodeInvalidArgument},
			"until <= after": {owner, &parleyv1.GetChatContextRequest{ConversationId: id, AfterSeq: 3, UntilSeq: 3}, connect.CodeInvalidArgument},
			"bad id":         {owner, &parleyv1.GetChatContextRequest{ConversationId: "x"}, connect.CodeInvalidArgument},
		} {
			if _, err := c.GetChatContext(ctx, as(tc.tok, tc.req)); codeOf(err) != tc.code {
				t.Errorf("%s: %v, want %v", name, err, tc.code)
			}
		}
		// The owner and any agent (the one restoring its context) may read it.
		for _, who := range []caller{owner, ts.agent(t)} {
			empty, err := c.GetChatContext(ctx, as(who, &parleyv1.GetChatContextRequest{ConversationId: id}))
			if err != nil || empty.Msg.GetChatContextJson() != `{"items":[]}` || empty.Msg.GetLastSeq() != 0 || empty.Msg.GetTruncated() {
				t.Errorf("empty context = %v, %v", empty, err)
			}
		}
		text := &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{Id: "m", Role: parleyv1.ChatRole_CHAT_ROLE_USER}}}
		for name, tc := range map[string]struct {
			req  *parleyv1.AppendItemsRequest
			says string
		}{
			"both":         {&parleyv1.AppendItemsRequest{Items: []*parleyv1.ChatContext_ChatItem{text}, ItemsJson: `[]`}, "not both"},
			"not JSON":     {&parleyv1.AppendItemsRequest{ItemsJson: `{"items": [`}, "chat context"},
			"audio":        {&parleyv1.AppendItemsRequest{ItemsJson: `[{"id":"a","type":"message","role":"user","content":[{"type":"audio_content","frame":[]}]}]`}, "audio content is not stored"},
			"unknown type": {&parleyv1.AppendItemsRequest{ItemsJson: `[{"id":"a","type":"thought","text":"x"}]`}, `unknown type "thought"`},
			"known as unknown": {&parleyv1.AppendItemsRequest{Items: []*parleyv1.ChatContext_ChatItem{{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{
				Id: "h", NewAgentId: "b", UnknownJson: map[string]string{"new_agent_id": `"c"`},
			}}}}}, `items[0]: unknown_json key "new_agent_id" is a key livekit-agents 1.8.9 defines`},
			"unknown too big": {&parleyv1.AppendItemsRequest{ItemsJson: `[{"id":"a","type":"agent_handoff","new_agent_id":"b","notes":"` + strings.Repeat("x", 256<<10) + `"}]`}, "at most 262144 bytes"},
			"no id":           {&parleyv1.AppendItemsRequest{ItemsJson: `[{"type":"agent_handoff","new_agent_id":"b"}]`}, "id"},
			"bad extra":       {&parleyv1.AppendItemsRequest{Items: []*parleyv1.ChatContext_ChatItem{{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{Id: "f", CallId: "c", ExtraJson: map[string]string{"k": "{"}}}}}}, "items[0]: extra_json"},
			"empty list":      {&parleyv1.AppendItemsRequest{ItemsJson: `{"items":[]}`}, "items"},
			// The proto's strings are checked for it on the wire; the JSON's
			// escapes only once decoded.
			"NUL in text": {&parleyv1.AppendItemsRequest{ItemsJson: `[{"id":"a","type":"message","role":"user","content":["a\u0000b"]}]`}, "items[0]: message.content[0].text: value must not contain the NUL character (U+0000)"},
			"NUL in args": {&parleyv1.AppendItemsRequest{ItemsJson: `[{"id":"a","type":"message","role":"user","content":["ok"]},{"id":"f","type":"function_call","call_id":"c","name":"n","arguments":"\u0000"}]`}, "items[1]: function_call.arguments: value must not contain"},
		} {
			tc.req.ConversationId = id
			_, err := c.AppendItems(ctx, as(owner, tc.req))
			if codeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%s: AppendItems = %v, want invalid_argument saying %q", name, err, tc.says)
			}
		}
	})
}
