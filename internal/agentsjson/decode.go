// Package agentsjson converts between parley.v1 chat items and the JSON of
// livekit-agents' ChatContext: what ChatContext.to_dict() writes and
// ChatContext.from_dict() loads (livekit-agents 1.8.9, pinned in
// testdata/livekit-agents/requirements.txt).
//
// The conversion is lossless both ways for everything to_dict() writes:
// every item kind, text, image (URL or data URL) and cache-breakpoint
// content, extra values of any JSON type, metrics, and created_at floats,
// which round-trip bit for bit through a Timestamp's seconds and nanos for
// any time after 1970-04-08 (below 2^23 s a float is finer than a
// nanosecond). Audio content is refused rather than dropped: its frames are
// not JSON (to_dict() leaves them out by default).
//
// Keys livekit-agents 1.8.9 does not define, which a newer livekit-agents
// may write, are kept: each object's own in its message's unknown_json, as
// JSON text, rendered back after the known keys, so that a newer
// from_dict() sees them again and 1.8.9's ignores them. An unknown item or
// content type is still refused: 1.8.9's from_dict() fails on the whole
// context for one, so storing it would break every older agent's restore.
// The chat context object's own unknown keys are no item's and are ignored,
// as from_dict() ignores them.
// Where from_dict() takes a default for an absent key (interrupted, extra,
// metrics, reply_required, inference_detail) the item renders that default.
package agentsjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

// Decode parses the JSON of ChatContext.to_dict(): the whole object
// {"items": [...]} or its items list alone. A malformed input is an error
// wrapping rule.ErrBroken whose message names the offending item and key.
func Decode(data []byte) ([]*parleyv1.ChatContext_ChatItem, error) {
	data = bytes.TrimSpace(data)
	var list json.RawMessage
	switch {
	case len(data) > 0 && data[0] == '[':
		list = data
	case len(data) > 0 && data[0] == '{':
		o, err := parseObject("chat context", data)
		if err != nil {
			return nil, err
		}
		raw, ok, err := o.get("items", false)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, broken("chat context: items is required")
		}
		// Its other keys are ignored: Parley keeps items, not contexts.
		list = raw
	default:
		return nil, broken("chat context must be a JSON object with items, or a list of items")
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(list, &raws); err != nil {
		return nil, broken("chat context: items must be a list of item objects")
	}
	items := make([]*parleyv1.ChatContext_ChatItem, 0, len(raws))
	for i, raw := range raws {
		it, err := DecodeItem(fmt.Sprintf("items[%d]", i), raw)
		if err != nil {
			return nil, err
		}
		items = append(items, it)
	}
	return items, nil
}

// DecodeItem parses one item of to_dict()'s items list; path names it in
// errors.
func DecodeItem(path string, raw json.RawMessage) (*parleyv1.ChatContext_ChatItem, error) {
	o, err := parseObject(path, raw)
	if err != nil {
		return nil, err
	}
	kind, err := o.requiredString("type")
	if err != nil {
		return nil, err
	}
	var it *parleyv1.ChatContext_ChatItem
	switch kind {
	case "message":
		it, err = decodeMessage(o)
	case "function_call":
		it, err = decodeFunctionCall(o)
	case "function_call_output":
		it, err = decodeFunctionCallOutput(o)
	case "agent_handoff":
		it, err = decodeAgentHandoff(o)
	case "agent_config_update":
		it, err = decodeAgentConfigUpdate(o)
	default:
		return nil, broken(fmt.Sprintf("%s: unknown type %q (want message, function_call, function_call_output, agent_handoff or agent_config_update)", path, kind))
	}
	if err != nil {
		return nil, err
	}
	if n := unknownKeys(it); n > MaxUnknownKeys {
		return nil, broken(fmt.Sprintf("%s: %d keys livekit-agents 1.8.9 does not define, at most %d are kept per item", path, n, MaxUnknownKeys))
	}
	return it, nil
}

var roles = map[string]parleyv1.ChatRole{
	"developer": parleyv1.ChatRole_CHAT_ROLE_DEVELOPER,
	"system":    parleyv1.ChatRole_CHAT_ROLE_SYSTEM,
	"user":      parleyv1.ChatRole_CHAT_ROLE_USER,
	"assistant": parleyv1.ChatRole_CHAT_ROLE_ASSISTANT,
}

func decodeMessage(o *object) (*parleyv1.ChatContext_ChatItem, error) {
	m := &parleyv1.ChatMessage{}
	var err error
	if m.Id, err = o.optionalString("id"); err != nil {
		return nil, err
	}
	role, err := o.requiredString("role")
	if err != nil {
		return nil, err
	}
	r, ok := roles[role]
	if !ok {
		return nil, o.fail("role", "must be developer, system, user or assistant")
	}
	m.Role = r
	raw, ok, err := o.get("content", false)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, o.fail("content", "is required")
	}
	if m.Content, err = decodeContent(o.path+".content", raw); err != nil {
		return nil, err
	}
	if m.Interrupted, _, err = o.boolean("interrupted", false); err != nil {
		return nil, err
	}
	if f, ok, err := o.float("transcript_confidence", true); err != nil {
		return nil, err
	} else if ok {
		m.TranscriptConfidence = &f
	}
	if m.Extra, m.ExtraJson, err = o.extra("extra"); err != nil {
		return nil, err
	}
	if m.Metrics, err = decodeMetrics(o); err != nil {
		return nil, err
	}
	if m.CreatedAt, err = o.timestamp("created_at"); err != nil {
		return nil, err
	}
	if raw, ok, err := o.get("hash", true); err != nil {
		return nil, err
	} else if ok {
		var h string
		if json.Unmarshal(raw, &h) != nil {
			return nil, o.fail("hash", "must be a string")
		}
		m.Hash = &h
	}
	if m.UnknownJson, err = o.rest(messageKeys); err != nil {
		return nil, err
	}
	return &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_Message{Message: m}}, nil
}

func decodeContent(path string, raw json.RawMessage) ([]*parleyv1.ChatMessage_ChatContent, error) {
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil || parts == nil {
		return nil, broken(path + " must be a list")
	}
	out := make([]*parleyv1.ChatMessage_ChatContent, 0, len(parts))
	for i, p := range parts {
		pp := fmt.Sprintf("%s[%d]", path, i)
		var text string
		if isString(p) && json.Unmarshal(p, &text) == nil {
			out = append(out, &parleyv1.ChatMessage_ChatContent{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: text}})
			continue
		}
		o, err := parseObject(pp, p)
		if err != nil {
			return nil, broken(pp + " must be a string or a content object")
		}
		kind, err := o.requiredString("type")
		if err != nil {
			return nil, err
		}
		switch kind {
		case "cache_breakpoint":
			rest, err := o.rest(cacheBreakpointKeys)
			if err != nil {
				return nil, err
			}
			out = append(out, &parleyv1.ChatMessage_ChatContent{Payload: &parleyv1.ChatMessage_ChatContent_CacheBreakpoint{CacheBreakpoint: &parleyv1.CacheBreakpoint{UnknownJson: rest}}})
		case "image_content":
			img, err := decodeImage(o)
			if err != nil {
				return nil, err
			}
			out = append(out, &parleyv1.ChatMessage_ChatContent{Payload: &parleyv1.ChatMessage_ChatContent_Image{Image: img}})
		case "audio_content":
			return nil, broken(pp + ": audio content is not stored; send its transcript as text")
		default:
			return nil, broken(fmt.Sprintf("%s: unknown content type %q (want image_content or cache_breakpoint)", pp, kind))
		}
	}
	return out, nil
}

func decodeImage(o *object) (*parleyv1.ImageContent, error) {
	img := &parleyv1.ImageContent{}
	var err error
	if img.Id, err = o.optionalString("id"); err != nil {
		return nil, err
	}
	if img.Image, err = o.requiredString("image"); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		key string
		dst **int64
	}{{"inference_width", &img.InferenceWidth}, {"inference_height", &img.InferenceHeight}} {
		raw, ok, err := o.get(f.key, true)
		if err != nil {
			return nil, err
		}
		if ok {
			var n int64
			if json.Unmarshal(raw, &n) != nil {
				return nil, o.fail(f.key, "must be an integer")
			}
			*f.dst = &n
		}
	}
	if img.InferenceDetail, err = o.optionalString("inference_detail"); err != nil {
		return nil, err
	}
	if !validDetail(img.InferenceDetail) {
		return nil, o.fail("inference_detail", "must be auto, high or low")
	}
	if s, ok, err := o.nullableString("mime_type"); err != nil {
		return nil, err
	} else if ok {
		img.MimeType = &s
	}
	if img.UnknownJson, err = o.rest(imageKeys); err != nil {
		return nil, err
	}
	return img, nil
}

func validDetail(d string) bool {
	return d == "" || d == "auto" || d == "high" || d == "low"
}

// metricsFloats are MetricsReport's float keys with their fields, in the
// order livekit-agents' MetricsReport declares them (its to_dict() order).
func metricsFloats(m *parleyv1.MetricsReport) []struct {
	key string
	dst **float64
} {
	return []struct {
		key string
		dst **float64
	}{
		{"transcription_delay", &m.TranscriptionDelay},
		{"end_of_turn_delay", &m.EndOfTurnDelay},
		{"on_user_turn_completed_delay", &m.OnUserTurnCompletedDelay},
		{"llm_node_ttft", &m.LlmNodeTtft},
		{"llm_node_tps", &m.LlmNodeTps},
		{"llm_node_ttfs", &m.LlmNodeTtfs},
		{"tts_node_ttfb", &m.TtsNodeTtfb},
		{"playback_latency", &m.PlaybackLatency},
		{"e2e_latency", &m.E2ELatency},
	}
}

func metricsMetadata(m *parleyv1.MetricsReport) []struct {
	key string
	dst **parleyv1.MetricsMetadata
} {
	return []struct {
		key string
		dst **parleyv1.MetricsMetadata
	}{{"llm_metadata", &m.LlmMetadata}, {"tts_metadata", &m.TtsMetadata}, {"stt_metadata", &m.SttMetadata}}
}

func decodeMetrics(item *object) (*parleyv1.MetricsReport, error) {
	raw, ok, err := item.get("metrics", false)
	if err != nil {
		return nil, err
	}
	if !ok {
		// from_dict's default, and what to_dict writes back.
		return &parleyv1.MetricsReport{}, nil
	}
	o, err := parseObject(item.path+".metrics", raw)
	if err != nil {
		return nil, err
	}
	m := &parleyv1.MetricsReport{}
	if m.StartedSpeakingAt, err = o.timestamp("started_speaking_at"); err != nil {
		return nil, err
	}
	if m.StoppedSpeakingAt, err = o.timestamp("stopped_speaking_at"); err != nil {
		return nil, err
	}
	for _, f := range metricsFloats(m) {
		v, ok, err := o.float(f.key, false)
		if err != nil {
			return nil, err
		}
		if ok {
			*f.dst = &v
		}
	}
	if raw, ok, err := o.get("provider_request_ids", false); err != nil {
		return nil, err
	} else if ok {
		if m.ProviderRequestIds, err = stringList(o, "provider_request_ids", raw); err != nil {
			return nil, err
		}
		m.HasProviderRequestIds = true
	}
	for _, f := range metricsMetadata(m) {
		raw, ok, err := o.get(f.key, false)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		mo, err := parseObject(o.path+"."+f.key, raw)
		if err != nil {
			return nil, err
		}
		md := &parleyv1.MetricsMetadata{}
		for _, g := range []struct {
			key string
			dst **string
		}{{"model_name", &md.ModelName}, {"model_provider", &md.ModelProvider}} {
			raw, ok, err := mo.get(g.key, false)
			if err != nil {
				return nil, err
			}
			if ok {
				var s string
				if json.Unmarshal(raw, &s) != nil {
					return nil, mo.fail(g.key, "must be a string")
				}
				*g.dst = &s
			}
		}
		if md.UnknownJson, err = mo.rest(metadataKeys); err != nil {
			return nil, err
		}
		*f.dst = md
	}
	if m.UnknownJson, err = o.rest(metricsKeys); err != nil {
		return nil, err
	}
	return m, nil
}

func decodeFunctionCall(o *object) (*parleyv1.ChatContext_ChatItem, error) {
	c := &parleyv1.FunctionCall{}
	var err error
	if c.Id, err = o.optionalString("id"); err != nil {
		return nil, err
	}
	if c.CallId, err = o.requiredString("call_id"); err != nil {
		return nil, err
	}
	if c.Arguments, err = o.requiredString("arguments"); err != nil {
		return nil, err
	}
	if c.Name, err = o.requiredString("name"); err != nil {
		return nil, err
	}
	if c.CreatedAt, err = o.timestamp("created_at"); err != nil {
		return nil, err
	}
	if c.Extra, c.ExtraJson, err = o.extra("extra"); err != nil {
		return nil, err
	}
	if s, ok, err := o.nullableString("group_id"); err != nil {
		return nil, err
	} else if ok {
		c.GroupId = &s
	}
	if c.UnknownJson, err = o.rest(functionCallKeys); err != nil {
		return nil, err
	}
	return &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: c}}, nil
}

func decodeFunctionCallOutput(o *object) (*parleyv1.ChatContext_ChatItem, error) {
	c := &parleyv1.FunctionCallOutput{}
	var err error
	if c.Id, err = o.optionalString("id"); err != nil {
		return nil, err
	}
	if c.Name, err = o.optionalString("name"); err != nil {
		return nil, err
	}
	if c.CallId, err = o.requiredString("call_id"); err != nil {
		return nil, err
	}
	if c.Output, err = o.requiredString("output"); err != nil {
		return nil, err
	}
	var ok bool
	if c.IsError, ok, err = o.boolean("is_error", false); err != nil {
		return nil, err
	} else if !ok {
		return nil, o.fail("is_error", "is required")
	}
	if c.CreatedAt, err = o.timestamp("created_at"); err != nil {
		return nil, err
	}
	if b, ok, err := o.boolean("reply_required", false); err != nil {
		return nil, err
	} else if ok {
		c.ReplyRequired = &b
	}
	if c.UnknownJson, err = o.rest(functionCallOutputKeys); err != nil {
		return nil, err
	}
	return &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: c}}, nil
}

func decodeAgentHandoff(o *object) (*parleyv1.ChatContext_ChatItem, error) {
	h := &parleyv1.AgentHandoff{}
	var err error
	if h.Id, err = o.optionalString("id"); err != nil {
		return nil, err
	}
	if s, ok, err := o.nullableString("old_agent_id"); err != nil {
		return nil, err
	} else if ok {
		h.OldAgentId = &s
	}
	if h.NewAgentId, err = o.requiredString("new_agent_id"); err != nil {
		return nil, err
	}
	if h.CreatedAt, err = o.timestamp("created_at"); err != nil {
		return nil, err
	}
	if h.UnknownJson, err = o.rest(agentHandoffKeys); err != nil {
		return nil, err
	}
	return &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: h}}, nil
}

func decodeAgentConfigUpdate(o *object) (*parleyv1.ChatContext_ChatItem, error) {
	u := &parleyv1.AgentConfigUpdate{}
	var err error
	if u.Id, err = o.optionalString("id"); err != nil {
		return nil, err
	}
	if s, ok, err := o.nullableString("instructions"); err != nil {
		return nil, err
	} else if ok {
		u.Instructions = &s
	}
	if raw, ok, err := o.get("tools_added", true); err != nil {
		return nil, err
	} else if ok {
		if u.ToolsAdded, err = stringList(o, "tools_added", raw); err != nil {
			return nil, err
		}
		u.HasToolsAdded = true
	}
	if raw, ok, err := o.get("tools_removed", true); err != nil {
		return nil, err
	} else if ok {
		if u.ToolsRemoved, err = stringList(o, "tools_removed", raw); err != nil {
			return nil, err
		}
		u.HasToolsRemoved = true
	}
	if u.CreatedAt, err = o.timestamp("created_at"); err != nil {
		return nil, err
	}
	if u.UnknownJson, err = o.rest(agentConfigUpdateKeys); err != nil {
		return nil, err
	}
	return &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_AgentConfigUpdate{AgentConfigUpdate: u}}, nil
}

func stringList(o *object, key string, raw json.RawMessage) ([]string, error) {
	var s []string
	if json.Unmarshal(raw, &s) != nil || s == nil {
		return nil, o.fail(key, "must be a list of strings")
	}
	// A JSON null inside the list decodes as "", which from_dict refuses.
	var parts []json.RawMessage
	_ = json.Unmarshal(raw, &parts)
	for _, p := range parts {
		if string(p) == "null" {
			return nil, o.fail(key, "must be a list of strings")
		}
	}
	return s, nil
}

// object is one JSON object being decoded; it remembers the keys asked for,
// present or not, which rest checks against the object's known keys.
type object struct {
	path string
	m    map[string]json.RawMessage
	used map[string]bool
}

func parseObject(path string, raw json.RawMessage) (*object, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, broken(path + " must be a JSON object")
	}
	return &object{path: path, m: m, used: make(map[string]bool, len(m))}, nil
}

func (o *object) fail(key, msg string) error {
	return broken(fmt.Sprintf("%s.%s %s", o.path, key, msg))
}

// get returns key's value and whether it is there. A null counts as absent
// when nullable (from_dict's None), and is an error otherwise.
func (o *object) get(key string, nullable bool) (json.RawMessage, bool, error) {
	o.used[key] = true
	raw, ok := o.m[key]
	if !ok {
		return nil, false, nil
	}
	if string(bytes.TrimSpace(raw)) == "null" {
		if nullable {
			return nil, false, nil
		}
		return nil, false, o.fail(key, "must not be null")
	}
	return raw, true, nil
}

// rest returns the keys not in known, each with its value's compact JSON
// text, or nil when there are none. It is called once the object's keys
// are read; that none was read outside known is checked here, so that the
// known lists (which the encoder checks unknown_json against) stay whole.
func (o *object) rest(known []string) (map[string]string, error) {
	for k := range o.used {
		if !slices.Contains(known, k) {
			return nil, fmt.Errorf("agentsjson: %s read key %q, which its known keys lack", o.path, k)
		}
	}
	var out map[string]string
	for k, v := range o.m {
		if slices.Contains(known, k) {
			continue
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, v); err != nil {
			return nil, o.fail(k, "is not JSON")
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[k] = buf.String()
	}
	return out, nil
}

func (o *object) nullableString(key string) (string, bool, error) {
	raw, ok, err := o.get(key, true)
	if err != nil || !ok {
		return "", false, err
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false, o.fail(key, "must be a string")
	}
	return s, true, nil
}

func (o *object) optionalString(key string) (string, error) {
	raw, ok, err := o.get(key, false)
	if err != nil || !ok {
		return "", err
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", o.fail(key, "must be a string")
	}
	return s, nil
}

func (o *object) requiredString(key string) (string, error) {
	if _, ok := o.m[key]; !ok {
		o.used[key] = true
		return "", o.fail(key, "is required")
	}
	return o.optionalString(key)
}

func (o *object) boolean(key string, nullable bool) (bool, bool, error) {
	raw, ok, err := o.get(key, nullable)
	if err != nil || !ok {
		return false, false, err
	}
	var b bool
	if json.Unmarshal(raw, &b) != nil {
		return false, false, o.fail(key, "must be true or false")
	}
	return b, true, nil
}

func (o *object) float(key string, nullable bool) (float64, bool, error) {
	raw, ok, err := o.get(key, nullable)
	if err != nil || !ok {
		return 0, false, err
	}
	var f float64
	if json.Unmarshal(raw, &f) != nil {
		return 0, false, o.fail(key, "must be a finite number")
	}
	return f, true, nil
}

// timestamp reads seconds since the epoch as a Timestamp: the float's
// nearest nanosecond, which renders back as the same float (see toFloat).
func (o *object) timestamp(key string) (*timestamppb.Timestamp, error) {
	f, ok, err := o.float(key, false)
	if err != nil || !ok {
		return nil, err
	}
	ts, ok := fromFloat(f)
	if !ok {
		return nil, o.fail(key, "must be seconds since the epoch within years 1 to 9999")
	}
	return ts, nil
}

// extra splits an extra dict into its string values and the JSON text of
// the others.
func (o *object) extra(key string) (map[string]string, map[string]string, error) {
	raw, ok, err := o.get(key, false)
	if err != nil || !ok {
		return nil, nil, err
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || m == nil {
		return nil, nil, o.fail(key, "must be an object")
	}
	var strs, others map[string]string
	for k, v := range m {
		var s string
		if isString(v) && json.Unmarshal(v, &s) == nil {
			if strs == nil {
				strs = map[string]string{}
			}
			strs[k] = s
			continue
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, v); err != nil {
			return nil, nil, o.fail(key, "must be an object")
		}
		if others == nil {
			others = map[string]string{}
		}
		others[k] = buf.String()
	}
	return strs, others, nil
}

// isString reports whether raw is a JSON string (a null would decode into
// a Go string too).
func isString(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == '"'
}

// The seconds of 0001-01-01 and 9999-12-31T23:59:59, a Timestamp's range.
const (
	minSeconds = -62135596800
	maxSeconds = 253402300799
)

var nanosPerSecond = big.NewInt(1e9)

// fromFloat returns the Timestamp nearest to f seconds since the epoch.
func fromFloat(f float64) (*timestamppb.Timestamp, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) || f < minSeconds || f >= maxSeconds+1 {
		return nil, false
	}
	// Exactly: f as a fraction, times 1e9, rounded half up to a whole
	// number of nanoseconds.
	r := new(big.Rat).SetFloat64(f)
	r.Mul(r, new(big.Rat).SetInt(nanosPerSecond))
	num := new(big.Int).Mul(r.Num(), big.NewInt(2))
	num.Add(num, r.Denom())
	den := new(big.Int).Mul(r.Denom(), big.NewInt(2))
	ns := new(big.Int).Div(num, den) // Euclidean: floor for a positive divisor
	sec, nanos := new(big.Int).DivMod(ns, nanosPerSecond, new(big.Int))
	ts := &timestamppb.Timestamp{Seconds: sec.Int64(), Nanos: int32(nanos.Int64())}
	if ts.CheckValid() != nil {
		return nil, false
	}
	return ts, true
}

// toFloat returns the float64 nearest to ts. For a ts made by fromFloat
// from f with |f| >= 2^23 it is f again: f's spacing there exceeds a
// nanosecond, so f is the nearest float to its nearest nanosecond.
func toFloat(ts *timestamppb.Timestamp) float64 {
	ns := new(big.Int).Mul(big.NewInt(ts.GetSeconds()), nanosPerSecond)
	ns.Add(ns, big.NewInt(int64(ts.GetNanos())))
	f, _ := new(big.Rat).SetFrac(ns, nanosPerSecond).Float64()
	return f
}

func broken(msg string) error { return rule.Broken(strings.TrimSpace(msg)) }
