package rpc

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/room"
)

// CallServer serves parley.v1.CallService.
type CallServer struct {
	rooms *room.Service
	// convs takes the chat history of session reports.
	convs *conversation.Service
	log   *slog.Logger
}

var _ parleyv1connect.CallServiceHandler = (*CallServer)(nil)

// NewCallServer returns a CallServer over rooms, whose lives calls are,
// and convs, which session reports' chat histories merge into.
func NewCallServer(rooms *room.Service, convs *conversation.Service, log *slog.Logger) *CallServer {
	return &CallServer{rooms: rooms, convs: convs, log: log}
}

// GetCall returns the call of a room the caller may read.
func (s *CallServer) GetCall(ctx context.Context, req *connect.Request[parleyv1.GetCallRequest]) (*connect.Response[parleyv1.GetCallResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("call_id", req.Msg.GetCallId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	c, err := s.rooms.GetCall(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.GetCallResponse{Call: callToProto(c)}), nil
}

// ListCalls lists the calls the caller may read, filtered, newest first.
func (s *CallServer) ListCalls(ctx context.Context, req *connect.Request[parleyv1.ListCallsRequest]) (*connect.Response[parleyv1.ListCallsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	m := req.Msg
	f, err := callFilter(m)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.rooms.ListCalls(ctx, p, f, int(m.GetPageSize()), m.GetPageToken())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	out := &parleyv1.ListCallsResponse{Calls: make([]*parleyv1.Call, len(page.Calls)), NextPageToken: page.NextPageToken}
	for i, c := range page.Calls {
		out.Calls[i] = callToProto(c)
	}
	return connect.NewResponse(out), nil
}

// AggregateCalls sums up the calls the caller may read that match the
// filter, in the groups asked for.
func (s *CallServer) AggregateCalls(ctx context.Context, req *connect.Request[parleyv1.AggregateCallsRequest]) (*connect.Response[parleyv1.AggregateCallsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	m := req.Msg
	f, err := callFilter(m)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	// The domain's buckets are the proto's values, 0 none.
	g := room.CallGrouping{ByAgent: m.GetGroupByAgent(), Bucket: room.TimeBucket(m.GetBucket()), TimeZone: m.GetTimeZone()}
	groups, err := s.rooms.AggregateCalls(ctx, p, f, g)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	out := &parleyv1.AggregateCallsResponse{Groups: make([]*parleyv1.CallGroup, len(groups))}
	for i, gr := range groups {
		out.Groups[i] = &parleyv1.CallGroup{
			AgentName: gr.AgentName, BucketStart: timestamp(gr.Start), Calls: gr.Calls, CallsReported: gr.Reported,
			Turns: gr.Turns, Interruptions: gr.Interruptions, Latencies: latenciesToProto(gr.Latencies), Usage: usageToProto(gr.Usage),
		}
	}
	return connect.NewResponse(out), nil
}

// callFilterRequest is the filter ListCalls and AggregateCalls share.
type callFilterRequest interface {
	GetStatus() parleyv1.CallStatus
	GetAgentName() string
	GetMetadata() map[string]string
	GetCreatedAfter() *timestamppb.Timestamp
	GetCreatedBefore() *timestamppb.Timestamp
}

func callFilter(m callFilterRequest) (f room.CallFilter, err error) {
	f = room.CallFilter{Status: room.CallStatus(m.GetStatus()), AgentName: m.GetAgentName(), Metadata: m.GetMetadata()}
	if f.CreatedAfter, err = optionalTime("created_after", m.GetCreatedAfter()); err != nil {
		return f, err
	}
	f.CreatedBefore, err = optionalTime("created_before", m.GetCreatedBefore())
	return f, err
}

func callToProto(c room.Call) *parleyv1.Call {
	pc := &parleyv1.Call{
		Id:          c.ID.String(),
		RoomId:      c.ID.String(),
		RoomName:    c.RoomName,
		LivekitRoom: c.LiveKitRoom,
		CreatedBy:   c.CreatedBy.String(),
		AgentName:   c.AgentName,
		// The domain's values are the proto's, 0 unspecified.
		Status:     parleyv1.CallStatus(c.Status),
		CreatedAt:  timestamp(c.CreatedAt),
		StartedAt:  timestamp(c.StartedAt),
		EndedAt:    timestamp(c.EndedAt),
		EndReason:  parleyv1.CallEndReason(c.EndReason),
		LastSeenAt: timestamp(c.LastSeenAt),
		ReportedAt: timestamp(c.ReportedAt),
		Metrics:    callMetricsToProto(c.Metrics),
	}
	if c.ConversationID != uuid.Nil {
		pc.ConversationId = c.ConversationID.String()
	}
	for _, p := range c.Participants {
		pp := &parleyv1.CallParticipant{
			SessionId: p.SessionID, Identity: p.Identity, Name: p.Name, Kind: participantKindToProto(p.Kind),
			JoinedAt: timestamp(p.JoinedAt), LeftAt: timestamp(p.LeftAt),
		}
		for _, t := range p.Tracks {
			pp.Tracks = append(pp.Tracks, &parleyv1.CallTrack{Sid: t.SID, Type: t.Type, Source: t.Source, PublishedAt: timestamp(t.PublishedAt)})
		}
		pc.Participants = append(pc.Participants, pp)
	}
	for _, eg := range c.Egresses {
		pr := &parleyv1.CallRecording{
			EgressId: eg.ID, Status: parleyv1.EgressStatus(eg.Status), StartedAt: timestamp(eg.StartedAt), EndedAt: timestamp(eg.EndedAt),
		}
		for _, f := range eg.Files {
			pf := &parleyv1.CallRecordingFile{Filename: f.Filename, ContentType: f.ContentType, SizeBytes: f.SizeBytes}
			if f.FileID != uuid.Nil {
				pf.FileId = f.FileID.String()
			}
			pr.Files = append(pr.Files, pf)
		}
		pc.Recordings = append(pc.Recordings, pr)
	}
	return pc
}

func participantKindToProto(k room.ParticipantKind) parleyv1.ParticipantKind {
	switch k {
	case room.KindUser:
		return parleyv1.ParticipantKind_PARTICIPANT_KIND_USER
	case room.KindAgent:
		return parleyv1.ParticipantKind_PARTICIPANT_KIND_AGENT
	case room.KindOther:
		return parleyv1.ParticipantKind_PARTICIPANT_KIND_OTHER
	default:
		return parleyv1.ParticipantKind_PARTICIPANT_KIND_UNSPECIFIED
	}
}
