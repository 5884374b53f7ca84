package rpc

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/agentsjson"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// exportItemsOfEveryKind is one chat item of every kind, with the fields a reader of an
// export looks for: an interrupted message with metrics, a tool call and
// its output, a failing call, a handoff and a config update.
func exportItemsOfEveryKind() []*parleyv1.ChatContext_ChatItem {
	at := timestamppb.New(time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC))
	text := func(s string) []*parleyv1.ChatMessage_ChatContent {
		return []*parleyv1.ChatMessage_ChatContent{{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: s}}}
	}
	return []*parleyv1.ChatContext_ChatItem{
		{Item: &parleyv1.ChatContext_ChatItem_AgentConfigUpdate{AgentConfigUpdate: &parleyv1.AgentConfigUpdate{
			Id: "cfg_1", Instructions: proto.String("You book trains."), ToolsAdded: []string{"find_trains", "book"}, HasToolsAdded: true, CreatedAt: at,
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Id: "msg_1", Role: parleyv1.ChatRole_CHAT_ROLE_USER, Content: text("A train to Lyon tomorrow?"), CreatedAt: at,
			TranscriptConfidence: proto.Float64(0.93),
			Metrics:              &parleyv1.MetricsReport{EndOfTurnDelay: proto.Float64(0.4), TranscriptionDelay: proto.Float64(0.2)},
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{
			Id: "fc_1", CallId: "call_1", Name: "find_trains", Arguments: `{"to":"Lyon","day":"tomorrow"}`, CreatedAt: at,
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{
			Id: "fco_1", CallId: "call_1", Name: "find_trains", Output: `[{"dep":"08:04"}]`, CreatedAt: at,
			ReplyRequired: proto.Bool(true), // to_dict() writes livekit-agents' default for unset
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{
			Id: "fc_2", CallId: "call_2", Name: "book", Arguments: `{"dep":"08:04"}`, CreatedAt: at,
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{
			Id: "fco_2", CallId: "call_2", Name: "book", Output: "payment declined", IsError: true, CreatedAt: at,
			ReplyRequired: proto.Bool(false),
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Id: "msg_2", Role: parleyv1.ChatRole_CHAT_ROLE_ASSISTANT, Content: text("The 08:04 is free, but your payment was decl"), Interrupted: true, CreatedAt: at,
			Metrics: &parleyv1.MetricsReport{LlmNodeTtft: proto.Float64(0.31), TtsNodeTtfb: proto.Float64(0.12), E2ELatency: proto.Float64(0.9)},
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{
			Id: "ho_1", OldAgentId: proto.String("booking"), NewAgentId: "billing", CreatedAt: at,
		}}},
	}
}

// TestExportCoversEveryItemKind: after a SaveTurn and an AppendItems of
// every kind, the JSON export keeps its conversation and messages and adds
// the chat context as livekit-agents' from_dict() JSON, every item as
// appended; the Markdown export shows each item, in order, readably.
func TestExportCoversEveryItemKind(t *testing.T) {
	t.Parallel()
	env := newFileEnv(t, "dir", fileEnvOptions{})
	ctx := t.Context()
	owner := env.user(t)
	conv := env.conversation(t, owner)
	if _, err := env.convs.SaveTurn(ctx, as(owner, &parleyv1.SaveTurnRequest{ConversationId: conv, TurnId: "t1", UserMessage: "hello", AssistantMessage: "hi there"})); err != nil {
		t.Fatal(err)
	}
	items := exportItemsOfEveryKind()
	if _, err := env.convs.AppendItems(ctx, as(env.agent(t), &parleyv1.AppendItemsRequest{ConversationId: conv, Items: items, Agent: "booking"})); err != nil {
		t.Fatal(err)
	}

	exp, err := env.convs.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv, Format: parleyv1.ExportFormat_EXPORT_FORMAT_JSON}))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := httpDo(t, http.MethodGet, exp.Msg.GetDownloadUrl(), nil, nil)
	if resp.StatusCode != http.StatusOK || int64(len(body)) != exp.Msg.GetFile().GetSizeBytes() {
		t.Fatalf("download = %d, %d bytes", resp.StatusCode, len(body))
	}
	var doc struct {
		Conversation json.RawMessage   `json:"conversation"`
		Messages     []json.RawMessage `json:"messages"`
		ChatContext  json.RawMessage   `json:"chat_context"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("export is not JSON: %v\n%s", err, body)
	}
	var pc parleyv1.Conversation
	if err := protojson.Unmarshal(doc.Conversation, &pc); err != nil || pc.GetId() != conv {
		t.Errorf("conversation = %v, %v", &pc, err)
	}
	// The messages are the Messages: the turn's two, then the two text
	// messages among the items.
	var contents []string
	for _, raw := range doc.Messages {
		var m parleyv1.Message
		if err := protojson.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		contents = append(contents, m.GetContent())
	}
	if want := []string{"hello", "hi there", "A train to Lyon tomorrow?", "The 08:04 is free, but your payment was decl"}; !cmp.Equal(contents, want) {
		t.Errorf("messages %q, want %q", contents, want)
	}
	got, err := agentsjson.Decode(doc.ChatContext)
	if err != nil {
		t.Fatalf("chat_context does not load as from_dict's JSON: %v\n%s", err, doc.ChatContext)
	}
	if len(got) != 2+len(items) {
		t.Fatalf("chat_context has %d items, want %d", len(got), 2+len(items))
	}
	if m := got[0].GetMessage(); m.GetRole() != parleyv1.ChatRole_CHAT_ROLE_USER || m.GetContent()[0].GetText() != "hello" ||
		got[1].GetMessage().GetRole() != parleyv1.ChatRole_CHAT_ROLE_ASSISTANT {
		t.Errorf("chat_context starts %v, want the turn", got[:2])
	}
	if diff := cmp.Diff(items, got[2:], protocmp.Transform()); diff != "" {
		t.Errorf("chat_context items differ from those appended (-appended +exported):\n%s", diff)
	}

	md, err := env.convs.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv, Format: parleyv1.ExportFormat_EXPORT_FORMAT_MARKDOWN}))
	if err != nil {
		t.Fatal(err)
	}
	resp, body = httpDo(t, http.MethodGet, md.Msg.GetDownloadUrl(), nil, nil)
	text := string(body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(text, "# files\n") {
		t.Fatalf("markdown = %d %q", resp.StatusCode, text)
	}
	// Each item in seq order: a reader sees what was said, called,
	// answered, failed, cut off and handed over.
	want := []string{
		"**User** · ", "\n\nhello\n",
		"**Assistant** · ", "\n\nhi there\n",
		"**Agent config update** · ", "> You book trains.", "Tools added: `find_trains`, `book`",
		"**User** · ", "A train to Lyon tomorrow?",
		"**Tool call** · ", "`find_trains` (call `call_1`) with arguments:", "\"to\": \"Lyon\"",
		"**Tool output** · ", "`find_trains` (call `call_1`) returned:", `[{"dep":"08:04"}]`,
		"**Tool call** · ", "`book` (call `call_2`)",
		"**Tool error** · ", "`book` (call `call_2`) failed with:", "payment declined",
		"**Assistant** · *interrupted* · ", "your payment was decl",
		"**Agent handoff** · ", "From `booking` to `billing`.",
	}
	rest := text
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("markdown lacks %q after what came before it:\n%s", w, text)
		}
		rest = rest[i+len(w):]
	}
	if n := strings.Count(text, "\n---\n"); n != 2+len(items) {
		t.Errorf("markdown has %d entries, want %d:\n%s", n, 2+len(items), text)
	}
}

// TestExportOfAConversationWithoutItems: an empty conversation exports an
// empty chat context beside its empty messages.
func TestExportOfAConversationWithoutItems(t *testing.T) {
	t.Parallel()
	env := newFileEnv(t, "dir", fileEnvOptions{})
	owner := env.user(t)
	conv := env.conversation(t, owner)
	exp, err := env.convs.ExportConversation(t.Context(), as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv}))
	if err != nil {
		t.Fatal(err)
	}
	_, body := httpDo(t, http.MethodGet, exp.Msg.GetDownloadUrl(), nil, nil)
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("export is not JSON: %v\n%s", err, body)
	}
	if string(doc["messages"]) != "[]" || string(doc["chat_context"]) != `{"items":[]}` || len(doc) != 3 {
		t.Errorf("export = %s", body)
	}
}
