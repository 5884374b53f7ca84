package rpc

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

// UpdateConversation changes a conversation's title and metadata under a
// field mask.
func (s *ConversationServer) UpdateConversation(ctx context.Context, req *connect.Request[parleyv1.UpdateConversationRequest]) (*connect.Response[parleyv1.UpdateConversationResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, err
	}
	c, err := s.svc.UpdateConversation(ctx, p, conversation.Update{
		ConversationID: id,
		Title:          req.Msg.GetTitle(),
		Metadata:       req.Msg.GetMetadata(),
		Fields:         req.Msg.GetUpdateMask().GetPaths(),
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.UpdateConversationResponse{Conversation: conversationToProto(c)}), nil
}

// filterFromProto returns the filter of a ListConversations request.
func filterFromProto(m *parleyv1.ListConversationsRequest) (conversation.Filter, error) {
	f := conversation.Filter{Metadata: m.GetMetadata()}
	var err error
	if f.CreatedAfter, err = optionalTime("created_after", m.GetCreatedAfter()); err != nil {
		return conversation.Filter{}, err
	}
	if f.CreatedBefore, err = optionalTime("created_before", m.GetCreatedBefore()); err != nil {
		return conversation.Filter{}, err
	}
	return f, nil
}

// optionalTime is ts as a time, the zero time when ts is unset.
func optionalTime(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, rule.Broken(field + " must be a timestamp of the years 1 to 9999")
	}
	return ts.AsTime(), nil
}
