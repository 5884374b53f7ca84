package rpc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/parley-dev/parley/internal/agentsjson"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

// itemPayloadJSON makes an item's stored payload; readers ignore fields
// they do not know, so an item a newer release stored still reads.
var (
	itemPayloadJSON = protojson.MarshalOptions{}
	itemReadJSON    = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// itemFromProto converts a client's chat item to the domain's: the
// payload is its protobuf JSON, compacted, because protojson varies its
// spacing from build to build and the payload should not.
func itemFromProto(ci *parleyv1.ChatContext_ChatItem) (conversation.Item, error) {
	var it conversation.Item
	switch x := ci.GetItem().(type) {
	case *parleyv1.ChatContext_ChatItem_Message:
		it.Kind, it.ID, it.Role = conversation.ItemMessage, x.Message.GetId(), chatRoleFromProto(x.Message.GetRole())
		it.Text = messageText(x.Message)
	case *parleyv1.ChatContext_ChatItem_FunctionCall:
		it.Kind, it.ID, it.CallID = conversation.ItemFunctionCall, x.FunctionCall.GetId(), x.FunctionCall.GetCallId()
	case *parleyv1.ChatContext_ChatItem_FunctionCallOutput:
		it.Kind, it.ID, it.CallID = conversation.ItemFunctionCallOutput, x.FunctionCallOutput.GetId(), x.FunctionCallOutput.GetCallId()
	case *parleyv1.ChatContext_ChatItem_AgentHandoff:
		it.Kind, it.ID = conversation.ItemAgentHandoff, x.AgentHandoff.GetId()
	case *parleyv1.ChatContext_ChatItem_AgentConfigUpdate:
		it.Kind, it.ID = conversation.ItemAgentConfigUpdate, x.AgentConfigUpdate.GetId()
	default:
		// The domain refuses an item of no known kind by its rule.
		return it, nil
	}
	b, err := itemPayloadJSON.Marshal(ci)
	if err != nil {
		return conversation.Item{}, fmt.Errorf("encode item %q: %w", it.ID, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return conversation.Item{}, fmt.Errorf("compact item %q: %w", it.ID, err)
	}
	it.Payload = compact.Bytes()
	return it, nil
}

// messageText is a message's text as one string, its parts joined by
// newlines as livekit-agents' ChatMessage.text_content joins them.
func messageText(m *parleyv1.ChatMessage) string {
	parts := make([]string, 0, len(m.GetContent()))
	for _, c := range m.GetContent() {
		if t, ok := c.GetPayload().(*parleyv1.ChatMessage_ChatContent_Text); ok {
			parts = append(parts, t.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func chatRoleFromProto(r parleyv1.ChatRole) conversation.Role {
	switch r {
	case parleyv1.ChatRole_CHAT_ROLE_USER:
		return conversation.RoleUser
	case parleyv1.ChatRole_CHAT_ROLE_ASSISTANT:
		return conversation.RoleAssistant
	case parleyv1.ChatRole_CHAT_ROLE_SYSTEM:
		return conversation.RoleSystem
	case parleyv1.ChatRole_CHAT_ROLE_DEVELOPER:
		return conversation.RoleDeveloper
	default:
		return 0
	}
}

// appendedItems returns AppendItems' items, given as protos or as the
// JSON of livekit-agents' to_dict(). Each must render for from_dict()
// (agentsjson.Check), so that every stored item does.
func appendedItems(m *parleyv1.AppendItemsRequest) ([]conversation.Item, error) {
	cis := m.GetItems()
	if text := m.GetItemsJson(); text != "" {
		if len(cis) > 0 {
			return nil, rule.Broken("set items or items_json, not both")
		}
		var err error
		if cis, err = agentsjson.Decode([]byte(text)); err != nil {
			// Decode's errors are all broken rules, written for clients.
			return nil, rule.Broken("items_json: " + err.Error())
		}
	}
	return chatItems(cis)
}

// chatItems converts chat items for storing; each must render for
// from_dict() (agentsjson.Check).
func chatItems(cis []*parleyv1.ChatContext_ChatItem) ([]conversation.Item, error) {
	out := make([]conversation.Item, len(cis))
	for i, ci := range cis {
		// Items decoded from to_dict() JSON passed no validator: its \u0000
		// escapes reach here, and PostgreSQL text cannot hold them.
		if err := nulError(ci.ProtoReflect()); err != nil {
			return nil, rule.Broken(fmt.Sprintf("items[%d]: %s", i, strings.TrimPrefix(err.Error(), "validation error: ")))
		}
		if ci.GetItem() != nil {
			if err := agentsjson.Check(ci); err != nil {
				return nil, rule.Broken(fmt.Sprintf("items[%d]: %v", i, err))
			}
		}
		it, err := itemFromProto(ci)
		if err != nil {
			return nil, err
		}
		out[i] = it
	}
	return out, nil
}

// chatItemFromPayload reads a stored item's payload back. A payload that
// does not read is a bug (the server wrote it), so its error is internal.
func chatItemFromPayload(it conversation.Item) (*parleyv1.ChatContext_ChatItem, error) {
	ci := &parleyv1.ChatContext_ChatItem{}
	if err := itemReadJSON.Unmarshal(it.Payload, ci); err != nil {
		return nil, fmt.Errorf("decode stored item %d of conversation %s: %w", it.Seq, it.ConversationID, err)
	}
	return ci, nil
}

func itemToProto(it conversation.Item) (*parleyv1.Item, error) {
	ci, err := chatItemFromPayload(it)
	if err != nil {
		return nil, err
	}
	return &parleyv1.Item{
		Agent:          it.Agent,
		Seq:            it.Seq,
		MessageId:      it.MessageID,
		Item:           ci,
		ConversationId: it.ConversationID.String(),
		MessageSeq:     it.MessageSeq,
		StoredAt:       timestamp(it.StoredAt),
	}, nil
}

func itemsToProto(items []conversation.Item) ([]*parleyv1.Item, error) {
	out := make([]*parleyv1.Item, len(items))
	for i, it := range items {
		pi, err := itemToProto(it)
		if err != nil {
			return nil, err
		}
		out[i] = pi
	}
	return out, nil
}
