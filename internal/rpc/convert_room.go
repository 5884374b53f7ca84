package rpc

import (
	"github.com/google/uuid"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/room"
)

func roomStatusToProto(s room.Status) parleyv1.RoomStatus {
	switch s {
	case room.StatusActive:
		return parleyv1.RoomStatus_ROOM_STATUS_ACTIVE
	case room.StatusEnded:
		return parleyv1.RoomStatus_ROOM_STATUS_ENDED
	default:
		return parleyv1.RoomStatus_ROOM_STATUS_UNSPECIFIED
	}
}

func roomToProto(r room.Room) *parleyv1.Room {
	pr := &parleyv1.Room{
		Id:          r.ID.String(),
		Name:        r.Name,
		LivekitRoom: r.LiveKitRoom,
		Status:      roomStatusToProto(r.Status),
		CreatedBy:   r.CreatedBy.String(),
		CreatedAt:   timestamp(r.CreatedAt),
		EndedAt:     timestamp(r.EndedAt),
		AgentName:   r.AgentName,
	}
	if r.ConversationID != uuid.Nil {
		pr.ConversationId = r.ConversationID.String()
	}
	return pr
}

func roomsToProto(rs []room.Room) []*parleyv1.Room {
	out := make([]*parleyv1.Room, len(rs))
	for i, r := range rs {
		out[i] = roomToProto(r)
	}
	return out
}

func joinInfoToProto(j room.JoinInfo) *parleyv1.JoinInfo {
	return &parleyv1.JoinInfo{LivekitUrl: j.URL, Token: j.Token, ExpiresAt: timestamp(j.ExpiresAt)}
}
