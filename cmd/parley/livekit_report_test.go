package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// TestLiveKitAgentsReport is the session report's proof on the real
// framework: livekit-agents jobs (sdk/python/tests/report_check.py), each
// dispatched by a CreateRoom, run a text-only AgentSession with a scripted
// LLM and a function tool, persisted by parley_livekit; at the job's end
// the SDK flushes the items and files the job's own session report with
// ReportSession. Its chat history merges exactly once with the items
// appended live: in one call every item was appended live and the report
// adds none (after a first attempt answered unavailable: the SDK retries);
// in another the weather turn's appends were lost and the report adds just
// those, once. The same report again adds nothing, and the call carries the
// report's time and metrics. A third call opts out and has no report.
func TestLiveKitAgentsReport(t *testing.T) {
	py := liveKitAgentsPython(t)
	p := startAgentParley(t, "py-agent", "")
	src, err := filepath.Abs("../../sdk/python/src")
	if err != nil {
		t.Fatal(err)
	}
	p.checkReports(t, func(env ...string) *exec.Cmd {
		cmd := exec.CommandContext(t.Context(), py, "../../sdk/python/tests/report_check.py")
		cmd.Env = append(append(os.Environ(), "PYTHONPATH="+src), env...)
		return cmd
	})
}

// TestLiveKitAgentsNodeReport is TestLiveKitAgentsReport for sdk/node on
// @livekit/agents (sdk/node/tests/report_check.ts).
func TestLiveKitAgentsNodeReport(t *testing.T) {
	node := buildNodeSDK(t)
	p := startAgentParley(t, "node-agent", "")
	p.checkReports(t, func(env ...string) *exec.Cmd {
		cmd := exec.CommandContext(t.Context(), node, "dist/tests/report_check.js")
		cmd.Dir = nodeSDKDir
		cmd.Env = append(os.Environ(), env...)
		return cmd
	})
}

// checkReports runs an SDK's report_check script, made by command with
// the environment it needs, on three calls CreateRoom dispatches p.agent to
// ("live", "lossy" and "optout"), and checks Parley's side of each.
func (p *agentParley) checkReports(t *testing.T, command func(env ...string) *exec.Cmd) {
	t.Helper()
	rooms := parleyv1connect.NewRoomServiceClient(http.DefaultClient, p.r.base)
	calls := parleyv1connect.NewCallServiceClient(http.DefaultClient, p.r.base)
	script := []string{"Hello there", "What is the weather in Paris?", "Goodbye"}
	type call struct {
		Name        string `json:"name"`
		Dispatch    string `json:"dispatch"`
		LiveKitRoom string `json:"livekit_room"`
		room        *parleyv1.Room
		live        []string // the items stored when the report went out
		reportedBy  time.Time
	}
	var made []*call
	for _, name := range []string{"live", "lossy", "optout"} {
		r, err := rooms.CreateRoom(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateRoomRequest{Name: name, AgentName: p.agent}), p.tok))
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, &call{
			Name: name, Dispatch: tokenDispatchMetadata(t, r.Msg.GetJoin().GetToken(), p.agent),
			LiveKitRoom: r.Msg.GetRoom().GetLivekitRoom(), room: r.Msg.GetRoom(),
		})
	}
	callsJSON, err := json.Marshal(made)
	if err != nil {
		t.Fatal(err)
	}
	scriptJSON, err := json.Marshal(script)
	if err != nil {
		t.Fatal(err)
	}
	cmd := command("PARLEY_URL="+p.r.base, "PARLEY_AGENT_KEY="+p.apiKey, "SCRIPT="+string(scriptJSON), "CALLS="+string(callsJSON))
	type counts struct{ Merged, Replayed, Conflicting int }
	var result map[string]struct {
		History  []string `json:"history"`
		Lost     []string `json:"lost"`
		Attempts int      `json:"attempts"`
		Report   *counts  `json:"report"`
		Again    *counts  `json:"again"`
	}
	runAgentScript(t, cmd, &result, func(line string) string {
		name, ok := strings.CutPrefix(line, "REPORT ")
		if !ok {
			return ""
		}
		i := slices.IndexFunc(made, func(c *call) bool { return c.Name == name })
		if i < 0 {
			t.Fatalf("report of an unknown call %q", name)
		}
		for _, it := range p.items(t, made[i].room.GetConversationId()) {
			made[i].live = append(made[i].live, chatItemID(it.GetItem()))
		}
		made[i].reportedBy = time.Now()
		return "GO"
	})

	for _, c := range made {
		t.Run(c.Name, func(t *testing.T) {
			res, ok := result[c.Name]
			if !ok {
				t.Fatalf("RESULT has no call %s", c.Name)
			}
			lost := map[string]bool{}
			for _, id := range res.Lost {
				lost[id] = true
			}
			if (c.Name == "lossy") != (len(lost) > 0) {
				t.Fatalf("%d items lost live", len(lost))
			}
			optOut := c.Name == "optout"
			if optOut {
				// No report, so what was stored live is all there is.
				c.live = slices.Clone(res.History)
			}
			// Live: the history but what was lost, in order.
			var wantLive, wantAfter []string
			for _, id := range res.History {
				if !lost[id] {
					wantLive = append(wantLive, id)
				}
			}
			// After the report: the lost ones too, once each, after the
			// live ones (the merge appends what is new), in history order.
			for _, id := range res.History {
				if lost[id] {
					wantAfter = append(wantAfter, id)
				}
			}
			wantAfter = append(slices.Clone(wantLive), wantAfter...)
			if !slices.Equal(c.live, wantLive) {
				t.Errorf("stored live:\n %v\nwant the history but the lost:\n %v", c.live, wantLive)
			}
			var after []string
			for i, it := range p.items(t, c.room.GetConversationId()) {
				if it.GetSeq() != int64(i+1) {
					t.Errorf("item %d has seq %d", i+1, it.GetSeq())
				}
				after = append(after, chatItemID(it.GetItem()))
			}
			if !slices.Equal(after, wantAfter) {
				t.Errorf("stored after the report:\n %v\nwant:\n %v", after, wantAfter)
			}
			if len(after) != len(res.History) {
				t.Errorf("%d items stored, the history has %d", len(after), len(res.History))
			}
			got, err := calls.GetCall(t.Context(), bearer(connect.NewRequest(&parleyv1.GetCallRequest{CallId: c.room.GetId()}), p.tok))
			if err != nil {
				t.Fatal(err)
			}
			call := got.Msg.GetCall()
			if optOut {
				if res.Attempts != 0 || res.Report != nil || call.GetReportedAt() != nil || call.GetMetrics() != nil {
					t.Errorf("opted out: %d ReportSessions, counts %v; call reported_at %v, metrics %v", res.Attempts, res.Report, call.GetReportedAt(), call.GetMetrics())
				}
				return
			}
			// The first attempt of "live" never reached Parley: retried.
			if want := map[bool]int{true: 2, false: 1}[c.Name == "live"]; res.Attempts != want {
				t.Errorf("%d ReportSession attempts, want %d", res.Attempts, want)
			}
			// ReportSession's counts are what the store shows: replayed
			// the items already live, merged the rest; again, all replayed.
			if want := (counts{Merged: len(after) - len(c.live), Replayed: len(c.live)}); res.Report == nil || *res.Report != want {
				t.Errorf("the report's counts = %+v, want %+v", res.Report, want)
			}
			if want := (counts{Replayed: len(after)}); res.Again == nil || *res.Again != want {
				t.Errorf("the same report again: counts = %+v, want %+v", res.Again, want)
			}
			if at := call.GetReportedAt(); at == nil || at.AsTime().Before(c.reportedBy.Add(-time.Second)) {
				t.Errorf("reported_at = %v, want after the report went out (%v)", at, c.reportedBy)
			}
			m := call.GetMetrics()
			if m.GetTurns() != int32(len(script)) || m.GetInterruptions() != 0 {
				t.Errorf("metrics: %d turns, %d interruptions; want the script's %d and none", m.GetTurns(), m.GetInterruptions(), len(script))
			}
			// The scripted LLM answers 4 times (the weather turn twice:
			// the tool call, then the answer); the n-th reports 20n prompt
			// and 5n completion tokens.
			if u := m.GetUsage(); len(u) != 1 || u[0].GetModel() != "scripted-1" || u[0].GetProvider() != "parley-test" ||
				u[0].GetValues()["input_tokens"] != 200 || u[0].GetValues()["output_tokens"] != 50 {
				t.Errorf("metrics usage = %v, want scripted-1's 200 input and 50 output tokens", u)
			}
		})
	}
}
