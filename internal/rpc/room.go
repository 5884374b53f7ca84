package rpc

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/room"
)

// RoomServer serves parley.v1.RoomService.
type RoomServer struct {
	rooms *room.Service
	log   *slog.Logger
}

var _ parleyv1connect.RoomServiceHandler = (*RoomServer)(nil)

// NewRoomServer returns a RoomServer over rooms.
func NewRoomServer(rooms *room.Service, log *slog.Logger) *RoomServer {
	return &RoomServer{rooms: rooms, log: log}
}

// CreateRoom creates a room with its conversation, new or resumed, and
// returns the caller's join token.
func (s *RoomServer) CreateRoom(ctx context.Context, req *connect.Request[parleyv1.CreateRoomRequest]) (*connect.Response[parleyv1.CreateRoomResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	convID, err := parseOptionalUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	r, join, err := s.rooms.Create(ctx, p, room.Request{
		Name:           req.Msg.GetName(),
		AgentName:      req.Msg.GetAgentName(),
		AgentMetadata:  req.Msg.GetAgentMetadata(),
		ConversationID: convID,
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.CreateRoomResponse{Room: roomToProto(r), Join: joinInfoToProto(join)}), nil
}

// GetRoom returns one of the caller's rooms.
func (s *RoomServer) GetRoom(ctx context.Context, req *connect.Request[parleyv1.GetRoomRequest]) (*connect.Response[parleyv1.GetRoomResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("room_id", req.Msg.GetRoomId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	r, err := s.rooms.GetRoom(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.GetRoomResponse{Room: roomToProto(r)}), nil
}

// ListRooms lists the caller's rooms, newest first.
func (s *RoomServer) ListRooms(ctx context.Context, req *connect.Request[parleyv1.ListRoomsRequest]) (*connect.Response[parleyv1.ListRoomsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.rooms.ListRooms(ctx, p, int(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListRoomsResponse{Rooms: roomsToProto(page.Rooms), NextPageToken: page.NextPageToken}), nil
}

// JoinRoom returns a join token for one of the caller's active rooms.
func (s *RoomServer) JoinRoom(ctx context.Context, req *connect.Request[parleyv1.JoinRoomRequest]) (*connect.Response[parleyv1.JoinRoomResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("room_id", req.Msg.GetRoomId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	join, err := s.rooms.JoinRoom(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.JoinRoomResponse{Join: joinInfoToProto(join)}), nil
}

// EndRoom ends one of the caller's rooms.
func (s *RoomServer) EndRoom(ctx context.Context, req *connect.Request[parleyv1.EndRoomRequest]) (*connect.Response[parleyv1.EndRoomResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("room_id", req.Msg.GetRoomId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	r, err := s.rooms.EndRoom(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.EndRoomResponse{Room: roomToProto(r)}), nil
}
