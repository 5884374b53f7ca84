package rpc

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/agentsjson"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// GetChatContext answers the conversation as LiveKit's ChatContext, within
// a budget, in proto and as livekit-agents' from_dict() JSON.
func (s *ConversationServer) GetChatContext(ctx context.Context, req *connect.Request[parleyv1.GetChatContextRequest]) (*connect.Response[parleyv1.GetChatContextResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	r, err := chatContextFromProto(req.Msg)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	cc, err := s.svc.GetChatContext(ctx, p, r)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	resp, err := chatContextToProto(cc)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(resp), nil
}

func chatContextFromProto(m *parleyv1.GetChatContextRequest) (conversation.ChatContextRequest, error) {
	id, err := parseUUID("conversation_id", m.GetConversationId())
	if err != nil {
		return conversation.ChatContextRequest{}, err
	}
	return conversation.ChatContextRequest{
		ConversationID:      id,
		MaxItems:            int(m.GetMaxItems()),
		MaxBytes:            m.GetMaxBytes(),
		AfterSeq:            m.GetAfterSeq(),
		UntilSeq:            m.GetUntilSeq(),
		ExcludeInstructions: m.GetExcludeInstructions(),
	}, nil
}

func chatContextToProto(cc conversation.ChatContext) (*parleyv1.GetChatContextResponse, error) {
	items := make([]*parleyv1.ChatContext_ChatItem, len(cc.Items))
	for i, it := range cc.Items {
		ci, err := chatItemFromPayload(it)
		if err != nil {
			return nil, err
		}
		items[i] = ci
	}
	js, err := agentsjson.Encode(items)
	if err != nil {
		// Items are checked before they are stored: this is a bug.
		return nil, fmt.Errorf("render chat context: %w", err)
	}
	return &parleyv1.GetChatContextResponse{
		ChatContext:     &parleyv1.ChatContext{Items: items},
		ChatContextJson: string(js),
		FirstSeq:        cc.FirstSeq,
		LastSeq:         cc.LastSeq,
		Truncated:       cc.Truncated,
	}, nil
}
