package rpc

import (
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

func conversationToProto(c conversation.Conversation) *parleyv1.Conversation {
	pc := &parleyv1.Conversation{
		Id:           c.ID.String(),
		UserId:       c.UserID.String(),
		Title:        c.Title,
		Metadata:     c.Metadata,
		MessageCount: c.MessageCount,
		LastSeq:      c.LastSeq,
		ItemCount:    c.ItemCount,
		LastItemSeq:  c.LastItemSeq,
		CreatedAt:    timestamp(c.CreatedAt),
		UpdatedAt:    timestamp(c.UpdatedAt),
	}
	if c.RoomID != uuid.Nil {
		pc.RoomId = c.RoomID.String()
	}
	return pc
}

func conversationsToProto(cs []conversation.Conversation) []*parleyv1.Conversation {
	out := make([]*parleyv1.Conversation, len(cs))
	for i, c := range cs {
		out[i] = conversationToProto(c)
	}
	return out
}

func messageToProto(m conversation.Message) *parleyv1.Message {
	return &parleyv1.Message{
		Id:             m.ID.String(),
		ConversationId: m.ConversationID.String(),
		Seq:            m.Seq,
		Role:           roleToProto(m.Role),
		Content:        m.Content,
		TurnId:         m.TurnID,
		CreatedAt:      timestamp(m.CreatedAt),
	}
}

// messagesToProto converts a page of messages with three allocations
// instead of four per message: the messages and their timestamps come from
// one slice each, and the conversation id, the same on a whole page, is
// spelled once.
func messagesToProto(ms []conversation.Message) []*parleyv1.Message {
	out := make([]*parleyv1.Message, len(ms))
	slab := make([]parleyv1.Message, len(ms))
	stamps := make([]timestamppb.Timestamp, len(ms))
	var convID uuid.UUID
	var convIDText string
	for i, m := range ms {
		if i == 0 || m.ConversationID != convID {
			convID, convIDText = m.ConversationID, m.ConversationID.String()
		}
		pm := &slab[i]
		pm.Id = m.ID.String()
		pm.ConversationId = convIDText
		pm.Seq = m.Seq
		pm.Role = roleToProto(m.Role)
		pm.Content = m.Content
		pm.TurnId = m.TurnID
		if !m.CreatedAt.IsZero() {
			stamps[i].Seconds, stamps[i].Nanos = m.CreatedAt.Unix(), int32(m.CreatedAt.Nanosecond())
			pm.CreatedAt = &stamps[i]
		}
		out[i] = pm
	}
	return out
}

func roleToProto(r conversation.Role) parleyv1.Role {
	switch r {
	case conversation.RoleUser:
		return parleyv1.Role_ROLE_USER
	case conversation.RoleAssistant:
		return parleyv1.Role_ROLE_ASSISTANT
	case conversation.RoleSystem:
		return parleyv1.Role_ROLE_SYSTEM
	default:
		return parleyv1.Role_ROLE_UNSPECIFIED
	}
}

func orderFromProto(o parleyv1.Order) (conversation.Order, error) {
	switch o {
	case parleyv1.Order_ORDER_UNSPECIFIED, parleyv1.Order_ORDER_NEWEST_FIRST:
		return conversation.OrderNewestFirst, nil
	case parleyv1.Order_ORDER_OLDEST_FIRST:
		return conversation.OrderOldestFirst, nil
	default:
		return 0, rule.Broken("unknown order")
	}
}

func turnFromProto(m *parleyv1.SaveTurnRequest) (conversation.Turn, error) {
	id, err := parseUUID("conversation_id", m.GetConversationId())
	if err != nil {
		return conversation.Turn{}, err
	}
	return conversation.Turn{
		ConversationID:   id,
		TurnID:           m.GetTurnId(),
		UserMessage:      m.GetUserMessage(),
		AssistantMessage: m.GetAssistantMessage(),
	}, nil
}

func listMessagesFromProto(m *parleyv1.ListMessagesRequest) (conversation.ListMessagesRequest, error) {
	id, err := parseUUID("conversation_id", m.GetConversationId())
	if err != nil {
		return conversation.ListMessagesRequest{}, err
	}
	order, err := orderFromProto(m.GetOrder())
	if err != nil {
		return conversation.ListMessagesRequest{}, err
	}
	return conversation.ListMessagesRequest{
		ConversationID: id,
		PageSize:       int(m.GetPageSize()),
		PageToken:      m.GetPageToken(),
		Order:          order,
	}, nil
}
