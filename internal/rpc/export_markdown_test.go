package rpc

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// TestMarkdownItems renders one item of every kind and checks what a
// reader needs to see of each.
func TestMarkdownItems(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	stored := at.Add(time.Hour)
	ts := timestamppb.New(at)
	text := func(s string) *parleyv1.ChatMessage_ChatContent {
		return &parleyv1.ChatMessage_ChatContent{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: s}}
	}
	for _, tc := range []struct {
		name string
		item *parleyv1.ChatContext_ChatItem
		want string // the whole rendering
	}{
		{"message", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Role: parleyv1.ChatRole_CHAT_ROLE_USER, Content: []*parleyv1.ChatMessage_ChatContent{text("Hi!"), text("Second part")}, CreatedAt: ts,
		}}}, "\n---\n\n**User** · 2026-12-01T10:00:00Z · #7\n\nHi!\n\nSecond part\n"},
		{"interrupted message without its own time", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Role: parleyv1.ChatRole_CHAT_ROLE_ASSISTANT, Content: []*parleyv1.ChatMessage_ChatContent{text("Let me che")}, Interrupted: true,
		}}}, "\n---\n\n**Assistant** · *interrupted* · 2026-12-01T11:00:00Z · #7\n\nLet me che\n"},
		{"developer message with an image", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Role: parleyv1.ChatRole_CHAT_ROLE_DEVELOPER, CreatedAt: ts, Content: []*parleyv1.ChatMessage_ChatContent{
				{Payload: &parleyv1.ChatMessage_ChatContent_Image{Image: &parleyv1.ImageContent{Image: "data:image/png;base64,AAAA"}}},
				{Payload: &parleyv1.ChatMessage_ChatContent_CacheBreakpoint{CacheBreakpoint: &parleyv1.CacheBreakpoint{}}},
			},
		}}}, "\n---\n\n**Developer** · 2026-12-01T10:00:00Z · #7\n\n*[image]*\n"},
		{"function call", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{
			Name: "get_weather", CallId: "call_1", Arguments: `{"city":"Paris","days":2}`, CreatedAt: ts,
		}}}, "\n---\n\n**Tool call** · 2026-12-01T10:00:00Z · #7\n\n`get_weather` (call `call_1`) with arguments:\n\n```json\n{\n  \"city\": \"Paris\",\n  \"days\": 2\n}\n```\n"},
		{"function call output", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{
			Name: "get_weather", CallId: "call_1", Output: "sunny, 21°C", CreatedAt: ts,
		}}}, "\n---\n\n**Tool output** · 2026-12-01T10:00:00Z · #7\n\n`get_weather` (call `call_1`) returned:\n\n```\nsunny, 21°C\n```\n"},
		{"function call error", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{
			Name: "book", CallId: "call_2", Output: "no seats\nleft", IsError: true, CreatedAt: ts,
		}}}, "\n---\n\n**Tool error** · 2026-12-01T10:00:00Z · #7\n\n`book` (call `call_2`) failed with:\n\n```\nno seats\nleft\n```\n"},
		{"agent handoff", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{
			OldAgentId: proto.String("greeter"), NewAgentId: "billing", CreatedAt: ts,
		}}}, "\n---\n\n**Agent handoff** · 2026-12-01T10:00:00Z · #7\n\nFrom `greeter` to `billing`.\n"},
		{"first agent", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{
			NewAgentId: "greeter", CreatedAt: ts,
		}}}, "\n---\n\n**Agent handoff** · 2026-12-01T10:00:00Z · #7\n\nTo `greeter`.\n"},
		{"agent config update", &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_AgentConfigUpdate{AgentConfigUpdate: &parleyv1.AgentConfigUpdate{
			Instructions: proto.String("Be brief.\nSpeak French."), ToolsAdded: []string{"book", "cancel"}, HasToolsRemoved: true, CreatedAt: ts,
		}}}, "\n---\n\n**Agent config update** · 2026-12-01T10:00:00Z · #7\n\nInstructions:\n\n> Be brief.\n> Speak French.\n\nTools added: `book`, `cancel`\n\nTools removed: *(none)*\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			if err := writeMarkdownItem(&b, 7, stored, tc.item); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("rendered\n%q\nwant\n%q", b.String(), tc.want)
			}
		})
	}
}

// TestMarkdownFencesHoldTheirContent: backticks in names, arguments or
// outputs never end their code early.
func TestMarkdownFencesHoldTheirContent(t *testing.T) {
	t.Parallel()
	out := "````\n# not a heading\n```"
	var b strings.Builder
	err := writeMarkdownItem(&b, 1, time.Unix(0, 0), &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{
		FunctionCallOutput: &parleyv1.FunctionCallOutput{Name: "a`b\nc", CallId: "`x`", Output: out},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "``a`b c`` (call `` `x` ``) returned:\n\n`````\n" + out + "\n`````\n"; !strings.HasSuffix(b.String(), want) {
		t.Errorf("rendered %q, want it to end %q", b.String(), want)
	}
}
