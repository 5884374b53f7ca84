package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// Dispatch is the job metadata Parley gives the agent dispatched into a
// room, as JSON: the conversation to restore and append to, and the seq of
// its last item when the room resumed it.
type Dispatch struct {
	ConversationID string `json:"conversation_id"`
	// LastSeq is where the restore stops (GetChatContext's until_seq); 0
	// restores up to the newest item.
	LastSeq       int64  `json:"last_seq"`
	AgentMetadata string `json:"agent_metadata"`
}

// Agent is a scripted voice agent's memory: the chat context it restored
// and every item it has appended since, as a real agent hands them to its
// LLM on each turn.
type Agent struct {
	client         *Client
	conversationID string
	// name is kept on every item Parley stores for this agent.
	name    string
	history []*parleyv1.ChatContext_ChatItem
	log     *slog.Logger
}

// Turn is one exchange as Parley stored it.
type Turn struct {
	// ID is the turn's message_id, kept on each of its items.
	ID       string
	Items    []*parleyv1.Item
	Replayed bool
	URL      string
}

// Restore replaces the agent's history with the conversation's chat context
// up to d.LastSeq.
func (a *Agent) Restore(ctx context.Context, d Dispatch) error {
	resp, err := a.client.GetChatContext(ctx, a.conversationID, d.LastSeq)
	if err != nil {
		return fmt.Errorf("restore chat context: %w", err)
	}
	a.history = resp.GetChatContext().GetItems()
	a.log.InfoContext(ctx, "chat context restored", slog.Int("items", len(a.history)),
		slog.Int64("first_seq", resp.GetFirstSeq()), slog.Int64("last_seq", resp.GetLastSeq()), slog.Bool("truncated", resp.GetTruncated()))
	return nil
}

// History returns the items the agent knows, oldest first.
func (a *Agent) History() []*parleyv1.ChatContext_ChatItem { return a.history }

// Turn stores one exchange: the user's message, the tool call toolCall
// asks for ("name" or "name {json arguments}", empty for none) with its
// output, and the assistant's answer, in that order, as livekit-agents
// adds them. Empty messages are left out.
func (a *Agent) Turn(ctx context.Context, user, assistant, toolCall string) (Turn, error) {
	turn := Turn{ID: newID("turn_")}
	// Each item's id (and its created_at) is fixed here, before the first
	// try, so every retry sends the very same items and Parley answers a
	// retry after a lost answer with what it stored.
	var items []*parleyv1.ChatContext_ChatItem
	if user != "" {
		items = append(items, message(parleyv1.ChatRole_CHAT_ROLE_USER, user))
	}
	if toolCall != "" {
		name, args, _ := strings.Cut(strings.TrimSpace(toolCall), " ")
		if args = strings.TrimSpace(args); args == "" {
			args = "{}"
		}
		call := &parleyv1.FunctionCall{Id: newID("item_"), CallId: newID("call_"), Name: name, Arguments: args, CreatedAt: timestamppb.Now()}
		items = append(items, &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: call}})
		output, isError := a.runTool(name, args, slices.Concat(a.history, items))
		items = append(items, &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{
			Id: newID("item_"), Name: name, CallId: call.GetCallId(), Output: output, IsError: isError, CreatedAt: timestamppb.Now(),
		}}})
	}
	if assistant != "" {
		items = append(items, message(parleyv1.ChatRole_CHAT_ROLE_ASSISTANT, assistant))
	}
	if len(items) == 0 {
		return turn, errors.New("nothing to store")
	}
	req := &parleyv1.AppendItemsRequest{ConversationId: a.conversationID, Items: items, Agent: a.name, MessageId: turn.ID}
	stored, replayed, url, err := a.client.AppendItems(ctx, req)
	if err != nil {
		return turn, fmt.Errorf("append turn %s: %w", turn.ID, err)
	}
	a.history = append(a.history, items...)
	turn.Items, turn.Replayed, turn.URL = stored, replayed, url
	return turn, nil
}

// runTool is the agent's one scripted tool, context_items, which reports
// how many items the agent's context holds, restored ones included. Any
// other name is an error output, as a framework records a failed tool.
func (a *Agent) runTool(name, args string, chat []*parleyv1.ChatContext_ChatItem) (output string, isError bool) {
	if !json.Valid([]byte(args)) {
		return "arguments are not JSON", true
	}
	if name != "context_items" {
		return fmt.Sprintf("unknown tool %q", name), true
	}
	out, _ := json.Marshal(map[string]int{"items": len(chat)}) // an int map always marshals
	return string(out), false
}

func message(role parleyv1.ChatRole, text string) *parleyv1.ChatContext_ChatItem {
	return &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
		Id: newID("item_"), Role: role, CreatedAt: timestamppb.Now(),
		Content: []*parleyv1.ChatMessage_ChatContent{{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: text}}},
	}}}
}

// newID returns prefix and 12 random hex digits, the shape of livekit-agents'
// item ids (item_xxxxxxxxxxxx).
func newID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return prefix + hex.EncodeToString(b)
}
