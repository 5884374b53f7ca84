package postgres_test

import (
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/room"
)

// TestSaveReport stores a real livekit-agents report on a call that no
// webhook has made yet, then on one that events made, keeping the events'
// record, and replaces it with a later report.
func TestSaveReport(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	ctx := t.Context()
	raw, err := os.ReadFile("../../testdata/livekit-agents/session_report.json")
	if err != nil {
		t.Fatal(err)
	}
	sameJSON := func(t *testing.T, got, want []byte) {
		t.Helper()
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("stored report is not JSON: %v", err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		gb, _ := json.Marshal(g)
		wb, _ := json.Marshal(w)
		if string(gb) != string(wb) {
			t.Fatalf("stored report differs from the one saved")
		}
	}

	// Before any event: the report makes the call's row.
	early := roomCreate(t, h.rooms, h.owner, "early")
	if err := h.rooms.SaveReport(ctx, early.ID, raw, derived(t, raw), callAt(40)); err != nil {
		t.Fatal(err)
	}
	c, err := h.rooms.Call(ctx, early.ID, h.owner)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, c.Report, raw)
	if !c.ReportedAt.Equal(callAt(40)) || c.Status != room.CallPending {
		t.Fatalf("early call reported at %v, status %v", c.ReportedAt, c.Status)
	}

	// After the whole call: its record stays as the events made it.
	played := h.play(callScript(), [][]int{inOrder(len(callScript()))})[0]
	if err := h.rooms.SaveReport(ctx, played.ID, raw, derived(t, raw), callAt(50)); err != nil {
		t.Fatal(err)
	}
	second := []byte(`{"job_id":"AJ_2","room_id":"RM_2"}`)
	if err := h.rooms.SaveReport(ctx, played.ID, second, derived(t, second), callAt(60)); err != nil {
		t.Fatal(err)
	}
	c, err = h.rooms.Call(ctx, played.ID, h.owner)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, c.Report, second)
	if !c.ReportedAt.Equal(callAt(60)) || c.Status != room.CallEnded || !c.EndedAt.Equal(played.EndedAt) ||
		!c.LastSeenAt.Equal(played.LastSeenAt) || len(c.Participants) != 2 {
		t.Fatalf("call after reports = %+v, want the played call %+v reported at %v", c, played, callAt(60))
	}

	if err := h.rooms.SaveReport(ctx, uuid.New(), raw, derived(t, raw), callAt(1)); !errors.Is(err, room.ErrNotFound) {
		t.Fatalf("SaveReport of no room: %v, want ErrNotFound", err)
	}
}

// derived is the metrics ReportSession stores with report raw.
func derived(t *testing.T, raw []byte) room.CallMetrics {
	t.Helper()
	r, err := room.ParseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	m, err := room.DeriveMetrics(r)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
