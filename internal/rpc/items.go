package rpc

import (
	"context"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// AppendItems appends chat items atomically, exactly once per item id.
func (s *ConversationServer) AppendItems(ctx context.Context, req *connect.Request[parleyv1.AppendItemsRequest]) (*connect.Response[parleyv1.AppendItemsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, err
	}
	items, err := appendedItems(req.Msg)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	out, err := s.svc.AppendItems(ctx, p, conversation.AppendItemsRequest{
		ConversationID: id, Agent: req.Msg.GetAgent(), MessageID: req.Msg.GetMessageId(), Items: items,
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	stored, err := itemsToProto(out.Items)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.AppendItemsResponse{Items: stored, Replayed: out.Replayed}), nil
}

// ListItems pages through a conversation's chat items of every kind by seq.
func (s *ConversationServer) ListItems(ctx context.Context, req *connect.Request[parleyv1.ListItemsRequest]) (*connect.Response[parleyv1.ListItemsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, err
	}
	order, err := orderFromProto(req.Msg.GetOrder())
	if err != nil {
		return nil, err
	}
	page, err := s.svc.ListItems(ctx, p, conversation.ListItemsRequest{
		ConversationID: id, PageSize: int(req.Msg.GetPageSize()), PageToken: req.Msg.GetPageToken(),
		Order: order, Agent: req.Msg.GetAgent(), AfterSeq: req.Msg.GetAfterSeq(),
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	items, err := itemsToProto(page.Items)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListItemsResponse{
		ConversationId: page.ConversationID.String(),
		Items:          items,
		NextPageToken:  page.NextPageToken,
	}), nil
}

// WatchItems streams the stored items after after_seq, then each new one,
// with WatchMessages' transport and ending rules.
func (s *ConversationServer) WatchItems(ctx context.Context, req *connect.Request[parleyv1.WatchItemsRequest], stream *connect.ServerStream[parleyv1.WatchItemsResponse]) error {
	open := func(p auth.Principal, id uuid.UUID) (watcher[conversation.Item], error) {
		return s.svc.WatchItems(ctx, p, id, req.Msg.GetAfterSeq())
	}
	return serveWatch(ctx, s, req.Msg.GetConversationId(), open, stream, watchResponses[conversation.Item, parleyv1.WatchItemsResponse]{
		entry: func(it conversation.Item) (*parleyv1.WatchItemsResponse, error) {
			pi, err := itemToProto(it)
			return &parleyv1.WatchItemsResponse{Item: pi}, err
		},
		heartbeat: func(t *timestamppb.Timestamp) *parleyv1.WatchItemsResponse {
			return &parleyv1.WatchItemsResponse{Heartbeat: t}
		},
	})
}
