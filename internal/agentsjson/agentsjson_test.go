package agentsjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

// allKinds is what livekit-agents 1.8.9 wrote for
// testdata/livekit-agents/chat_context.py (regenerate it by running that
// script in a venv with the pinned package).
func allKinds(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/all_kinds.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// generic parses JSON keeping numbers as their text, so that a comparison
// sees a float's every digit.
func generic(t testing.TB, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return v
}

func TestFixtureRoundTrips(t *testing.T) {
	in := allKinds(t)
	items, err := Decode(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 13 {
		t.Fatalf("decoded %d items, want 13", len(items))
	}
	// Every key livekit-agents 1.8.9 writes is a known one.
	for i, it := range items {
		if n := unknownKeys(it); n != 0 {
			t.Errorf("items[%d] kept %d unknown keys: %v", i, n, it)
		}
	}
	out, err := Encode(items)
	if err != nil {
		t.Fatal(err)
	}
	// Same keys, values and number texts as Python wrote (key order aside,
	// which no dict comparison sees).
	if diff := cmp.Diff(generic(t, in), generic(t, out)); diff != "" {
		t.Fatalf("Encode(Decode(fixture)) differs from the fixture (-python +go):\n%s", diff)
	}
	// Field order follows livekit-agents' declarations, like to_dict().
	if !bytes.HasPrefix(out, []byte(`{"items":[{"id":"item_sys","type":"message","role":"system","content":["You are a helpful assistant.",{"type":"cache_breakpoint"}],"interrupted":false,"extra":{},"metrics":{},"created_at":1733097600.1234567}`)) {
		t.Fatalf("unexpected rendering: %.300s", out)
	}
}

func TestFixtureFields(t *testing.T) {
	items, err := Decode(allKinds(t))
	if err != nil {
		t.Fatal(err)
	}
	user := items[2].GetMessage()
	if got, want := user.GetExtra(), map[string]string{"lang": "en"}; !cmp.Equal(got, want) {
		t.Errorf("extra = %v, want %v", got, want)
	}
	wantJSON := map[string]string{"n": "3", "big": "12345678901234567890", "f": "0.1", "none": "null", "nested": `{"a":[1,"b",null]}`}
	if diff := cmp.Diff(wantJSON, user.GetExtraJson()); diff != "" {
		t.Errorf("extra_json (-want +got):\n%s", diff)
	}
	if got := user.GetMetrics().GetSttMetadata().GetModelProvider(); got != "deepgram" {
		t.Errorf("stt provider = %q", got)
	}
	// The float nearest 1733097601.7654321 is 1733097601.765432119369506835...
	if ts := user.GetCreatedAt(); ts.GetSeconds() != 1733097601 || ts.GetNanos() != 765432119 {
		t.Errorf("created_at = %v, want 1733097601.765432119 s", ts)
	}
	asst := items[5].GetMessage()
	if !asst.GetInterrupted() || asst.GetMetrics().GetE2ELatency() != 0.875 || !cmp.Equal(asst.GetMetrics().GetProviderRequestIds(), []string{"req_1", "req_2"}) {
		t.Errorf("assistant message = %v", asst)
	}
	out := items[4].GetFunctionCallOutput()
	if !out.GetIsError() || out.ReplyRequired == nil || out.GetReplyRequired() {
		t.Errorf("output = %v, want is_error and reply_required false", out)
	}
	if items[8].GetFunctionCallOutput().GetReplyRequired() != true {
		t.Errorf("second output's reply_required should be true")
	}
	cfg := items[11].GetAgentConfigUpdate()
	if !cfg.GetHasToolsRemoved() || len(cfg.GetToolsRemoved()) != 0 || cfg.GetInstructions() != "Be brief." {
		t.Errorf("config update = %v", cfg)
	}
	if cfg0 := items[12].GetAgentConfigUpdate(); cfg0.GetHasToolsAdded() || cfg0.Instructions != nil {
		t.Errorf("bare config update = %v", cfg0)
	}
	if items[10].GetAgentHandoff().OldAgentId != nil {
		t.Errorf("handoff without old agent has one")
	}
	img := items[6].GetMessage().GetContent()[0].GetImage()
	if img.GetInferenceWidth() != 512 || img.GetMimeType() != "image/jpeg" || img.GetInferenceDetail() != "low" {
		t.Errorf("image = %v", img)
	}
}

// TestProtoRoundTrips starts from proto: a proto item renders and parses
// back to itself (with the has_ flags a non-empty list implies set).
func TestProtoRoundTrips(t *testing.T) {
	f := 0.5
	tr := true
	// A Timestamp finer than a float renders as the nearest float, so this
	// one comes from a float.
	spoke, _ := fromFloat(1800000000.1234567)
	s := "x"
	items := []*parleyv1.ChatContext_ChatItem{
		{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Id: "m", Role: parleyv1.ChatRole_CHAT_ROLE_ASSISTANT, Interrupted: true, TranscriptConfidence: &f,
			Content: []*parleyv1.ChatMessage_ChatContent{{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: "hé\"\\\n\u2028"}}},
			Extra:   map[string]string{"a": "b"}, ExtraJson: map[string]string{"c": "[1,2]"},
			Metrics: &parleyv1.MetricsReport{
				StartedSpeakingAt: spoke,
				LlmNodeTtft:       &f, HasProviderRequestIds: true,
				LlmMetadata: &parleyv1.MetricsMetadata{ModelName: &s},
			},
			CreatedAt: &timestamppb.Timestamp{Seconds: 1800000000},
			Hash:      &s,
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{Id: "c", CallId: "k", Name: "n", Arguments: "{}", GroupId: &s}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{Id: "o", CallId: "k", Output: "out", ReplyRequired: &tr}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{Id: "h", OldAgentId: &s, NewAgentId: "y"}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentConfigUpdate{AgentConfigUpdate: &parleyv1.AgentConfigUpdate{Id: "u", ToolsAdded: []string{"t"}, HasToolsAdded: true, HasToolsRemoved: true}}},
	}
	b, err := Encode(items)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	// A message without metrics reads back with an empty report: to_dict()
	// always writes "metrics": {}.
	want := &parleyv1.ChatContext{Items: items}
	if diff := cmp.Diff(want, &parleyv1.ChatContext{Items: back}, protocmp.Transform()); diff != "" {
		t.Fatalf("Decode(Encode(items)) (-want +got):\n%s\n%s", diff, b)
	}
}

func TestDecodeRefuses(t *testing.T) {
	msg := func(extra string) string {
		return `{"items":[{"id":"a","type":"message","role":"user","content":["x"]` + extra + `}]}`
	}
	for name, tc := range map[string]struct{ in, want string }{
		"not JSON":           {`{`, "chat context"},
		"scalar":             {`3`, "chat context must be"},
		"no items":           {`{}`, "items is required"},
		"item not object":    {`["x"]`, "items[0] must be a JSON object"},
		"no type":            {`[{"id":"a"}]`, "items[0].type is required"},
		"unknown type":       {`[{"type":"thought"}]`, `unknown type "thought"`},
		"bad role":           {`[{"type":"message","role":"robot","content":[]}]`, "items[0].role must be"},
		"no content":         {`[{"type":"message","role":"user"}]`, "items[0].content is required"},
		"content string":     {`[{"type":"message","role":"user","content":"x"}]`, "content must be a list"},
		"null content part":  {`[{"type":"message","role":"user","content":[null]}]`, "content[0] must be a string or a content object"},
		"audio":              {`[{"type":"message","role":"user","content":[{"type":"audio_content","frame":[]}]}]`, "audio content is not stored"},
		"unknown content":    {msg(`,"content":[{"type":"video_content","url":"u"}]`), `content[0]: unknown content type "video_content"`},
		"unknown key typed":  {msg(`,"colour":"red","interrupted":1`), "interrupted must be true or false"},
		"33 unknown keys":    {msg(manyKeys(20, "k") + `,"metrics":{` + manyKeys(13, "m")[1:] + `}`), "items[0]: 33 keys livekit-agents 1.8.9 does not define, at most 32"},
		"metric not number":  {msg(`,"metrics":{"e2e_latency":"1"}`), "e2e_latency must be a finite number"},
		"null interrupted":   {msg(`,"interrupted":null`), "interrupted must not be null"},
		"string interrupted": {msg(`,"interrupted":"yes"`), "interrupted must be true or false"},
		"huge time":          {msg(`,"created_at":1e300`), "created_at must be seconds since the epoch"},
		"overflow":           {msg(`,"created_at":1e400`), "created_at must be a finite number"},
		"extra list":         {msg(`,"extra":[]`), "extra must be an object"},
		"null in tools":      {`[{"type":"agent_config_update","tools_added":["a",null]}]`, "tools_added must be a list of strings"},
		"output no is_error": {`[{"type":"function_call_output","call_id":"c","output":"o"}]`, "is_error is required"},
		"call no name":       {`[{"type":"function_call","call_id":"c","arguments":"{}"}]`, "name is required"},
		"bad detail":         {`[{"type":"message","role":"user","content":[{"type":"image_content","image":"u","inference_detail":"max"}]}]`, "inference_detail must be"},
		"width float":        {`[{"type":"message","role":"user","content":[{"type":"image_content","image":"u","inference_width":1.5}]}]`, "inference_width must be an integer"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode([]byte(tc.in))
			if !errors.Is(err, rule.ErrBroken) {
				t.Fatalf("Decode(%s) = %v, want a rule error", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode(%s) = %q, want it to say %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestDecodeAcceptsNullsWherePythonHasNone(t *testing.T) {
	items, err := Decode([]byte(`[{"id":"a","type":"message","role":"user","content":[],"transcript_confidence":null,"hash":null},
		{"type":"agent_handoff","old_agent_id":null,"new_agent_id":"b"},{"type":"agent_config_update","instructions":null,"tools_added":null}]`))
	if err != nil {
		t.Fatal(err)
	}
	if m := items[0].GetMessage(); m.TranscriptConfidence != nil || m.Hash != nil || items[1].GetAgentHandoff().OldAgentId != nil || items[2].GetAgentConfigUpdate().GetHasToolsAdded() {
		t.Fatalf("nulls were kept as values: %v", items)
	}
}

func TestCheckRefusesUnrenderable(t *testing.T) {
	nan := math.NaN()
	for name, it := range map[string]*parleyv1.ChatContext_ChatItem{
		"no kind":     {},
		"no role":     {Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{Id: "a"}}},
		"empty part":  {Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{Role: parleyv1.ChatRole_CHAT_ROLE_USER, Content: []*parleyv1.ChatMessage_ChatContent{{}}}}},
		"nan":         {Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{Role: parleyv1.ChatRole_CHAT_ROLE_USER, TranscriptConfidence: &nan}}},
		"bad json":    {Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{ExtraJson: map[string]string{"a": "{"}}}},
		"both extras": {Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{Extra: map[string]string{"a": "x"}, ExtraJson: map[string]string{"a": "1"}}}},
		"bad time":    {Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{CreatedAt: &timestamppb.Timestamp{Nanos: -1}}}},
		"unknown is known": {Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Role: parleyv1.ChatRole_CHAT_ROLE_USER, UnknownJson: map[string]string{"role": `"system"`},
		}}},
		"unknown metric is known": {Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Role: parleyv1.ChatRole_CHAT_ROLE_USER, Metrics: &parleyv1.MetricsReport{UnknownJson: map[string]string{"e2e_latency": "1"}},
		}}},
		"unknown type key": {Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{UnknownJson: map[string]string{"type": `"message"`}}}},
		"unknown not JSON": {Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{UnknownJson: map[string]string{"cost": "{"}}}},
		"33 unknown keys":  {Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{UnknownJson: keyMap(33)}}},
	} {
		if err := Check(it); !errors.Is(err, rule.ErrBroken) {
			t.Errorf("%s: Check = %v, want a rule error", name, err)
		}
	}
	if err := Check(&parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{UnknownJson: keyMap(32)}}}); err != nil {
		t.Errorf("Check of %d unknown keys = %v", MaxUnknownKeys, err)
	}
}

// manyKeys is n unknown keys of a JSON object, each after a comma.
func manyKeys(n int, prefix string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"%s%d":%d`, prefix, i, i)
	}
	return b.String()
}

func keyMap(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprint("k", i)] = "true"
	}
	return m
}

// futureContext is what a newer livekit-agents might write: keys 1.8.9
// does not define on every kind of item and object, values of every JSON
// type, and a key of the context itself.
const futureContext = `{"items":[
 {"id":"m","type":"message","role":"user",
  "content":["x",{"type":"cache_breakpoint","ttl":"5m"},{"type":"image_content","id":"i","image":"u","inference_detail":"auto","blur":true}],
  "interrupted":false,"extra":{},
  "metrics":{"e2e_latency":0.5,"speech_rate":{"wpm":150},"llm_metadata":{"model_name":"g","region":"eu"}},
  "created_at":1800000000.5,"sentiment":{"label":"calm","score":0.25},"big":12345678901234567890,"tag":"\u00e9"},
 {"id":"c","type":"function_call","call_id":"k","arguments":"{}","name":"n","extra":{},"cost":null},
 {"id":"o","type":"function_call_output","name":"","call_id":"k","output":"","is_error":false,"reply_required":true,"latency":[1,2.5]},
 {"id":"h","type":"agent_handoff","new_agent_id":"b","reason":"escalation"},
 {"id":"u","type":"agent_config_update","tools_added":[],"model":"x"}
],"version":2}`

// TestUnknownKeysKept: keys 1.8.9 does not define are kept with their
// object and rendered back as they came; the context's own are not.
func TestUnknownKeysKept(t *testing.T) {
	items, err := Decode([]byte(futureContext))
	if err != nil {
		t.Fatal(err)
	}
	m := items[0].GetMessage()
	for _, c := range []struct {
		name      string
		got, want map[string]string
	}{
		{"message", m.GetUnknownJson(), map[string]string{"sentiment": `{"label":"calm","score":0.25}`, "big": "12345678901234567890", "tag": `"\u00e9"`}},
		{"cache breakpoint", m.GetContent()[1].GetCacheBreakpoint().GetUnknownJson(), map[string]string{"ttl": `"5m"`}},
		{"image", m.GetContent()[2].GetImage().GetUnknownJson(), map[string]string{"blur": "true"}},
		{"metrics", m.GetMetrics().GetUnknownJson(), map[string]string{"speech_rate": `{"wpm":150}`}},
		{"metadata", m.GetMetrics().GetLlmMetadata().GetUnknownJson(), map[string]string{"region": `"eu"`}},
		{"function call", items[1].GetFunctionCall().GetUnknownJson(), map[string]string{"cost": "null"}},
		{"output", items[2].GetFunctionCallOutput().GetUnknownJson(), map[string]string{"latency": "[1,2.5]"}},
		{"handoff", items[3].GetAgentHandoff().GetUnknownJson(), map[string]string{"reason": `"escalation"`}},
		{"config update", items[4].GetAgentConfigUpdate().GetUnknownJson(), map[string]string{"model": `"x"`}},
	} {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s unknown_json (-want +got):\n%s", c.name, diff)
		}
	}
	for _, it := range items {
		if err := Check(it); err != nil {
			t.Errorf("Check(%v) = %v", it, err)
		}
	}
	out, err := Encode(items)
	if err != nil {
		t.Fatal(err)
	}
	want := generic(t, []byte(futureContext)).(map[string]any)
	delete(want, "version")
	if diff := cmp.Diff(want, generic(t, out)); diff != "" {
		t.Fatalf("Encode(Decode(future)) (-want +got):\n%s", diff)
	}
	// Known keys first, in livekit-agents' order, then the unknown sorted.
	if !bytes.Contains(out, []byte(`"created_at":1800000000.5,"big":12345678901234567890,"sentiment":{"label":"calm","score":0.25},"tag":"\u00e9"}`)) {
		t.Errorf("unexpected rendering: %s", out)
	}
	back, err := Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&parleyv1.ChatContext{Items: items}, &parleyv1.ChatContext{Items: back}, protocmp.Transform()); diff != "" {
		t.Fatalf("Decode(Encode(items)) (-want +got):\n%s", diff)
	}
}

// TestKnownKeysAreRead: the decoder reads every key of each known list
// (a value of the wrong type for it is refused, naming it), so no key
// livekit-agents defines is kept as unknown, and an unknown_json key that
// would be rendered twice is refused by Check. That it reads no key
// outside them is checked as it decodes (object.rest).
func TestKnownKeysAreRead(t *testing.T) {
	wrong := json.RawMessage(`[[]]`)
	for _, c := range []struct {
		name  string
		known []string
		base  map[string]any
		wrap  func(obj map[string]any) any
	}{
		{"message", messageKeys, map[string]any{"type": "message", "role": "user", "content": []any{}}, nil},
		{"function call", functionCallKeys, map[string]any{"type": "function_call", "call_id": "c", "arguments": "{}", "name": "n"}, nil},
		{"output", functionCallOutputKeys, map[string]any{"type": "function_call_output", "call_id": "c", "output": "o", "is_error": false}, nil},
		{"handoff", agentHandoffKeys, map[string]any{"type": "agent_handoff", "new_agent_id": "b"}, nil},
		{"config update", agentConfigUpdateKeys, map[string]any{"type": "agent_config_update"}, nil},
		{"image", imageKeys, map[string]any{"type": "image_content", "image": "u"}, func(o map[string]any) any {
			return map[string]any{"type": "message", "role": "user", "content": []any{o}}
		}},
		{"cache breakpoint", cacheBreakpointKeys, map[string]any{"type": "cache_breakpoint"}, func(o map[string]any) any {
			return map[string]any{"type": "message", "role": "user", "content": []any{o}}
		}},
		{"metrics", metricsKeys, map[string]any{}, func(o map[string]any) any {
			return map[string]any{"type": "message", "role": "user", "content": []any{}, "metrics": o}
		}},
		{"metadata", metadataKeys, map[string]any{}, func(o map[string]any) any {
			return map[string]any{"type": "message", "role": "user", "content": []any{}, "metrics": map[string]any{"tts_metadata": o}}
		}},
	} {
		wrap := c.wrap
		if wrap == nil {
			wrap = func(o map[string]any) any { return o }
		}
		decode := func(obj map[string]any) error {
			b, err := json.Marshal([]any{wrap(obj)})
			if err != nil {
				t.Fatal(err)
			}
			_, err = Decode(b)
			return err
		}
		if err := decode(c.base); err != nil {
			t.Fatalf("%s: base: %v", c.name, err)
		}
		for _, k := range c.known {
			obj := maps.Clone(c.base)
			obj[k] = wrong
			if err := decode(obj); err == nil || !strings.Contains(err.Error(), k) {
				t.Errorf("%s: %s of the wrong type: Decode = %v, want an error naming it", c.name, k, err)
			}
		}
	}
}

// TestTimestampsKeepFloats: every float from 2^23 s (1970-04-08) to year
// 9999 survives seconds and nanos bit for bit; the real-client test checks
// the same against Python.
func TestTimestampsKeepFloats(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	check := func(f float64) {
		ts, ok := fromFloat(f)
		if !ok {
			t.Fatalf("fromFloat(%v) refused", f)
		}
		if got := toFloat(ts); math.Float64bits(got) != math.Float64bits(f) {
			t.Fatalf("%v -> %v -> %v", f, ts, got)
		}
	}
	for _, f := range []float64{1 << 23, 1733097600.1234567, 1733097601.9999999, 1796168880.3785577, maxSeconds + 0.5, -(1 << 35) + 0.25} {
		check(f)
	}
	for range 200000 {
		// Uniform in bits, so every exponent from 2^23 to 2^38 is covered.
		lo, hi := math.Float64bits(1<<23), math.Float64bits(maxSeconds)
		check(math.Float64frombits(lo + r.Uint64N(hi-lo)))
	}
}

func TestPyFloat(t *testing.T) {
	// What Python's repr (and so json.dumps) writes for each.
	for f, want := range map[float64]string{
		0: "0.0", 1733097600: "1733097600.0", 0.1: "0.1", 1e-05: "1e-05", 0.0001: "0.0001",
		1e16: "1e+16", 1.5e16: "1.5e+16", 9999999999999998: "9999999999999998.0", -2.5: "-2.5",
		1.2345678901234568e+17: "1.2345678901234568e+17", 5e-324: "5e-324",
	} {
		if got := pyFloat(f); got != want {
			t.Errorf("pyFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

// withDefaults is items as a context with from_dict()'s defaults filled
// in where an absent key reads as unset but renders as the default
// (reply_required, inference_detail): either reads back as the same item.
func withDefaults(items []*parleyv1.ChatContext_ChatItem) *parleyv1.ChatContext {
	cc := proto.CloneOf(&parleyv1.ChatContext{Items: items})
	for _, it := range cc.GetItems() {
		if o := it.GetFunctionCallOutput(); o != nil && o.ReplyRequired == nil {
			o.ReplyRequired = proto.Bool(true)
		}
		for _, c := range it.GetMessage().GetContent() {
			if img := c.GetImage(); img != nil && img.InferenceDetail == "" {
				img.InferenceDetail = "auto"
			}
		}
	}
	return cc
}

// FuzzDecode: whatever Decode accepts renders, and reads back as itself
// (from_dict()'s defaults aside).
func FuzzDecode(f *testing.F) {
	f.Add(allKinds(f))
	f.Add([]byte(`[{"type":"agent_handoff","new_agent_id":"b","created_at":1.5}]`))
	f.Add([]byte(`{"items":[{"type":"message","role":"user","content":["x",{"type":"cache_breakpoint"}],"extra":{"a":{"b":[null]}}}]}`))
	f.Add([]byte(futureContext))
	f.Fuzz(func(t *testing.T, in []byte) {
		items, err := Decode(in)
		if err != nil {
			if !errors.Is(err, rule.ErrBroken) {
				t.Fatalf("Decode error is no rule error: %v", err)
			}
			return
		}
		out, err := Encode(items)
		if err != nil {
			t.Fatalf("Encode of decoded items: %v", err)
		}
		back, err := Decode(out)
		if err != nil {
			t.Fatalf("Decode(Encode): %v\n%s", err, out)
		}
		if !proto.Equal(withDefaults(items), withDefaults(back)) {
			t.Fatalf("round trip changed the items:\n%s", out)
		}
		again, err := Encode(back)
		if err != nil || !bytes.Equal(out, again) {
			t.Fatalf("second rendering differs (%v):\n%s\n%s", err, out, again)
		}
	})
}
