package rpc

import (
	"context"
	"encoding/json"
	"errors"

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

// mergeChatHistory appends a report's items through the path live appends
// take, so that each id is stored once whichever came first. It appends
// them in batches as large as AppendItems takes; a batch that meets an id
// stored with other content is appended again item by item, so that the
// stored item is kept without failing the rest of the report.
func (s *CallServer) mergeChatHistory(p auth.Principal) room.ChatMerger {
	return func(ctx context.Context, conv uuid.UUID, agent string, history json.RawMessage) (room.MergeCounts, error) {
		var n room.MergeCounts
		cis, err := agentsjson.Decode(history)
		if err != nil {
			return n, rule.Broken("report_json: chat_history: " + err.Error())
		}
		items, err := chatItems(cis)
		if err != nil {
			return n, rule.Broken("report_json: chat_history: " + err.Error())
		}
		add := func(batch []conversation.Item) error {
			out, err := s.convs.AppendItems(ctx, p, conversation.AppendItemsRequest{ConversationID: conv, Agent: agent, Items: batch})
			if err != nil {
				return err
			}
			n.Merged += out.New
			n.Replayed += len(batch) - out.New
			return nil
		}
		for _, batch := range mergeBatches(items) {
			err := add(batch)
			if !errors.Is(err, conversation.ErrItemConflict) {
				if err != nil {
					return n, err
				}
				continue
			}
			for _, it := range batch {
				switch err := add([]conversation.Item{it}); {
				case errors.Is(err, conversation.ErrItemConflict):
					n.Conflicting++
				case err != nil:
					return n, err
				}
			}
		}
		return n, nil
	}
}

// mergeBatches cuts items, in order, into batches AppendItems takes: at
// most MaxItemsPerBatch items and MaxBatchBytes of payload, and no id twice
// (a history that repeats an id gets the later one replayed).
func mergeBatches(items []conversation.Item) [][]conversation.Item {
	var out [][]conversation.Item
	var cur []conversation.Item
	var bytes int
	ids := map[string]bool{}
	for _, it := range items {
		if len(cur) > 0 && (len(cur) == conversation.MaxItemsPerBatch || bytes+len(it.Payload) > conversation.MaxBatchBytes || ids[it.ID]) {
			out = append(out, cur)
			cur, bytes, ids = nil, 0, map[string]bool{}
		}
		cur = append(cur, it)
		bytes += len(it.Payload)
		ids[it.ID] = true
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
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
