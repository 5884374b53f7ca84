package agentsjson

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// Encode renders items as ChatContext.to_dict(exclude_timestamp=False,
// exclude_image=False) would: {"items": [...]}, each item's keys in
// livekit-agents' field order, then its unknown keys sorted. It fails only
// on an item Check refuses.
func Encode(items []*parleyv1.ChatContext_ChatItem) ([]byte, error) {
	w := &writer{}
	w.raw(`{"items":[`)
	for i, it := range items {
		if i > 0 {
			w.raw(",")
		}
		w.item(it)
		if w.err != nil {
			return nil, fmt.Errorf("items[%d]: %w", i, w.err)
		}
	}
	w.raw("]}")
	return w.buf.Bytes(), nil
}

// EncodeItem renders one item as an element of to_dict()'s items list.
func EncodeItem(it *parleyv1.ChatContext_ChatItem) ([]byte, error) {
	w := &writer{}
	w.item(it)
	if w.err != nil {
		return nil, w.err
	}
	return w.buf.Bytes(), nil
}

// Check reports why an item could not be rendered for from_dict(), or nil:
// no kind or role, empty content parts, a non-finite float, an extra_json
// value that is not JSON or a key in both extra maps, an unknown_json key
// livekit-agents defines or value that is not JSON, an invalid Timestamp;
// or why it may not be stored: more than MaxUnknownKeys unknown keys.
// Items are checked before they are stored, so stored items always render.
func Check(it *parleyv1.ChatContext_ChatItem) error {
	if _, err := EncodeItem(it); err != nil {
		return broken(err.Error())
	}
	if n := unknownKeys(it); n > MaxUnknownKeys {
		return broken(fmt.Sprintf("%d keys livekit-agents 1.8.9 does not define, at most %d are kept per item", n, MaxUnknownKeys))
	}
	return nil
}

var roleNames = map[parleyv1.ChatRole]string{
	parleyv1.ChatRole_CHAT_ROLE_DEVELOPER: "developer",
	parleyv1.ChatRole_CHAT_ROLE_SYSTEM:    "system",
	parleyv1.ChatRole_CHAT_ROLE_USER:      "user",
	parleyv1.ChatRole_CHAT_ROLE_ASSISTANT: "assistant",
}

// writer accumulates one JSON text; the first error sticks.
type writer struct {
	buf bytes.Buffer
	err error
	// comma is whether the object being written needs a comma before its
	// next key.
	comma bool
}

func (w *writer) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf(format, args...)
	}
}

func (w *writer) raw(s string) { w.buf.WriteString(s) }

func (w *writer) open() { w.raw("{"); w.comma = false }

func (w *writer) close() { w.raw("}"); w.comma = true }

func (w *writer) key(k string) {
	if w.comma {
		w.raw(",")
	}
	w.str(k)
	w.raw(":")
	w.comma = true
}

func (w *writer) str(s string) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	w.buf.Write(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

func (w *writer) boolean(b bool) { w.raw(strconv.FormatBool(b)) }

// float writes f as Python's repr does, which is what json.dumps writes.
func (w *writer) float(f float64) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		w.fail("a number is not finite")
		return
	}
	w.raw(pyFloat(f))
}

func pyFloat(f float64) string {
	if a := math.Abs(f); a != 0 && (a < 1e-4 || a >= 1e16) {
		return strconv.FormatFloat(f, 'e', -1, 64)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsRune(s, '.') {
		s += ".0"
	}
	return s
}

func (w *writer) timestamp(ts *timestamppb.Timestamp) {
	if err := ts.CheckValid(); err != nil {
		w.fail("invalid timestamp: %v", err)
		return
	}
	w.float(toFloat(ts))
}

func (w *writer) strings(ss []string) {
	w.raw("[")
	for i, s := range ss {
		if i > 0 {
			w.raw(",")
		}
		w.str(s)
	}
	w.raw("]")
}

func (w *writer) item(it *parleyv1.ChatContext_ChatItem) {
	switch v := it.GetItem().(type) {
	case *parleyv1.ChatContext_ChatItem_Message:
		w.message(v.Message)
	case *parleyv1.ChatContext_ChatItem_FunctionCall:
		w.functionCall(v.FunctionCall)
	case *parleyv1.ChatContext_ChatItem_FunctionCallOutput:
		w.functionCallOutput(v.FunctionCallOutput)
	case *parleyv1.ChatContext_ChatItem_AgentHandoff:
		w.agentHandoff(v.AgentHandoff)
	case *parleyv1.ChatContext_ChatItem_AgentConfigUpdate:
		w.agentConfigUpdate(v.AgentConfigUpdate)
	default:
		w.fail("item has no kind")
	}
}

func (w *writer) header(id, kind string) {
	w.open()
	w.key("id")
	w.str(id)
	w.key("type")
	w.str(kind)
}

func (w *writer) createdAt(ts *timestamppb.Timestamp) {
	if ts != nil {
		w.key("created_at")
		w.timestamp(ts)
	}
}

func (w *writer) message(m *parleyv1.ChatMessage) {
	role, ok := roleNames[m.GetRole()]
	if !ok {
		w.fail("message has no role")
		return
	}
	w.header(m.GetId(), "message")
	w.key("role")
	w.str(role)
	w.key("content")
	w.raw("[")
	for i, c := range m.GetContent() {
		if i > 0 {
			w.raw(",")
		}
		w.content(c)
	}
	w.raw("]")
	w.key("interrupted")
	w.boolean(m.GetInterrupted())
	if m.TranscriptConfidence != nil {
		w.key("transcript_confidence")
		w.float(m.GetTranscriptConfidence())
	}
	w.key("extra")
	w.extra(m.GetExtra(), m.GetExtraJson())
	w.key("metrics")
	w.metrics(m.GetMetrics())
	w.createdAt(m.GetCreatedAt())
	if m.Hash != nil {
		w.key("hash")
		w.str(m.GetHash())
	}
	w.unknown(messageKeys, m.GetUnknownJson())
	w.close()
}

func (w *writer) content(c *parleyv1.ChatMessage_ChatContent) {
	switch v := c.GetPayload().(type) {
	case *parleyv1.ChatMessage_ChatContent_Text:
		w.str(v.Text)
	case *parleyv1.ChatMessage_ChatContent_CacheBreakpoint:
		w.open()
		w.key("type")
		w.str("cache_breakpoint")
		w.unknown(cacheBreakpointKeys, v.CacheBreakpoint.GetUnknownJson())
		w.close()
	case *parleyv1.ChatMessage_ChatContent_Image:
		img := v.Image
		if !validDetail(img.GetInferenceDetail()) {
			w.fail("image inference_detail must be auto, high or low")
			return
		}
		w.header(img.GetId(), "image_content")
		w.key("image")
		w.str(img.GetImage())
		if img.InferenceWidth != nil {
			w.key("inference_width")
			w.raw(strconv.FormatInt(img.GetInferenceWidth(), 10))
		}
		if img.InferenceHeight != nil {
			w.key("inference_height")
			w.raw(strconv.FormatInt(img.GetInferenceHeight(), 10))
		}
		w.key("inference_detail")
		w.str(cmp.Or(img.GetInferenceDetail(), "auto"))
		if img.MimeType != nil {
			w.key("mime_type")
			w.str(img.GetMimeType())
		}
		w.unknown(imageKeys, img.GetUnknownJson())
		w.close()
	default:
		w.fail("message content part is empty")
	}
}

// extra writes the union of the string values and the JSON ones, keys
// sorted (from_dict keeps a dict, whose order no comparison sees).
func (w *writer) extra(strs, others map[string]string) {
	keys := w.jsonKeys("extra_json", others, func(k string) bool { _, dup := strs[k]; return dup }, "is in both extra and extra_json")
	for k := range strs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	w.open()
	for _, k := range keys {
		w.key(k)
		if s, ok := strs[k]; ok {
			w.str(s)
			continue
		}
		w.jsonText(others[k])
	}
	w.close()
}

// jsonKeys returns the keys of m, a map of JSON texts named field, failing
// on a value that is not JSON or a key clash refuses (saying why).
func (w *writer) jsonKeys(field string, m map[string]string, clash func(string) bool, why string) []string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if clash(k) {
			w.fail("%s key %q %s", field, k, why)
			return nil
		}
		if !json.Valid([]byte(v)) {
			w.fail("%s value of %q is not JSON", field, k)
			return nil
		}
		keys = append(keys, k)
	}
	return keys
}

// jsonText writes valid JSON text compacted.
func (w *writer) jsonText(v string) {
	var b bytes.Buffer
	_ = json.Compact(&b, []byte(v))
	w.buf.Write(b.Bytes())
}

func (w *writer) metrics(m *parleyv1.MetricsReport) {
	w.open()
	if m == nil {
		w.close()
		return
	}
	if m.StartedSpeakingAt != nil {
		w.key("started_speaking_at")
		w.timestamp(m.StartedSpeakingAt)
	}
	if m.StoppedSpeakingAt != nil {
		w.key("stopped_speaking_at")
		w.timestamp(m.StoppedSpeakingAt)
	}
	for _, f := range metricsFloats(m) {
		if *f.dst != nil {
			w.key(f.key)
			w.float(**f.dst)
		}
	}
	if m.GetHasProviderRequestIds() || len(m.GetProviderRequestIds()) > 0 {
		w.key("provider_request_ids")
		w.strings(m.GetProviderRequestIds())
	}
	for _, f := range metricsMetadata(m) {
		md := *f.dst
		if md == nil {
			continue
		}
		w.key(f.key)
		w.open()
		if md.ModelName != nil {
			w.key("model_name")
			w.str(md.GetModelName())
		}
		if md.ModelProvider != nil {
			w.key("model_provider")
			w.str(md.GetModelProvider())
		}
		w.unknown(metadataKeys, md.GetUnknownJson())
		w.close()
	}
	w.unknown(metricsKeys, m.GetUnknownJson())
	w.close()
}

func (w *writer) functionCall(c *parleyv1.FunctionCall) {
	w.header(c.GetId(), "function_call")
	w.key("call_id")
	w.str(c.GetCallId())
	w.key("arguments")
	w.str(c.GetArguments())
	w.key("name")
	w.str(c.GetName())
	w.createdAt(c.GetCreatedAt())
	w.key("extra")
	w.extra(c.GetExtra(), c.GetExtraJson())
	if c.GroupId != nil {
		w.key("group_id")
		w.str(c.GetGroupId())
	}
	w.unknown(functionCallKeys, c.GetUnknownJson())
	w.close()
}

func (w *writer) functionCallOutput(c *parleyv1.FunctionCallOutput) {
	w.header(c.GetId(), "function_call_output")
	w.key("name")
	w.str(c.GetName())
	w.key("call_id")
	w.str(c.GetCallId())
	w.key("output")
	w.str(c.GetOutput())
	w.key("is_error")
	w.boolean(c.GetIsError())
	w.createdAt(c.GetCreatedAt())
	w.key("reply_required")
	w.boolean(c.ReplyRequired == nil || c.GetReplyRequired())
	w.unknown(functionCallOutputKeys, c.GetUnknownJson())
	w.close()
}

func (w *writer) agentHandoff(h *parleyv1.AgentHandoff) {
	w.header(h.GetId(), "agent_handoff")
	if h.OldAgentId != nil {
		w.key("old_agent_id")
		w.str(h.GetOldAgentId())
	}
	w.key("new_agent_id")
	w.str(h.GetNewAgentId())
	w.createdAt(h.GetCreatedAt())
	w.unknown(agentHandoffKeys, h.GetUnknownJson())
	w.close()
}

func (w *writer) agentConfigUpdate(u *parleyv1.AgentConfigUpdate) {
	w.header(u.GetId(), "agent_config_update")
	if u.Instructions != nil {
		w.key("instructions")
		w.str(u.GetInstructions())
	}
	if u.GetHasToolsAdded() || len(u.GetToolsAdded()) > 0 {
		w.key("tools_added")
		w.strings(u.GetToolsAdded())
	}
	if u.GetHasToolsRemoved() || len(u.GetToolsRemoved()) > 0 {
		w.key("tools_removed")
		w.strings(u.GetToolsRemoved())
	}
	w.createdAt(u.GetCreatedAt())
	w.unknown(agentConfigUpdateKeys, u.GetUnknownJson())
	w.close()
}
