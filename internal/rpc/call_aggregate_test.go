package rpc

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// seededCall is a call the aggregate test makes, with what its report
// says.
type seededCall struct {
	agent     string
	createdAt time.Time
	// reported: the agent sent a report; fixture: the real one.
	reported, fixture bool
	ended             bool
	metadata          map[string]string
	e2e               []float64 // one assistant message each
	interrupted       int       // of those messages, the first ones
	inputTokens       float64
}

// report is c's session report for room lkRoom: a user turn and an
// assistant reply per e2e latency (the first c.interrupted of them
// interrupted), and one llm_usage entry.
func (c seededCall) report(t *testing.T, lkRoom string, n int) string {
	t.Helper()
	var items []map[string]any
	for i, v := range c.e2e {
		items = append(items,
			map[string]any{"id": fmt.Sprintf("u%d_%d", n, i), "type": "message", "role": "user", "content": []string{"q"}, "created_at": 1796174773.0 + float64(i)},
			map[string]any{"id": fmt.Sprintf("a%d_%d", n, i), "type": "message", "role": "assistant", "content": []string{"a"}, "interrupted": i < c.interrupted,
				"metrics": map[string]any{"e2e_latency": v, "llm_node_ttft": v / 4}, "created_at": 1796174773.5 + float64(i)})
	}
	b, err := json.Marshal(map[string]any{
		"job_id": fmt.Sprint("AJ_", n), "room_id": fmt.Sprint("RM_", n), "room": lkRoom,
		"chat_history": map[string]any{"items": items},
		"usage":        []map[string]any{{"type": "llm_usage", "provider": "acme", "model": "m-1", "input_tokens": c.inputTokens, "output_tokens": 2.0}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// nearestRankP95 is the 95th percentile of vs by nearest rank, computed
// here apart from the code under test.
func nearestRankP95(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[int(math.Ceil(0.95*float64(len(s))))-1]
}

// TestAggregateCalls seeds calls of two agents over two days, with known
// latency samples, and checks that AggregateCalls' p95 e2e_latency per
// agent per day is the nearest rank over the very samples, that the
// filters hold, that a user never counts another's calls while an agent
// counts everyone's, and that bad requests are invalid_argument.
func TestAggregateCalls(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	calls := clients(env.testAPI, parleyv1connect.NewCallServiceClient)
	roomClient := env.clients["connect"]
	convClient := parleyv1connect.NewConversationServiceClient(env.hc, env.url)
	callClient := calls["connect"]
	agentCaller := env.agent(t)
	ctx := t.Context()
	user, other := env.newUser(t, "Ada"), env.newUser(t, "Bob")
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	// Two New York days; the 03:00 UTC call is the evening of the first.
	day1 := time.Date(2026, 11, 10, 0, 0, 0, 0, ny)
	day2 := day1.AddDate(0, 0, 1)
	at := func(d time.Time, h int) time.Time { return d.Add(time.Duration(h) * time.Hour) }
	seeded := []seededCall{
		{agent: "alpha", createdAt: at(day1, 9), reported: true, e2e: []float64{0.8, 1.1, 0.9}, interrupted: 1, inputTokens: 10},
		{agent: "alpha", createdAt: at(day1, 13), reported: true, ended: true, e2e: []float64{2.5, 0.7}, inputTokens: 20},
		{agent: "alpha", createdAt: day2.Add(-time.Hour), reported: true, e2e: []float64{1.3, 1.2, 4.0, 0.6, 0.95}, interrupted: 2, inputTokens: 30},
		{agent: "alpha", createdAt: at(day2, 10), reported: true, ended: true, metadata: map[string]string{"crm": "T-9"}, e2e: []float64{0.4, 3.3}, inputTokens: 40},
		{agent: "alpha", createdAt: at(day2, 11), reported: true, fixture: true},
		{agent: "beta", createdAt: at(day1, 8), reported: true, e2e: []float64{1.9, 2.1, 2.0, 1.8}, interrupted: 1, inputTokens: 50},
		{agent: "beta", createdAt: at(day2, 9), reported: true, ended: true, metadata: map[string]string{"crm": "T-9"}, e2e: []float64{0.5}, inputTokens: 60},
		{agent: "beta", createdAt: at(day2, 12)}, // no report
	}
	// The fixture's one e2e_latency; its usage is another model's.
	const fixtureE2E, fixtureTurns, fixtureInterruptions = 1.5, 3, 1
	fixture, _ := reportFixture(t)
	seed := func(owner caller, i int, c seededCall) string {
		t.Helper()
		created, err := roomClient.CreateRoom(ctx, as(owner, &parleyv1.CreateRoomRequest{Name: fmt.Sprint("call ", i), AgentName: c.agent}))
		if err != nil {
			t.Fatal(err)
		}
		r := created.Msg.GetRoom()
		// The room's creation is the database's clock; the test puts it
		// on its day.
		if _, err := env.db.ExecContext(ctx, `UPDATE rooms SET created_at = ? WHERE id = ?`, c.createdAt, r.GetId()); err != nil {
			t.Fatal(err)
		}
		if c.metadata != nil {
			if _, err := convClient.UpdateConversation(ctx, as(owner, &parleyv1.UpdateConversationRequest{ConversationId: r.GetConversationId(),
				Metadata: c.metadata, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"metadata"}}})); err != nil {
				t.Fatal(err)
			}
		}
		if c.reported {
			report := c.report(t, r.GetLivekitRoom(), i)
			if c.fixture {
				report = strings.Replace(fixture, `"room": "fixture-room"`, `"room": "`+r.GetLivekitRoom()+`"`, 1)
			}
			if _, err := callClient.ReportSession(ctx, as(agentCaller, &parleyv1.ReportSessionRequest{CallId: r.GetId(), ReportJson: report})); err != nil {
				t.Fatalf("ReportSession %d: %v", i, err)
			}
		}
		if c.ended {
			if _, err := roomClient.EndRoom(ctx, as(owner, &parleyv1.EndRoomRequest{RoomId: r.GetId()})); err != nil {
				t.Fatal(err)
			}
		}
		return r.GetId()
	}
	for i, c := range seeded {
		seed(user, i, c)
	}
	// Bob's call, the same agent and day, is never Ada's.
	seed(other, len(seeded), seededCall{agent: "alpha", createdAt: at(day1, 10), reported: true, metadata: map[string]string{"crm": "T-9"}, e2e: []float64{9.0, 9.5}, inputTokens: 1000})

	// want computes the groups from the seeded calls that keep does.
	type group struct {
		agent                         string
		start                         time.Time
		calls, reported, turns, inter int64
		e2e                           []float64
		inputTokens                   float64
	}
	want := func(byAgent, byDay bool, keep func(seededCall) bool) []group {
		var out []group
		for _, c := range seeded {
			if !keep(c) {
				continue
			}
			var g group
			if byAgent {
				g.agent = c.agent
			}
			if byDay {
				l := c.createdAt.In(ny)
				g.start = time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, ny)
			}
			i := slices.IndexFunc(out, func(o group) bool { return o.agent == g.agent && o.start.Equal(g.start) })
			if i < 0 {
				out, i = append(out, g), len(out)
			}
			o := &out[i]
			o.calls++
			switch {
			case c.fixture:
				o.reported, o.turns, o.inter = o.reported+1, o.turns+fixtureTurns, o.inter+fixtureInterruptions
				o.e2e = append(o.e2e, fixtureE2E)
			case c.reported:
				o.reported, o.turns, o.inter = o.reported+1, o.turns+int64(len(c.e2e)), o.inter+int64(c.interrupted)
				o.e2e, o.inputTokens = append(o.e2e, c.e2e...), o.inputTokens+c.inputTokens
			}
		}
		slices.SortFunc(out, func(a, b group) int {
			if c := strings.Compare(a.agent, b.agent); c != 0 {
				return c
			}
			return a.start.Compare(b.start)
		})
		return out
	}
	all := func(seededCall) bool { return true }
	check := func(t *testing.T, got []*parleyv1.CallGroup, want []group) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%d groups, want %d: %v", len(got), len(want), got)
		}
		for i, w := range want {
			g := got[i]
			if g.GetAgentName() != w.agent || !g.GetBucketStart().AsTime().Equal(w.start) && !(w.start.IsZero() && g.GetBucketStart() == nil) ||
				g.GetCalls() != w.calls || g.GetCallsReported() != w.reported || g.GetTurns() != w.turns || g.GetInterruptions() != w.inter {
				t.Errorf("group %d = %v, want %+v", i, g, w)
			}
			var e2e *parleyv1.LatencyStats
			for _, l := range g.GetLatencies() {
				if l.GetMetric() == "e2e_latency" {
					e2e = l
				}
			}
			if len(w.e2e) == 0 {
				if e2e != nil {
					t.Errorf("group %d e2e_latency = %v, want none", i, e2e)
				}
				continue
			}
			if e2e == nil || e2e.GetCount() != int32(len(w.e2e)) || e2e.GetP95() != nearestRankP95(w.e2e) {
				t.Errorf("group %d (%s %v) e2e_latency = %v; want %d samples, p95 %v (of %v)", i, w.agent, w.start, e2e, len(w.e2e), nearestRankP95(w.e2e), w.e2e)
			}
			var tokens float64
			for _, u := range g.GetUsage() {
				if u.GetType() == "llm_usage" && u.GetProvider() == "acme" && u.GetModel() == "m-1" {
					tokens = u.GetValues()["input_tokens"]
				}
			}
			if tokens != w.inputTokens {
				t.Errorf("group %d acme m-1 input_tokens = %v, want %v", i, tokens, w.inputTokens)
			}
		}
	}

	dayRange := &parleyv1.AggregateCallsRequest{CreatedAfter: timestamppb.New(day1), CreatedBefore: timestamppb.New(day2.AddDate(0, 0, 1))}
	with := func(f func(r *parleyv1.AggregateCallsRequest)) *parleyv1.AggregateCallsRequest {
		r := &parleyv1.AggregateCallsRequest{CreatedAfter: dayRange.CreatedAfter, CreatedBefore: dayRange.CreatedBefore}
		f(r)
		return r
	}
	perAgentPerDay := func(r *parleyv1.AggregateCallsRequest) {
		r.GroupByAgent, r.Bucket, r.TimeZone = true, parleyv1.TimeBucket_TIME_BUCKET_DAY, "America/New_York"
	}
	t.Run("rest", func(t *testing.T) {
		q := url.Values{"createdAfter": {day1.Format(time.RFC3339)}, "createdBefore": {day2.AddDate(0, 0, 1).Format(time.RFC3339)},
			"groupByAgent": {"true"}, "agentName": {"beta"}, "status": {"CALL_STATUS_ENDED"}}
		status, _, out := restCall(t, http.MethodGet, env.url+"/api/v1/calls:aggregate?"+q.Encode(), user.token, "")
		groups, _ := out["groups"].([]any)
		if status != http.StatusOK || len(groups) != 1 || groups[0].(map[string]any)["calls"] != "1" {
			t.Errorf("GET /api/v1/calls:aggregate = %d %v, want beta's one ended call", status, out)
		}
		status, _, out = restCall(t, http.MethodGet, env.url+"/api/v1/calls:aggregate", user.token, "")
		if status != http.StatusBadRequest {
			t.Errorf("GET /api/v1/calls:aggregate without a range = %d %v, want 400", status, out)
		}
	})
	for proto, client := range calls {
		t.Run(proto, func(t *testing.T) {
			aggregate := func(t *testing.T, c caller, req *parleyv1.AggregateCallsRequest) []*parleyv1.CallGroup {
				t.Helper()
				res, err := client.AggregateCalls(ctx, as(c, req))
				if err != nil {
					t.Fatalf("AggregateCalls(%v): %v", req, err)
				}
				return res.Msg.GetGroups()
			}
			t.Run("per agent per day", func(t *testing.T) {
				got := aggregate(t, user, with(perAgentPerDay))
				check(t, got, want(true, true, all))
				// Pooled samples, not per-call percentiles: alpha's first day
				// has 0.8, 1.1, 0.9, 2.5, 0.7 and 1.3, 1.2, 4.0, 0.6, 0.95.
				if len(got) != 4 || got[0].GetLatencies()[0].GetP95() != 4.0 || got[0].GetLatencies()[0].GetP50() != 0.95 {
					t.Errorf("alpha's first day = %v, want e2e p50 0.95, p95 4.0", got[0])
				}
			})
			t.Run("UTC days", func(t *testing.T) {
				// In UTC the evening call is the second day's.
				got := aggregate(t, user, with(func(r *parleyv1.AggregateCallsRequest) { r.Bucket = parleyv1.TimeBucket_TIME_BUCKET_DAY }))
				if len(got) != 2 || !got[1].GetBucketStart().AsTime().Equal(time.Date(2026, 11, 11, 0, 0, 0, 0, time.UTC)) || got[1].GetCalls() != 5 {
					t.Errorf("UTC days = %v, want 2 days, the 11th's with 5 calls", got)
				}
			})
			t.Run("one group", func(t *testing.T) {
				check(t, aggregate(t, user, dayRange), want(false, false, all))
			})
			t.Run("status", func(t *testing.T) {
				got := aggregate(t, user, with(func(r *parleyv1.AggregateCallsRequest) {
					perAgentPerDay(r)
					r.Status = parleyv1.CallStatus_CALL_STATUS_ENDED
				}))
				check(t, got, want(true, true, func(c seededCall) bool { return c.ended }))
			})
			t.Run("metadata and agent", func(t *testing.T) {
				got := aggregate(t, user, with(func(r *parleyv1.AggregateCallsRequest) {
					perAgentPerDay(r)
					r.Metadata, r.AgentName = map[string]string{"crm": "T-9"}, "alpha"
				}))
				check(t, got, want(true, true, func(c seededCall) bool { return c.metadata != nil && c.agent == "alpha" }))
			})
			t.Run("range", func(t *testing.T) {
				got := aggregate(t, user, with(func(r *parleyv1.AggregateCallsRequest) {
					perAgentPerDay(r)
					r.CreatedBefore = timestamppb.New(day2)
				}))
				check(t, got, want(true, true, func(c seededCall) bool { return c.createdAt.Before(day2) }))
			})
			t.Run("another user", func(t *testing.T) {
				got := aggregate(t, other, with(perAgentPerDay))
				if len(got) != 1 || got[0].GetCalls() != 1 || got[0].GetLatencies()[0].GetP95() != 9.5 {
					t.Errorf("Bob's groups = %v, want his one call", got)
				}
			})
			t.Run("agents see all", func(t *testing.T) {
				got := aggregate(t, agentCaller, with(func(r *parleyv1.AggregateCallsRequest) { r.Metadata = map[string]string{"crm": "T-9"} }))
				if len(got) != 1 || got[0].GetCalls() != 3 || got[0].GetLatencies()[0].GetP95() != 9.5 {
					t.Errorf("agent's groups = %v, want Ada's two calls and Bob's", got)
				}
			})
			t.Run("invalid", func(t *testing.T) {
				for name, tc := range map[string]struct {
					req  *parleyv1.AggregateCallsRequest
					want string
				}{
					"no range": {&parleyv1.AggregateCallsRequest{CreatedAfter: dayRange.CreatedAfter}, "created_before"},
					"reversed": {&parleyv1.AggregateCallsRequest{CreatedAfter: dayRange.CreatedBefore, CreatedBefore: dayRange.CreatedAfter}, "created_after must be before created_before"},
					"too long": {&parleyv1.AggregateCallsRequest{CreatedAfter: dayRange.CreatedAfter, CreatedBefore: timestamppb.New(day1.AddDate(0, 0, 94))}, "more than the 93 days allowed"},
					"hours": {&parleyv1.AggregateCallsRequest{CreatedAfter: dayRange.CreatedAfter, CreatedBefore: timestamppb.New(day1.AddDate(0, 0, 60)),
						Bucket: parleyv1.TimeBucket_TIME_BUCKET_HOUR}, "more than 1000 groups"},
					"zone":      {with(func(r *parleyv1.AggregateCallsRequest) { r.TimeZone = "Mars/Olympus" }), `time_zone "Mars/Olympus" is not an IANA time zone`},
					"local":     {with(func(r *parleyv1.AggregateCallsRequest) { r.TimeZone = "Local" }), "not an IANA time zone"},
					"bucket":    {with(func(r *parleyv1.AggregateCallsRequest) { r.Bucket = 7 }), "bucket"},
					"long name": {with(func(r *parleyv1.AggregateCallsRequest) { r.AgentName = strings.Repeat("a", 129) }), "agent_name"},
				} {
					_, err := client.AggregateCalls(ctx, as(user, tc.req))
					if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.want) {
						t.Errorf("%s: %v, want invalid_argument naming %q", name, err, tc.want)
					}
				}
			})
		})
	}
}

// TestAggregateCallsHoursAcrossDST: an hour bucket is an hour of instants
// even when the zone's clock repeats or skips one: New York's 01:00-02:00
// of 1 November 2026 happens twice (EDT, then EST), and each is its own
// group, starting at or before each of its calls. A day starts at its first
// midnight: Havana's clock goes back from 01:00 to 00:00 that day.
func TestAggregateCallsHoursAcrossDST(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	client := clients(env.testAPI, parleyv1connect.NewCallServiceClient)["connect"]
	user := env.newUser(t, "Ada")
	ctx := t.Context()
	for _, tc := range []struct {
		name  string
		calls []time.Time
	}{
		{"fall back", []time.Time{time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC), time.Date(2026, 11, 1, 6, 30, 0, 0, time.UTC)}},
		{"spring forward", []time.Time{time.Date(2026, 3, 8, 6, 30, 0, 0, time.UTC), time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC)}},
	} {
		for _, at := range tc.calls {
			created, err := env.clients["connect"].CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: tc.name}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := env.db.ExecContext(ctx, `UPDATE rooms SET created_at = ? WHERE id = ?`, at, created.Msg.GetRoom().GetId()); err != nil {
				t.Fatal(err)
			}
		}
		res, err := client.AggregateCalls(ctx, as(user, &parleyv1.AggregateCallsRequest{
			CreatedAfter: timestamppb.New(tc.calls[0].Add(-3 * time.Hour)), CreatedBefore: timestamppb.New(tc.calls[1].Add(3 * time.Hour)),
			Bucket: parleyv1.TimeBucket_TIME_BUCKET_HOUR, TimeZone: "America/New_York",
		}))
		if err != nil {
			t.Fatal(err)
		}
		groups := res.Msg.GetGroups()
		if len(groups) != 2 {
			t.Fatalf("%s: %d groups, want one per call: %v", tc.name, len(groups), groups)
		}
		for i, g := range groups {
			if start := g.GetBucketStart().AsTime(); g.GetCalls() != 1 || !start.Equal(tc.calls[i].Truncate(time.Hour)) {
				t.Errorf("%s: group %d starts %v with %d calls; want one call, starting %v", tc.name, i, start, g.GetCalls(), tc.calls[i].Truncate(time.Hour))
			}
		}
	}

	cuban := env.newUser(t, "Cuba")
	havana := []time.Time{time.Date(2026, 11, 1, 4, 30, 0, 0, time.UTC), time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC)} // 00:30 CDT, 00:30 CST
	for _, at := range havana {
		created, err := env.clients["connect"].CreateRoom(ctx, as(cuban, &parleyv1.CreateRoomRequest{Name: "havana"}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.db.ExecContext(ctx, `UPDATE rooms SET created_at = ? WHERE id = ?`, at, created.Msg.GetRoom().GetId()); err != nil {
			t.Fatal(err)
		}
	}
	res, err := client.AggregateCalls(ctx, as(cuban, &parleyv1.AggregateCallsRequest{
		CreatedAfter: timestamppb.New(havana[0].Add(-time.Minute)), CreatedBefore: timestamppb.New(havana[1].Add(time.Minute)),
		Bucket: parleyv1.TimeBucket_TIME_BUCKET_DAY, TimeZone: "America/Havana",
	}))
	if err != nil {
		t.Fatal(err)
	}
	midnight := time.Date(2026, 11, 1, 4, 0, 0, 0, time.UTC) // 00:00 CDT
	if g := res.Msg.GetGroups(); len(g) != 1 || g[0].GetCalls() != 2 || !g[0].GetBucketStart().AsTime().Equal(midnight) {
		t.Errorf("Havana's 1 November = %v, want its 2 calls from %v", g, midnight)
	}
}
