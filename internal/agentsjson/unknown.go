package agentsjson

import (
	"slices"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// MaxUnknownKeys bounds the keys livekit-agents 1.8.9 does not define that
// one item keeps, counted over the item and every object in it. Their
// bytes count in the item's own bound (conversation.MaxItemBytes), being
// part of its payload.
const MaxUnknownKeys = 32

// The keys livekit-agents 1.8.9 defines for each object: what the decoder
// reads and the encoder writes. An unknown_json key among them is refused,
// since it would be written twice.
var (
	messageKeys            = []string{"id", "type", "role", "content", "interrupted", "transcript_confidence", "extra", "metrics", "created_at", "hash"}
	functionCallKeys       = []string{"id", "type", "call_id", "arguments", "name", "created_at", "extra", "group_id"}
	functionCallOutputKeys = []string{"id", "type", "name", "call_id", "output", "is_error", "created_at", "reply_required"}
	agentHandoffKeys       = []string{"id", "type", "old_agent_id", "new_agent_id", "created_at"}
	agentConfigUpdateKeys  = []string{"id", "type", "instructions", "tools_added", "tools_removed", "created_at"}
	imageKeys              = []string{"type", "id", "image", "inference_width", "inference_height", "inference_detail", "mime_type"}
	cacheBreakpointKeys    = []string{"type"}
	metricsKeys            = append([]string{"started_speaking_at", "stopped_speaking_at", "provider_request_ids"},
		append(keysOf(metricsFloats(&parleyv1.MetricsReport{})), keysOf(metricsMetadata(&parleyv1.MetricsReport{}))...)...)
	metadataKeys = []string{"model_name", "model_provider"}
)

func keysOf[T any](fields []struct {
	key string
	dst *T
}) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.key
	}
	return out
}

// unknownKeys counts the unknown keys an item keeps.
func unknownKeys(it *parleyv1.ChatContext_ChatItem) int {
	switch v := it.GetItem().(type) {
	case *parleyv1.ChatContext_ChatItem_Message:
		m := v.Message
		n := len(m.GetUnknownJson())
		for _, c := range m.GetContent() {
			n += len(c.GetImage().GetUnknownJson()) + len(c.GetCacheBreakpoint().GetUnknownJson())
		}
		r := m.GetMetrics()
		return n + len(r.GetUnknownJson()) + len(r.GetLlmMetadata().GetUnknownJson()) +
			len(r.GetTtsMetadata().GetUnknownJson()) + len(r.GetSttMetadata().GetUnknownJson())
	case *parleyv1.ChatContext_ChatItem_FunctionCall:
		return len(v.FunctionCall.GetUnknownJson())
	case *parleyv1.ChatContext_ChatItem_FunctionCallOutput:
		return len(v.FunctionCallOutput.GetUnknownJson())
	case *parleyv1.ChatContext_ChatItem_AgentHandoff:
		return len(v.AgentHandoff.GetUnknownJson())
	case *parleyv1.ChatContext_ChatItem_AgentConfigUpdate:
		return len(v.AgentConfigUpdate.GetUnknownJson())
	}
	return 0
}

// unknown writes an object's unknown keys after its known ones, sorted (a
// dict's order is nothing from_dict() sees).
func (w *writer) unknown(known []string, m map[string]string) {
	keys := w.jsonKeys("unknown_json", m, func(k string) bool { return slices.Contains(known, k) }, "is a key livekit-agents 1.8.9 defines")
	slices.Sort(keys)
	for _, k := range keys {
		w.key(k)
		w.jsonText(m[k])
	}
}
