package rpc

import (
	"context"
	"encoding/json"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/agentsjson"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rule"
)

// ReportSession stores an agent's session report and merges its chat
// history into the call's conversation.
func (s *CallServer) ReportSession(ctx context.Context, req *connect.Request[parleyv1.ReportSessionRequest]) (*connect.Response[parleyv1.ReportSessionResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("call_id", req.Msg.GetCallId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	c, n, err := s.rooms.ReportSession(ctx, p, id, []byte(req.Msg.GetReportJson()), s.mergeChatHistory(p))
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ReportSessionResponse{
		Call: callToProto(c), ItemsMerged: int32(n.Merged), ItemsReplayed: int32(n.Replayed), ItemsConflicting: int32(n.Conflicting),
	}), nil
}

// mergeChatHistory merges a report's items through the path live appends
// take (conversation.MergeItems), so that each id is stored once whichever
// came first, and an id stored with other content keeps what is stored
// rather than failing the rest of the report.
func (s *CallServer) mergeChatHistory(p auth.Principal) room.ChatMerger {
	return func(ctx context.Context, conv uuid.UUID, agent string, history json.RawMessage) (room.MergeCounts, error) {
		cis, err := agentsjson.Decode(history)
		if err != nil {
			return room.MergeCounts{}, rule.Broken("report_json: chat_history: " + err.Error())
		}
		items, err := chatItems(cis)
		if err != nil {
			return room.MergeCounts{}, rule.Broken("report_json: chat_history: " + err.Error())
		}
		n, err := s.convs.MergeItems(ctx, p, conversation.AppendItemsRequest{ConversationID: conv, Agent: agent, Items: items})
		return room.MergeCounts{Merged: n.New, Replayed: n.Replayed, Conflicting: n.Conflicting}, err
	}
}

// callMetricsToProto converts a call's metrics; nil until it reports.
func callMetricsToProto(m *room.CallMetrics) *parleyv1.CallMetrics {
	if m == nil {
		return nil
	}
	pm := &parleyv1.CallMetrics{Turns: int32(m.Turns), Interruptions: int32(m.Interruptions)}
	pm.Latencies = latenciesToProto(m.Latencies)
	pm.Usage = usageToProto(m.Usage)
	return pm
}

func latenciesToProto(ls []room.LatencyStats) []*parleyv1.LatencyStats {
	var out []*parleyv1.LatencyStats
	for _, l := range ls {
		out = append(out, &parleyv1.LatencyStats{Metric: l.Metric, Count: int32(l.Count), P50: l.P50, P95: l.P95})
	}
	return out
}

func usageToProto(us []room.ModelUsage) []*parleyv1.ModelUsage {
	var out []*parleyv1.ModelUsage
	for _, u := range us {
		out = append(out, &parleyv1.ModelUsage{Type: u.Type, Provider: u.Provider, Model: u.Model, Values: u.Values})
	}
	return out
}
