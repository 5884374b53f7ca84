package room

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// MaxReportBytes bounds a session report's JSON (ReportSession's
// report_json): a long call's chat history with metrics stays well under it.
const MaxReportBytes = 8 << 20

// MaxUsageValue bounds each numeric field of a report's usage (tokens,
// characters, seconds: far below it), so that AggregateCalls' sums over
// any number of calls stay finite.
const MaxUsageValue = 1e15

// Report is the part of livekit-agents' SessionReport.to_dict() Parley
// reads; the whole JSON is stored as it came.
type Report struct {
	JobID  string `json:"job_id"`
	RoomID string `json:"room_id"`
	Room   string `json:"room"`
	// ChatHistory is ChatContext.to_dict(): {"items": [...]}; nil when
	// the report was made with include_chat_history=False.
	ChatHistory json.RawMessage  `json:"chat_history"`
	Usage       []map[string]any `json:"usage"`
}

// ParseReport reads a session report, refusing what is not one.
func ParseReport(raw []byte) (Report, error) {
	if len(raw) > MaxReportBytes {
		return Report{}, invalid(fmt.Sprintf("report_json is %d bytes, more than the %d allowed", len(raw), MaxReportBytes))
	}
	var r Report
	if err := json.Unmarshal(raw, &r); err != nil {
		return Report{}, invalid("report_json is not a SessionReport.to_dict() object: " + err.Error())
	}
	if r.JobID == "" || r.RoomID == "" {
		return Report{}, invalid("report_json needs job_id and room_id")
	}
	if err := checkEscapes(raw); err != nil {
		return Report{}, err
	}
	if bytes.Equal(bytes.TrimSpace(r.ChatHistory), []byte("null")) {
		r.ChatHistory = nil
	}
	return r, nil
}

// checkEscapes refuses the \u escapes of valid JSON raw that name no
// storable character: U+0000 and a surrogate not in a pair. Go's decoder
// takes both, but the report is stored as it came, and PostgreSQL's jsonb
// refuses them.
func checkEscapes(raw []byte) error {
	// In valid JSON a backslash only opens an escape inside a string.
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		if raw[i+1] != 'u' {
			i++ // skip the escaped character, which may be a backslash
			continue
		}
		r := hex4(raw[i+2 : i+6])
		i += 5
		switch {
		case r == 0:
			return invalid("report_json holds \\u0000: U+0000 cannot be stored")
		case r >= 0xDC00 && r <= 0xDFFF:
			return invalid(fmt.Sprintf("report_json holds \\u%04x, a low surrogate without its high one", r))
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return invalid(fmt.Sprintf("report_json holds \\u%04x, a high surrogate without its low one", r))
			}
			if lo := hex4(raw[i+3 : i+7]); lo < 0xDC00 || lo > 0xDFFF {
				return invalid(fmt.Sprintf("report_json holds \\u%04x, a high surrogate without its low one", r))
			}
			i += 6
		}
	}
	return nil
}

// hex4 reads the four hex digits of a \u escape (valid JSON's).
func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		default:
			r = r<<4 | rune(c-'A'+10)
		}
	}
	return r
}

// CallMetrics are a call's figures derived from its session report.
type CallMetrics struct {
	// Turns counts the user messages of the chat history.
	Turns int
	// Interruptions counts its interrupted assistant messages.
	Interruptions int
	// Latencies has one entry per metric some message carries, by name.
	Latencies []LatencyStats
	Usage     []ModelUsage
	// Samples are the values Latencies summarise, in chat history order
	// (by metric within a message): what is stored, so that percentiles
	// over many calls are computed from values rather than from each
	// call's percentiles. Calls read from the store leave it nil.
	Samples []LatencySample
}

// LatencySample is one latency a message of the chat history carries.
type LatencySample struct {
	Metric string
	// Message is the item's index in the chat history.
	Message int
	Value   float64
}

// LatencyStats summarises one MetricsReport field over the messages
// carrying it; percentiles are nearest-rank, so each is a value seen.
type LatencyStats struct {
	Metric   string
	Count    int
	P50, P95 float64
}

// ModelUsage is one entry of the report's usage: its kind ("llm_usage",
// ...), provider and model, and every numeric field as given.
type ModelUsage struct {
	Type, Provider, Model string
	Values                map[string]float64
}

// isLatency reports whether k is one of MetricsReport's latencies, in
// seconds (livekit-agents 1.8.9); its speaking timestamps and
// llm_node_tps, a rate, are not.
func isLatency(k string) bool {
	switch k {
	case "transcription_delay", "end_of_turn_delay", "on_user_turn_completed_delay",
		"llm_node_ttft", "llm_node_ttfs", "tts_node_ttfb", "playback_latency", "e2e_latency":
		return true
	}
	return false
}

// DeriveMetrics computes a report's metrics from its chat history and
// usage.
func DeriveMetrics(r Report) (CallMetrics, error) {
	var m CallMetrics
	if r.ChatHistory != nil {
		var h struct {
			Items []struct {
				Type        string                     `json:"type"`
				Role        string                     `json:"role"`
				Interrupted bool                       `json:"interrupted"`
				Metrics     map[string]json.RawMessage `json:"metrics"`
			} `json:"items"`
		}
		if err := json.Unmarshal(r.ChatHistory, &h); err != nil {
			return CallMetrics{}, invalid("report_json: chat_history: " + err.Error())
		}
		values := map[string][]float64{}
		for i, it := range h.Items {
			if it.Type != "message" {
				continue
			}
			switch {
			case it.Role == "user":
				m.Turns++
			case it.Role == "assistant" && it.Interrupted:
				m.Interruptions++
			}
			for _, k := range slices.Sorted(maps.Keys(it.Metrics)) {
				var f float64
				if isLatency(k) && json.Unmarshal(it.Metrics[k], &f) == nil {
					values[k] = append(values[k], f)
					m.Samples = append(m.Samples, LatencySample{Metric: k, Message: i, Value: f})
				}
			}
		}
		for k, vs := range values {
			slices.Sort(vs)
			m.Latencies = append(m.Latencies, LatencyStats{Metric: k, Count: len(vs), P50: nearestRank(vs, 50), P95: nearestRank(vs, 95)})
		}
		slices.SortFunc(m.Latencies, func(a, b LatencyStats) int { return strings.Compare(a.Metric, b.Metric) })
	}
	for i, u := range r.Usage {
		mu := ModelUsage{Values: map[string]float64{}}
		for _, k := range slices.Sorted(maps.Keys(u)) {
			v := u[k]
			switch v := v.(type) {
			case string:
				switch k {
				case "type":
					mu.Type = v
				case "provider":
					mu.Provider = v
				case "model":
					mu.Model = v
				}
			case float64:
				if math.Abs(v) > MaxUsageValue {
					return CallMetrics{}, invalid(fmt.Sprintf("report_json: usage[%d].%s is %g, beyond the ±%g a usage figure may be", i, k, v, MaxUsageValue))
				}
				mu.Values[k] = v
			}
		}
		m.Usage = append(m.Usage, mu)
	}
	return m, nil
}

// Percentiles over latencies, the per-call ones and those over many calls
// alike, are nearest-rank: PostgreSQL's percentile_disc(p/100) is the same
// rule (the first value whose rank reaches ceil(p/100 × n)), which the
// store's tests check against nearestRank.

// nearestRank is the p-th percentile of sorted vs by the nearest-rank
// method: the smallest value with at least p% of the values at or below it.
func nearestRank(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// MergeCounts says what merging a report's chat history did, item by item.
type MergeCounts struct {
	// Merged were stored by the report; Replayed were stored before with
	// the same content; Conflicting were stored before with other content
	// and kept as they were.
	Merged, Replayed, Conflicting int
}

// ChatMerger merges a chat history (ChatContext.to_dict() JSON) into a
// conversation's items by item id, exactly once per id, as appended by
// agent: the agent dispatched into the call, the name its live appends
// carry (the SDKs send the job's agent_name).
type ChatMerger func(ctx context.Context, conversationID uuid.UUID, agent string, chatHistory json.RawMessage) (MergeCounts, error)

// ReportSession stores an agent's session report on call id and merges its
// chat history into the call's conversation through merge. Only agents
// report, and the report's room must be the call's; a repeated report replaces the stored one and merges nothing new.
// The history is merged before the report is stored, so a report that
// failed halfway is completed by its retry; the report's metrics are
// stored with it, in its transaction.
func (s *Service) ReportSession(ctx context.Context, p auth.Principal, id uuid.UUID, raw []byte, merge ChatMerger) (Call, MergeCounts, error) {
	if !p.IsAgent() {
		return Call{}, MergeCounts{}, auth.ErrPermissionDenied
	}
	r, err := ParseReport(raw)
	if err != nil {
		return Call{}, MergeCounts{}, err
	}
	m, err := DeriveMetrics(r)
	if err != nil {
		return Call{}, MergeCounts{}, err
	}
	c, err := s.store.Call(ctx, id, uuid.Nil)
	if err != nil {
		return Call{}, MergeCounts{}, err
	}
	// A report sent with the wrong call id would merge its history into
	// another conversation.
	if r.Room != "" && r.Room != c.LiveKitRoom {
		return Call{}, MergeCounts{}, invalid(fmt.Sprintf("report_json: room %q is not the call's LiveKit room", r.Room))
	}
	var counts MergeCounts
	if r.ChatHistory != nil && c.ConversationID != uuid.Nil {
		if counts, err = merge(ctx, c.ConversationID, s.agentNameOf(c), r.ChatHistory); err != nil {
			return Call{}, MergeCounts{}, fmt.Errorf("merge chat history: %w", err)
		}
	}
	if err := s.store.SaveReport(ctx, id, raw, m, s.now()); err != nil {
		return Call{}, MergeCounts{}, err
	}
	c, err = s.store.Call(ctx, id, uuid.Nil)
	if err != nil {
		return Call{}, MergeCounts{}, err
	}
	return s.callWithAgent(c), counts, nil
}
