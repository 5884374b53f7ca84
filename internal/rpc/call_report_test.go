package rpc

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// reportFixture is livekit-agents 1.8.9's SessionReport.to_dict() of a real
// text-only session (testdata/livekit-agents/session_report.py) and its
// chat history's items, each as to_dict() wrote it.
func reportFixture(t *testing.T) (string, []json.RawMessage) {
	t.Helper()
	raw, err := os.ReadFile("../../testdata/livekit-agents/session_report.json")
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		ChatHistory struct {
			Items []json.RawMessage `json:"items"`
		} `json:"chat_history"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.ChatHistory.Items) < 6 {
		t.Fatalf("fixture has %d items", len(r.ChatHistory.Items))
	}
	return string(raw), r.ChatHistory.Items
}

func jsonList(t *testing.T, items ...json.RawMessage) string {
	t.Helper()
	b, err := json.Marshal(items)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReportSessionAfterLiveAppends: the agent appended part of the
// history live (one item under an id it then reported with other content);
// the report adds the rest once, under the call's agent as the live items
// are, keeps the live item, and a repeated report adds nothing. The call
// then carries the report's metrics.
func TestReportSessionAfterLiveAppends(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	calls := clients(env.testAPI, parleyv1connect.NewCallServiceClient)
	convs := parleyv1connect.NewConversationServiceClient(env.hc, env.url)
	agent := env.agent(t)
	report, items := reportFixture(t)
	const live = 4 // items appended live; the last of them differs from the report's
	for proto, client := range calls {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			user := env.newUser(t, "Ada")
			created, err := env.clients["connect"].CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "report", AgentName: "support-bot"}))
			if err != nil {
				t.Fatal(err)
			}
			r := created.Msg.GetRoom()
			report := strings.Replace(report, `"room": "fixture-room"`, `"room": "`+r.GetLivekitRoom()+`"`, 1)
			var changed map[string]any
			if err := json.Unmarshal(items[live-1], &changed); err != nil {
				t.Fatal(err)
			}
			changed["content"] = []string{"said live, otherwise"}
			changedRaw, err := json.Marshal(changed)
			if err != nil {
				t.Fatal(err)
			}
			liveItems := append(append([]json.RawMessage{}, items[:live-1]...), changedRaw)
			if _, err := convs.AppendItems(ctx, as(agent, &parleyv1.AppendItemsRequest{
				ConversationId: r.GetConversationId(), ItemsJson: jsonList(t, liveItems...), Agent: "support-bot",
			})); err != nil {
				t.Fatalf("live AppendItems: %v", err)
			}

			_, err = client.ReportSession(ctx, as(user, &parleyv1.ReportSessionRequest{CallId: r.GetId(), ReportJson: report}))
			wantCode(t, "a user's ReportSession", err, connect.CodePermissionDenied)

			for i, want := range []*parleyv1.ReportSessionResponse{
				{ItemsMerged: int32(len(items) - live), ItemsReplayed: live - 1, ItemsConflicting: 1},
				{ItemsMerged: 0, ItemsReplayed: int32(len(items) - 1), ItemsConflicting: 1},
			} {
				got, err := client.ReportSession(ctx, as(agent, &parleyv1.ReportSessionRequest{CallId: r.GetId(), ReportJson: report}))
				if err != nil {
					t.Fatalf("ReportSession %d: %v", i, err)
				}
				m := got.Msg
				if m.GetItemsMerged() != want.GetItemsMerged() || m.GetItemsReplayed() != want.GetItemsReplayed() ||
					m.GetItemsConflicting() != want.GetItemsConflicting() {
					t.Fatalf("ReportSession %d = merged %d, replayed %d, conflicting %d; want %d, %d, %d", i,
						m.GetItemsMerged(), m.GetItemsReplayed(), m.GetItemsConflicting(),
						want.GetItemsMerged(), want.GetItemsReplayed(), want.GetItemsConflicting())
				}
				if m.GetCall().GetId() != r.GetId() || m.GetCall().GetReportedAt() == nil || m.GetCall().GetMetrics() == nil {
					t.Fatalf("ReportSession %d call = %v", i, m.GetCall())
				}
			}

			// Each id once, in history order, all the agent's; the live item kept.
			stored, err := convs.ListItems(ctx, as(agent, &parleyv1.ListItemsRequest{
				ConversationId: r.GetConversationId(), PageSize: 200, Order: parleyv1.Order_ORDER_OLDEST_FIRST, Agent: "support-bot",
			}))
			if err != nil {
				t.Fatal(err)
			}
			if len(stored.Msg.GetItems()) != len(items) {
				t.Fatalf("%d items stored, want %d", len(stored.Msg.GetItems()), len(items))
			}
			for i, it := range stored.Msg.GetItems() {
				var want struct {
					ID string `json:"id"`
				}
				if err := json.Unmarshal(items[i], &want); err != nil {
					t.Fatal(err)
				}
				if got := idOf(it.GetItem()); got != want.ID || it.GetSeq() != int64(i+1) {
					t.Errorf("item %d = %s seq %d, want %s seq %d", i, got, it.GetSeq(), want.ID, i+1)
				}
			}
			if got := stored.Msg.GetItems()[live-1].GetItem().GetMessage().GetContent()[0].GetText(); got != "said live, otherwise" {
				t.Errorf("conflicting item's text = %q, want the live one", got)
			}

			got, err := client.GetCall(ctx, as(user, &parleyv1.GetCallRequest{CallId: r.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			metrics := got.Msg.GetCall().GetMetrics()
			if metrics.GetTurns() != 3 || metrics.GetInterruptions() != 1 || len(metrics.GetUsage()) != 1 ||
				metrics.GetUsage()[0].GetModel() != "scripted-1" || metrics.GetUsage()[0].GetValues()["input_tokens"] != 200 {
				t.Fatalf("metrics = %v", metrics)
			}
			var e2e *parleyv1.LatencyStats
			for _, l := range metrics.GetLatencies() {
				if l.GetMetric() == "e2e_latency" {
					e2e = l
				}
			}
			if e2e.GetCount() != 1 || e2e.GetP50() != 1.5 || e2e.GetP95() != 1.5 {
				t.Errorf("e2e_latency = %v, want the interrupted message's 1.5", e2e)
			}
		})
	}
}

func TestReportSessionRefuses(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	calls := clients(env.testAPI, parleyv1connect.NewCallServiceClient)
	agent := env.agent(t)
	user := env.newUser(t, "Ada")
	created, err := env.clients["connect"].CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{Name: "report"}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetRoom().GetId()
	for proto, client := range calls {
		t.Run(proto, func(t *testing.T) {
			for _, tc := range []struct {
				name, callID, report string
				code                 connect.Code
				says                 string
			}{
				{"too big", id, `{"job_id":"j","room_id":"r","x":"` + strings.Repeat("a", 8<<20) + `"}`, connect.CodeInvalidArgument, "report_json"},
				{"not a report", id, `{"job_id": 1}`, connect.CodeInvalidArgument, "report_json"},
				{"no ids", id, `{"room": "r"}`, connect.CodeInvalidArgument, "job_id"},
				{"bad history", id, `{"job_id":"j","room_id":"r","chat_history":{"items":[{"type":"message"}]}}`, connect.CodeInvalidArgument, "report_json: chat_history"},
				// PostgreSQL's jsonb, which stores the report, holds neither.
				{"NUL escape", id, `{"job_id":"j","room_id":"r","x":"a\u0000b"}`, connect.CodeInvalidArgument, "U+0000"},
				{"NUL in usage", id, `{"job_id":"j","room_id":"r","usage":[{"type":"llm_usage","provider":"p","model":"m\u0000"}]}`, connect.CodeInvalidArgument, "U+0000"},
				{"lone surrogate", id, `{"job_id":"j","room_id":"r","x":"\ud800"}`, connect.CodeInvalidArgument, "surrogate"},
				{"lone low surrogate", id, `{"job_id":"j","room_id":"r","x":"\udc00\ud83d"}`, connect.CodeInvalidArgument, "surrogate"},
				// AggregateCalls sums usage in float8, which 2 × 1e308 overflows.
				{"huge usage", id, `{"job_id":"j","room_id":"r","usage":[{"type":"llm_usage","input_tokens":1},{"type":"tts_usage","audio_duration":1.7e308}]}`, connect.CodeInvalidArgument, "usage[1].audio_duration"},
				{"another room's report", id, `{"job_id":"j","room_id":"r","room":"elsewhere"}`, connect.CodeInvalidArgument, "not the call's LiveKit room"},
				{"no such call", "0190d4c4-0000-7000-8000-000000000000", `{"job_id":"j","room_id":"r"}`, connect.CodeNotFound, ""},
				{"malformed id", "nope", `{"job_id":"j","room_id":"r"}`, connect.CodeInvalidArgument, "call_id"},
			} {
				_, err := client.ReportSession(t.Context(), as(agent, &parleyv1.ReportSessionRequest{CallId: tc.callID, ReportJson: tc.report}))
				wantCode(t, tc.name, err, tc.code)
				if err != nil && !strings.Contains(err.Error(), tc.says) {
					t.Errorf("%s: %v does not name %q", tc.name, err, tc.says)
				}
			}
		})
	}
}

// TestReportSessionMergesALongHistoryInBatches: a history longer than one
// AppendItems batch, parts of it appended live and one id live with other
// content inside the second batch, merges every other item once, in
// history order after the live ones, and counts each item once.
func TestReportSessionMergesALongHistoryInBatches(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	calls := parleyv1connect.NewCallServiceClient(env.hc, env.url)
	convs := parleyv1connect.NewConversationServiceClient(env.hc, env.url)
	agent := env.agent(t)
	report, fixture := reportFixture(t)
	var tmpl map[string]any
	if err := json.Unmarshal(fixture[0], &tmpl); err != nil {
		t.Fatal(err)
	}
	const n, conflicting = 450, 250
	item := func(i int, text string) json.RawMessage {
		tmpl["id"], tmpl["content"] = fmt.Sprintf("long_%03d", i), []string{text}
		b, err := json.Marshal(tmpl)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	history := make([]json.RawMessage, n)
	for i := range history {
		history[i] = item(i, fmt.Sprintf("turn %d", i))
	}
	ctx := t.Context()
	user := env.newUser(t, "Ada")
	created, err := env.clients["connect"].CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "long", AgentName: "support-bot"}))
	if err != nil {
		t.Fatal(err)
	}
	r := created.Msg.GetRoom()
	live := append(append(slices.Clone(history[:100]), history[300:310]...), item(conflicting, "said live, otherwise"))
	for i := 0; i < len(live); i += 100 {
		if _, err := convs.AppendItems(ctx, as(agent, &parleyv1.AppendItemsRequest{
			ConversationId: r.GetConversationId(), ItemsJson: jsonList(t, live[i:min(i+100, len(live))]...), Agent: "support-bot",
		})); err != nil {
			t.Fatalf("live AppendItems: %v", err)
		}
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(report), &doc); err != nil {
		t.Fatal(err)
	}
	doc["room"], _ = json.Marshal(r.GetLivekitRoom())
	doc["chat_history"] = json.RawMessage(`{"items":` + jsonList(t, history...) + `}`)
	long, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := calls.ReportSession(ctx, as(agent, &parleyv1.ReportSessionRequest{CallId: r.GetId(), ReportJson: string(long)}))
	if err != nil {
		t.Fatal(err)
	}
	if m := got.Msg; m.GetItemsMerged() != n-int32(len(live)) || m.GetItemsReplayed() != int32(len(live))-1 || m.GetItemsConflicting() != 1 {
		t.Fatalf("merged %d, replayed %d, conflicting %d; want %d, %d, 1",
			m.GetItemsMerged(), m.GetItemsReplayed(), m.GetItemsConflicting(), n-len(live), len(live)-1)
	}

	// The live items first, then the rest in history order, each once.
	var want []string
	isLive := map[string]bool{}
	for _, raw := range live {
		var it struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(raw, &it); err != nil {
			t.Fatal(err)
		}
		want = append(want, it.ID)
		isLive[it.ID] = true
	}
	for i := range n {
		if id := fmt.Sprintf("long_%03d", i); !isLive[id] {
			want = append(want, id)
		}
	}
	var stored []string
	token := ""
	for {
		page, err := convs.ListItems(ctx, as(agent, &parleyv1.ListItemsRequest{
			ConversationId: r.GetConversationId(), PageSize: 200, PageToken: token, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
		}))
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Msg.GetItems() {
			if it.GetSeq() != int64(len(stored)+1) {
				t.Fatalf("item %d has seq %d", len(stored)+1, it.GetSeq())
			}
			stored = append(stored, idOf(it.GetItem()))
		}
		if token = page.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if !slices.Equal(stored, want) {
		t.Fatalf("stored %d items:\n %v\nwant %d:\n %v", len(stored), stored, len(want), want)
	}
}

// BenchmarkReportSessionMerge files a report whose 3000-item history
// nothing appended live, into a new call each time: the merge's cost.
func BenchmarkReportSessionMerge(b *testing.B) {
	a := newTestAPI(b, apiOptions{})
	rooms := parleyv1connect.NewRoomServiceClient(a.hc, a.url)
	calls := parleyv1connect.NewCallServiceClient(a.hc, a.url)
	agent, user := a.agent(b), a.newUser(b, "Ada")
	raw, err := os.ReadFile("../../testdata/livekit-agents/session_report.json")
	if err != nil {
		b.Fatal(err)
	}
	var doc map[string]json.RawMessage
	var fixture struct {
		ChatHistory struct {
			Items []map[string]any `json:"items"`
		} `json:"chat_history"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(raw, &fixture); err != nil {
		b.Fatal(err)
	}
	tmpl := fixture.ChatHistory.Items[0]
	history := make([]json.RawMessage, 3000)
	for i := range history {
		tmpl["id"], tmpl["content"] = fmt.Sprintf("bench_%04d", i), []string{fmt.Sprintf("turn %d", i)}
		if history[i], err = json.Marshal(tmpl); err != nil {
			b.Fatal(err)
		}
	}
	hist, err := json.Marshal(history)
	if err != nil {
		b.Fatal(err)
	}
	doc["chat_history"] = json.RawMessage(`{"items":` + string(hist) + `}`)
	ctx := b.Context()
	for b.Loop() {
		created, err := rooms.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "bench"}))
		if err != nil {
			b.Fatal(err)
		}
		doc["room"], _ = json.Marshal(created.Msg.GetRoom().GetLivekitRoom())
		report, err := json.Marshal(doc)
		if err != nil {
			b.Fatal(err)
		}
		got, err := calls.ReportSession(ctx, as(agent, &parleyv1.ReportSessionRequest{CallId: created.Msg.GetRoom().GetId(), ReportJson: string(report)}))
		if err != nil {
			b.Fatal(err)
		}
		if got.Msg.GetItemsMerged() != int32(len(history)) {
			b.Fatalf("merged %d of %d", got.Msg.GetItemsMerged(), len(history))
		}
	}
}
