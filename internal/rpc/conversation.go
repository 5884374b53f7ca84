package rpc

import (
	"context"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// DefaultHeartbeat is how often an idle WatchMessages stream gets a
// heartbeat when WatchOptions leaves it zero: often enough for proxies and
// browsers (connect-web has no keepalive) not to time it out.
const DefaultHeartbeat = 15 * time.Second

// WatchOptions tune WatchMessages streams on the wire; when a stream must
// end is conversation.Watch's to say.
type WatchOptions struct {
	// Heartbeat is the idle interval after which a stream gets a heartbeat;
	// 0 means DefaultHeartbeat.
	Heartbeat time.Duration
}

// ConversationServer serves parley.v1.ConversationService.
type ConversationServer struct {
	svc   *conversation.Service
	watch WatchOptions
	log   *slog.Logger
}

var _ parleyv1connect.ConversationServiceHandler = (*ConversationServer)(nil)

// NewConversationServer returns a ConversationServer over svc.
func NewConversationServer(svc *conversation.Service, opts WatchOptions, log *slog.Logger) *ConversationServer {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	return &ConversationServer{svc: svc, watch: opts, log: log}
}

// CreateConversation creates a conversation owned by the caller.
func (s *ConversationServer) CreateConversation(ctx context.Context, req *connect.Request[parleyv1.CreateConversationRequest]) (*connect.Response[parleyv1.CreateConversationResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	roomID, err := parseOptionalUUID("room_id", req.Msg.GetRoomId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	c, err := s.svc.CreateConversationWithMetadata(ctx, p, req.Msg.GetTitle(), roomID, req.Msg.GetMetadata())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.CreateConversationResponse{Conversation: conversationToProto(c)}), nil
}

// GetConversation returns one conversation.
func (s *ConversationServer) GetConversation(ctx context.Context, req *connect.Request[parleyv1.GetConversationRequest]) (*connect.Response[parleyv1.GetConversationResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	c, err := s.svc.GetConversation(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.GetConversationResponse{Conversation: conversationToProto(c)}), nil
}

// ListConversations lists the caller's conversations, newest first, those
// the request's filter selects.
func (s *ConversationServer) ListConversations(ctx context.Context, req *connect.Request[parleyv1.ListConversationsRequest]) (*connect.Response[parleyv1.ListConversationsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	f, err := filterFromProto(req.Msg)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.svc.ListConversationsMatching(ctx, p, f, int(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListConversationsResponse{
		Conversations: conversationsToProto(page.Conversations),
		NextPageToken: page.NextPageToken,
	}), nil
}

// DeleteConversation deletes a conversation with its messages.
func (s *ConversationServer) DeleteConversation(ctx context.Context, req *connect.Request[parleyv1.DeleteConversationRequest]) (*connect.Response[parleyv1.DeleteConversationResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	if err := s.svc.DeleteConversation(ctx, p, id); err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.DeleteConversationResponse{}), nil
}

// SaveTurn appends a turn's messages exactly once per turn_id.
func (s *ConversationServer) SaveTurn(ctx context.Context, req *connect.Request[parleyv1.SaveTurnRequest]) (*connect.Response[parleyv1.SaveTurnResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	turn, err := turnFromProto(req.Msg)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	saved, err := s.svc.SaveTurn(ctx, p, turn)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.SaveTurnResponse{
		Messages: messagesToProto(saved.Messages),
		Replayed: saved.Replayed,
	}), nil
}

// ListMessages pages through a conversation's messages by seq.
func (s *ConversationServer) ListMessages(ctx context.Context, req *connect.Request[parleyv1.ListMessagesRequest]) (*connect.Response[parleyv1.ListMessagesResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	r, err := listMessagesFromProto(req.Msg)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.svc.ListMessages(ctx, p, r)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListMessagesResponse{
		ConversationId: page.ConversationID.String(),
		Messages:       messagesToProto(page.Messages),
		NextPageToken:  page.NextPageToken,
	}), nil
}

// ExportConversation is served by the files feature (see WithExports); a
// ConversationServer without one answers unimplemented.
func (s *ConversationServer) ExportConversation(ctx context.Context, _ *connect.Request[parleyv1.ExportConversationRequest]) (*connect.Response[parleyv1.ExportConversationResponse], error) {
	return nil, toConnectError(ctx, s.log, errNoFileStore)
}
