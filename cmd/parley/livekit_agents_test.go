package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// liveKitAgentsDir holds the pinned livekit-agents requirement and the
// Python side of TestLiveKitAgents.
const liveKitAgentsDir = "../../testdata/livekit-agents"

// liveKitAgentsMu serialises making the shared virtual environment.
var liveKitAgentsMu sync.Mutex

// liveKitAgentsPython returns the python of a virtual environment under
// .build with the pinned livekit-agents installed from PyPI, making it when
// it is missing or was made for other requirements (about 400 MB and a few
// minutes the first time; nothing after). It fails the test, never skips
// it, when the environment cannot be made.
func liveKitAgentsPython(t *testing.T) string {
	t.Helper()
	// Tests that share the environment may run in parallel: one makes it.
	liveKitAgentsMu.Lock()
	defer liveKitAgentsMu.Unlock()
	reqFile, err := filepath.Abs(filepath.Join(liveKitAgentsDir, "requirements.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(reqFile)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.Abs("../../.build/livekit-agents-venv")
	if err != nil {
		t.Fatal(err)
	}
	py := filepath.Join(dir, "bin", "python")
	// The stamp is written last: an interrupted install is made again.
	stamp := filepath.Join(dir, "parley-requirements.txt")
	if got, err := os.ReadFile(stamp); err == nil && bytes.Equal(got, want) {
		return py
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed for the livekit-agents test: install python3 and python3-venv (.ci/run does)")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	for _, args := range [][]string{
		{"python3", "-m", "venv", dir},
		{py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--only-binary=:all:", "-r", reqFile},
	} {
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if err := os.WriteFile(stamp, want, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("installed %s into %s in %v", reqFile, dir, time.Since(start).Round(time.Second))
	return py
}

// seededItem is what check_parley.py expects of one item of the seeded
// conversation.
type seededItem struct {
	ID          string         `json:"id"`
	Type        string         `json:"type"`
	Role        string         `json:"role,omitempty"`
	Text        string         `json:"text,omitempty"`
	Interrupted bool           `json:"interrupted"`
	Metrics     map[string]any `json:"metrics"`
	CallID      string         `json:"call_id,omitempty"`
	IsError     bool           `json:"is_error"`
}

// TestLiveKitAgents is the real-client proof: livekit-agents (Python, the
// pinned release) restores a context Parley stores, a context it makes
// survives AppendItems and GetChatContext unchanged, and so do the fields of
// a newer release's items (simulated by models with fields it lacks).
func TestLiveKitAgents(t *testing.T) {
	py := liveKitAgentsPython(t)
	s := startServer(t, baseEnv(t, testenv.DatabaseURL(t)))
	tok := registerUser(t, s.base)
	convs := parleyv1connect.NewConversationServiceClient(http.DefaultClient, s.base)
	newConv := func() string {
		c, err := convs.CreateConversation(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "agents"}), tok))
		if err != nil {
			t.Fatal(err)
		}
		return c.Msg.GetConversation().GetId()
	}
	seeded, empty, future := newConv(), newConv(), newConv()

	// A SaveTurn, then items of every kind from a Go agent.
	if _, err := convs.SaveTurn(t.Context(), bearer(connect.NewRequest(&parleyv1.SaveTurnRequest{
		ConversationId: seeded, TurnId: "t1", UserMessage: "Hello", AssistantMessage: "Hi, how can I help?",
	}), tok)); err != nil {
		t.Fatal(err)
	}
	at := func(sec int64, nanos int32) *timestamppb.Timestamp {
		return &timestamppb.Timestamp{Seconds: 1733097600 + sec, Nanos: nanos}
	}
	f := func(v float64) *float64 { return &v }
	text := func(s string) []*parleyv1.ChatMessage_ChatContent {
		return []*parleyv1.ChatMessage_ChatContent{{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: s}}}
	}
	items := []*parleyv1.ChatContext_ChatItem{
		{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Id: "go_user", Role: parleyv1.ChatRole_CHAT_ROLE_USER, Content: text("Weather in Paris?"), CreatedAt: at(10, 0),
			Metrics: &parleyv1.MetricsReport{StartedSpeakingAt: at(8, 250000000), StoppedSpeakingAt: at(9, 500000000), TranscriptionDelay: f(0.125), EndOfTurnDelay: f(0.5)},
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{
			Id: "go_call", CallId: "call_w", Name: "get_weather", Arguments: `{"city":"Paris"}`, CreatedAt: at(11, 0),
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{
			Id: "go_out", CallId: "call_w", Name: "get_weather", Output: "service down", IsError: true, CreatedAt: at(12, 0),
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{
			Id: "go_asst", Role: parleyv1.ChatRole_CHAT_ROLE_ASSISTANT, Content: text("Sorry, the weather service is"), Interrupted: true, CreatedAt: at(13, 0),
			Metrics: &parleyv1.MetricsReport{StartedSpeakingAt: at(13, 500000000), LlmNodeTtft: f(0.25), TtsNodeTtfb: f(0.0625), E2ELatency: f(0.75)},
		}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentHandoff{AgentHandoff: &parleyv1.AgentHandoff{Id: "go_handoff", NewAgentId: "support", CreatedAt: at(14, 0)}}},
		{Item: &parleyv1.ChatContext_ChatItem_AgentConfigUpdate{AgentConfigUpdate: &parleyv1.AgentConfigUpdate{Id: "go_cfg", ToolsRemoved: []string{"get_weather"}, CreatedAt: at(15, 0)}}},
	}
	if _, err := convs.AppendItems(t.Context(), bearer(connect.NewRequest(&parleyv1.AppendItemsRequest{
		ConversationId: seeded, Items: items, Agent: "go-agent",
	}), tok)); err != nil {
		t.Fatal(err)
	}
	expect := []seededItem{
		{ID: "saveturn:t1:user", Type: "message", Role: "user", Text: "Hello", Metrics: map[string]any{}},
		{ID: "saveturn:t1:assistant", Type: "message", Role: "assistant", Text: "Hi, how can I help?", Metrics: map[string]any{}},
		{ID: "go_user", Type: "message", Role: "user", Text: "Weather in Paris?", Metrics: map[string]any{
			"started_speaking_at": 1733097608.25, "stopped_speaking_at": 1733097609.5, "transcription_delay": 0.125, "end_of_turn_delay": 0.5}},
		{ID: "go_call", Type: "function_call"},
		{ID: "go_out", Type: "function_call_output", CallID: "call_w", IsError: true},
		{ID: "go_asst", Type: "message", Role: "assistant", Text: "Sorry, the weather service is", Interrupted: true, Metrics: map[string]any{
			"started_speaking_at": 1733097613.5, "llm_node_ttft": 0.25, "tts_node_ttfb": 0.0625, "e2e_latency": 0.75}},
		{ID: "go_handoff", Type: "agent_handoff"},
		{ID: "go_cfg", Type: "agent_config_update"},
	}
	expectFile := filepath.Join(t.TempDir(), "expect.json")
	b, err := json.Marshal(expect)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(expectFile, b, 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "check_parley.py")
	cmd.Dir = liveKitAgentsDir
	cmd.Env = append(os.Environ(),
		"PARLEY_URL="+s.base, "PARLEY_TOKEN="+tok,
		"SEEDED_CONVERSATION="+seeded, "SEEDED_EXPECT="+expectFile, "EMPTY_CONVERSATION="+empty,
		"FUTURE_CONVERSATION="+future,
		"PYTHONDONTWRITEBYTECODE=1",
	)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("check_parley.py (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("check_parley.py: %v", err)
	}
	if !bytes.Contains(out, []byte("\nOK\n")) {
		t.Fatal("check_parley.py did not finish its checks")
	}
}
