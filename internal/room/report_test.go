package room

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fixtureReport is what livekit-agents 1.8.9's SessionReport.to_dict()
// wrote for testdata/livekit-agents/session_report.py: three user turns, four
// scripted LLM calls (20n prompt and 5n completion tokens for call n), and
// one interrupted assistant message with llm_node_ttft 0.25, tts_node_ttfb
// 0.5 and e2e_latency 1.5.
func fixtureReport(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../../testdata/livekit-agents/session_report.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDeriveMetricsFromRealReport(t *testing.T) {
	t.Parallel()
	raw := fixtureReport(t)
	r, err := ParseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.JobID != "AJ_fixture" || r.RoomID != "RM_fixture" {
		t.Fatalf("report ids = %q, %q", r.JobID, r.RoomID)
	}
	m, err := DeriveMetrics(r)
	if err != nil {
		t.Fatal(err)
	}
	// The report counts its own user turns; ours agree.
	var own struct {
		UserTurns int `json:"user_turns"`
	}
	if err := json.Unmarshal(raw, &own); err != nil {
		t.Fatal(err)
	}
	if m.Turns != 3 || own.UserTurns != 3 || m.Interruptions != 1 {
		t.Errorf("turns %d (report's own %d), interruptions %d; want 3, 3, 1", m.Turns, own.UserTurns, m.Interruptions)
	}
	// llm_node_ttft: the three scripted replies' (read from the fixture)
	// and the interrupted message's 0.25, the greatest.
	var h struct {
		ChatHistory struct {
			Items []struct {
				Role    string         `json:"role"`
				Metrics map[string]any `json:"metrics"`
			} `json:"items"`
		} `json:"chat_history"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	var ttft []float64
	for _, it := range h.ChatHistory.Items {
		if v, ok := it.Metrics["llm_node_ttft"].(float64); ok {
			ttft = append(ttft, v)
		}
	}
	slices.Sort(ttft)
	if len(ttft) != 4 || ttft[3] != 0.25 {
		t.Fatalf("fixture ttfts %v", ttft)
	}
	want := []LatencyStats{
		{Metric: "e2e_latency", Count: 1, P50: 1.5, P95: 1.5},
		{Metric: "llm_node_ttft", Count: 4, P50: ttft[1], P95: 0.25},
		{Metric: "playback_latency", Count: 3, P50: 0, P95: 0},
		{Metric: "tts_node_ttfb", Count: 1, P50: 0.5, P95: 0.5},
	}
	if diff := cmp.Diff(want, m.Latencies); diff != "" {
		t.Errorf("latencies (-want +got):\n%s", diff)
	}
	wantUsage := []ModelUsage{{Type: "llm_usage", Provider: "parley-test", Model: "scripted-1",
		Values: map[string]float64{"input_tokens": 20 * (1 + 2 + 3 + 4), "output_tokens": 5 * (1 + 2 + 3 + 4)}}}
	if diff := cmp.Diff(wantUsage, m.Usage); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
}

func TestNearestRank(t *testing.T) {
	t.Parallel()
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	for _, tc := range []struct {
		vs       []float64
		p50, p95 float64
	}{
		{[]float64{7}, 7, 7},
		{[]float64{1, 2}, 1, 2},
		{[]float64{1, 2, 3, 4}, 2, 4},
		{hundred, 50, 95},
	} {
		if p50, p95 := nearestRank(tc.vs, 50), nearestRank(tc.vs, 95); p50 != tc.p50 || p95 != tc.p95 {
			t.Errorf("nearestRank(%v) = %v, %v; want %v, %v", tc.vs, p50, p95, tc.p50, tc.p95)
		}
	}
}

func TestParseReportRefuses(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		raw  string
		want string
	}{
		"not json":      {`{"job_id":`, "not a SessionReport"},
		"a list":        {`[]`, "not a SessionReport"},
		"no ids":        {`{"room": "r"}`, "job_id and room_id"},
		"bad history":   {`{"job_id":"j","room_id":"r","chat_history":{"items":3}}`, "chat_history"},
		"too big":       {`{"job_id":"j","room_id":"r","x":"` + strings.Repeat("a", MaxReportBytes) + `"}`, "8388608"},
		"usage not map": {`{"job_id":"j","room_id":"r","usage":[1]}`, "not a SessionReport"},
	} {
		r, err := ParseReport([]byte(tc.raw))
		if err == nil {
			_, err = DeriveMetrics(r)
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalid naming %q", name, err, tc.want)
		}
	}
}

// TestParseReportTakesStorableEscapes: the escapes jsonb stores pass the
// check that refuses U+0000 and lone surrogates.
func TestParseReportTakesStorableEscapes(t *testing.T) {
	t.Parallel()
	for _, x := range []string{`\ud83d\ude00`, `\\u0000`, `\\\ud83d\uDE00\\`, `\u00e9\n\"`, `\\ud800`} {
		if _, err := ParseReport([]byte(`{"job_id":"j","room_id":"r","x":"` + x + `"}`)); err != nil {
			t.Errorf("%s: %v", x, err)
		}
	}
}
