package postgres_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
)

func fixtureReport(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile("../../testdata/livekit-agents/session_report.json")
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// figures is m as the store reads it back: without its samples.
func figures(m room.CallMetrics) *room.CallMetrics {
	m.Samples = nil
	return &m
}

// TestCallMetricsStored: the real livekit-agents report's metrics are
// stored with it, and GetCall and ListCalls read them back as DeriveMetrics
// gives them (PostgreSQL's percentile_disc is the nearest rank), one
// sample row per message and metric; a later report replaces them.
func TestCallMetricsStored(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	ctx := t.Context()
	raw := fixtureReport(t)
	want := derived(t, raw)
	r := roomCreate(t, h.rooms, h.owner, "metrics")
	if err := h.rooms.SaveReport(ctx, r.ID, raw, want, callAt(40)); err != nil {
		t.Fatal(err)
	}
	c, err := h.rooms.Call(ctx, r.ID, h.owner)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(figures(want), c.Metrics, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("GetCall's metrics (-derived +stored):\n%s", diff)
	}
	listed, err := h.rooms.ListCalls(ctx, h.owner, room.CallFilter{}, nil, 10)
	if err != nil || len(listed) != 1 {
		t.Fatalf("ListCalls = %v, %v", listed, err)
	}
	if diff := cmp.Diff(figures(want), listed[0].Metrics, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("ListCalls' metrics (-derived +stored):\n%s", diff)
	}
	if listed[0].Report != nil {
		t.Errorf("ListCalls read the report, whose metrics are stored")
	}
	var samples int
	if err := h.db.QueryRowContext(ctx, `SELECT count(*) FROM call_latency_samples WHERE room_id = ?`, r.ID).Scan(&samples); err != nil {
		t.Fatal(err)
	}
	if samples != len(want.Samples) || samples != 9 {
		t.Errorf("%d samples stored, want the report's %d (9)", samples, len(want.Samples))
	}

	later := []byte(`{"job_id":"AJ_2","room_id":"RM_2","usage":[{"type":"tts_usage","provider":"p","model":"m","characters_count":12}]}`)
	if err := h.rooms.SaveReport(ctx, r.ID, later, derived(t, later), callAt(50)); err != nil {
		t.Fatal(err)
	}
	c, err = h.rooms.Call(ctx, r.ID, h.owner)
	if err != nil {
		t.Fatal(err)
	}
	wantLater := &room.CallMetrics{Usage: []room.ModelUsage{{Type: "tts_usage", Provider: "p", Model: "m", Values: map[string]float64{"characters_count": 12}}}}
	if diff := cmp.Diff(wantLater, c.Metrics, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("metrics after a later report (-want +got):\n%s", diff)
	}
}

// storeAsOlderReplica stores report on call id as a replica older than
// call metrics does (and as every report stored before them was): the
// report alone.
func storeAsOlderReplica(t *testing.T, h *callHarness, id uuid.UUID, report []byte, at time.Time) {
	t.Helper()
	_, err := h.db.DB.ExecContext(t.Context(), `INSERT INTO calls (room_id, last_seen_at, report, reported_at)
VALUES ($1, $2, $3::jsonb, $2)
ON CONFLICT (room_id) DO UPDATE SET report = EXCLUDED.report, reported_at = EXCLUDED.reported_at`, id, at, string(report))
	if err != nil {
		t.Fatal(err)
	}
}

// TestCallMetricsBackfill: reports stored without metrics (before the
// migration, or by an older replica over a report whose metrics were
// stored) are read with metrics derived from the report, are left out of
// aggregates, and get their metrics stored by BackfillMetrics, after which
// aggregates count them.
func TestCallMetricsBackfill(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	ctx := t.Context()
	svc := room.NewService(h.rooms, nil, room.Options{})
	raw := fixtureReport(t)
	want := derived(t, raw)
	oldRoom := roomCreate(t, h.rooms, h.owner, "before the migration")
	storeAsOlderReplica(t, h, oldRoom.ID, raw, callAt(40))
	// A report the new rules store, that an older replica then replaced.
	replaced := roomCreate(t, h.rooms, h.owner, "replaced")
	first := []byte(`{"job_id":"AJ_1","room_id":"RM_1","chat_history":{"items":[{"id":"a","type":"message","role":"assistant","content":["x"],"metrics":{"e2e_latency":7.0}}]}}`)
	if err := h.rooms.SaveReport(ctx, replaced.ID, first, derived(t, first), callAt(41)); err != nil {
		t.Fatal(err)
	}
	storeAsOlderReplica(t, h, replaced.ID, raw, callAt(42))
	// A report that yields no metrics at all.
	broken := roomCreate(t, h.rooms, h.owner, "broken")
	storeAsOlderReplica(t, h, broken.ID, []byte(`{"job_id":"j","room_id":"r","chat_history":{"items":3}}`), callAt(43))

	due, err := h.rooms.DueMetrics(ctx, uuid.Nil, 10)
	if err != nil || len(due) != 3 {
		t.Fatalf("DueMetrics = %v, %v; want the 3 reports", due, err)
	}
	for _, id := range []uuid.UUID{oldRoom.ID, replaced.ID} {
		c, err := svc.GetCall(ctx, authUser(h.owner), id)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want.Latencies, c.Metrics.Latencies); diff != "" || c.Metrics.Turns != 3 {
			t.Errorf("GetCall of a report without stored metrics: turns %d, latencies (-want +got):\n%s", c.Metrics.Turns, diff)
		}
	}
	page, err := svc.ListCalls(ctx, authUser(h.owner), room.CallFilter{}, 10, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range page.Calls {
		if (c.ID == broken.ID) != (c.Metrics == nil) {
			t.Errorf("ListCalls: call %s metrics %+v", c.RoomName, c.Metrics)
		}
	}
	day := room.CallFilter{CreatedAfter: time.Now().Add(-time.Hour), CreatedBefore: time.Now().Add(time.Hour)}
	aggregate := func() room.CallGroup {
		t.Helper()
		gs, err := svc.AggregateCalls(ctx, authUser(h.owner), day, room.CallGrouping{})
		if err != nil || len(gs) != 1 {
			t.Fatalf("AggregateCalls = %v, %v", gs, err)
		}
		return gs[0]
	}
	if g := aggregate(); g.Calls != 3 || g.Reported != 3 || g.Turns != 0 || len(g.Latencies) != 0 {
		t.Errorf("aggregate before the backfill = %+v, want 3 reported calls without stored metrics", g)
	}

	// A call another replica's backfill holds is passed over, not waited
	// for, and filled by a later run.
	held, err := h.db.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()
	if _, err := held.ExecContext(ctx, `SELECT 1 FROM calls WHERE room_id = $1 FOR UPDATE`, broken.ID); err != nil {
		t.Fatal(err)
	}
	svc.BackfillMetrics(ctx)
	if due, err := h.rooms.DueMetrics(ctx, uuid.Nil, 10); err != nil || len(due) != 1 || due[0] != broken.ID {
		t.Fatalf("DueMetrics after a backfill while a call was held = %v, %v; want the held call", due, err)
	}
	if err := held.Rollback(); err != nil {
		t.Fatal(err)
	}
	svc.BackfillMetrics(ctx)
	if due, err := h.rooms.DueMetrics(ctx, uuid.Nil, 10); err != nil || len(due) != 0 {
		t.Fatalf("DueMetrics after the backfill = %v, %v", due, err)
	}
	for _, id := range []uuid.UUID{oldRoom.ID, replaced.ID} {
		c, err := h.rooms.Call(ctx, id, h.owner)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(figures(want), c.Metrics, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("stored metrics after the backfill (-derived +stored):\n%s", diff)
		}
	}
	if c, err := svc.GetCall(ctx, authUser(h.owner), broken.ID); err != nil || c.Metrics != nil {
		t.Errorf("the broken report's call = %+v, %v; want no metrics", c.Metrics, err)
	}
	// Both fixture reports count, the replaced report's 7.0 not.
	g := aggregate()
	var e2e room.LatencyStats
	for _, l := range g.Latencies {
		if l.Metric == "e2e_latency" {
			e2e = l
		}
	}
	if g.Turns != 6 || g.Interruptions != 2 || e2e != (room.LatencyStats{Metric: "e2e_latency", Count: 2, P50: 1.5, P95: 1.5}) ||
		len(g.Usage) != 1 || g.Usage[0].Values["input_tokens"] != 400 {
		t.Errorf("aggregate after the backfill = %+v, want the two fixture reports'", g)
	}
	// A second run (another replica's) finds nothing to do.
	svc.BackfillMetrics(ctx)
}

// TestAggregateCallsPlan shows that AggregateCalls reads a week of one
// user's calls, or of everyone's, through the rooms' creation indexes and
// the samples' and usage's keys, never scanning a table whole, among a
// year of 24,000 calls with 5 samples each.
func TestAggregateCallsPlan(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	ctx := t.Context()
	others := roomSeedUser(t, postgres.NewAccountStore(h.db), "Others")
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// Bulk SQL: 24,000 CreateRoom and ReportSession calls would take
	// minutes. Every 12th room is the owner's.
	for _, q := range []string{
		`INSERT INTO rooms (id, name, livekit_room, created_by, created_at, agent_name)
SELECT gen_random_uuid(), 'r' || i, 'lk-' || i, CASE WHEN i % 12 = 0 THEN ?::uuid ELSE ?::uuid END,
       ?::timestamptz - i * interval '1314 seconds', 'agent-' || (i % 3)
  FROM generate_series(1, 24000) AS i`,
		`INSERT INTO calls (room_id, last_seen_at, report, reported_at, metrics_of, turns, interruptions)
SELECT id, created_at, '{}'::jsonb, created_at, created_at, 3, 1 FROM rooms`,
		`INSERT INTO call_latency_samples (room_id, metric, message, value)
SELECT c.room_id, 'e2e_latency', m, random() FROM calls c, generate_series(1, 5) AS m`,
		`INSERT INTO call_usage (room_id, entry, type, provider, model, amounts)
SELECT room_id, 0, 'llm_usage', 'p', 'm', '{"input_tokens": 10}' FROM calls`,
		`ANALYZE rooms, calls, call_latency_samples, call_usage, conversations`,
	} {
		if _, err := h.db.ExecContext(ctx, q, h.owner, others, now); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// Hours of 40 days by agent make some 2,600 groups: more than are
	// answered, which the service names.
	svc := room.NewService(h.rooms, nil, room.Options{})
	_, err := svc.AggregateCalls(ctx, auth.Principal{ID: uuid.New(), Kind: auth.KindAgent},
		room.CallFilter{CreatedAfter: now.Add(-40 * 24 * time.Hour), CreatedBefore: now}, room.CallGrouping{ByAgent: true, Bucket: room.BucketHour})
	if !errors.Is(err, room.ErrInvalid) || !strings.Contains(err.Error(), "the calls make more than 1000 groups") {
		t.Errorf("AggregateCalls of 40 days' hours by agent: %v, want ErrInvalid naming the 1000 groups", err)
	}
	week := room.CallFilter{CreatedAfter: now.Add(-14 * 24 * time.Hour), CreatedBefore: now.Add(-7 * 24 * time.Hour)}
	g := room.CallGrouping{ByAgent: true, Bucket: room.BucketDay, TimeZone: "Europe/Paris", DefaultAgent: "agent-0"}
	for _, tc := range []struct {
		name  string
		owner uuid.UUID
		index string
	}{
		{"owner", h.owner, "rooms_created_by_created_idx"},
		{"everyone", uuid.Nil, "rooms_created_idx"},
	} {
		groups, latencies, usage, args, err := postgres.AggregateCallsSQL(tc.owner, week, g, 1001)
		if err != nil {
			t.Fatal(err)
		}
		strs := make([]string, len(args))
		for i, a := range args {
			switch a := a.(type) {
			case time.Time:
				strs[i] = a.Format(time.RFC3339Nano)
			default:
				strs[i] = fmt.Sprint(a)
			}
		}
		for _, q := range []struct {
			name, sql string
			args      []string
		}{{"groups", groups, strs}, {"latencies", latencies, strs[:len(strs)-1]}, {"usage", usage, strs[:len(strs)-1]}} {
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				t.Run(tc.name+"/"+q.name+"/"+mode, func(t *testing.T) {
					plan, text := explainPage(t, h.db, mode, q.sql, q.args...)
					t.Log(text)
					var rooms bool
					plan.walk(func(n explainNode) {
						if n.NodeType == "Seq Scan" {
							t.Errorf("a sequential scan")
						}
						rooms = rooms || n.IndexName == tc.index
					})
					if !rooms {
						t.Errorf("the rooms are not read through %s", tc.index)
					}
					// A week is 460 calls of everyone's, 2,300 samples.
					if buffers := plan.SharedHit + plan.SharedRead; buffers > 12_000 {
						t.Errorf("%d buffers read", buffers)
					}
				})
			}
		}
	}
}

func authUser(id uuid.UUID) auth.Principal { return auth.Principal{ID: id, Kind: auth.KindUser} }
