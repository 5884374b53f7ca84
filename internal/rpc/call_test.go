package rpc

import (
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

// callWebhooks posts LiveKit's events about r, each signed, and fails on
// any answer but 200.
func callWebhooks(t *testing.T, env *roomTestEnv, evs ...*livekit.WebhookEvent) {
	t.Helper()
	for _, ev := range evs {
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, ev)); code != http.StatusOK {
			t.Fatalf("webhook %s %s: HTTP %d", ev.GetEvent(), ev.GetId(), code)
		}
	}
}

// callLife is a call's events for room r under the sid LiveKit gave it,
// at base plus the seconds given, in the order LiveKit might deliver them
// at worst: the finish first, the start last.
func callLife(r *parleyv1.Room, sid string, base time.Time) []*livekit.WebhookEvent {
	lkRoom := &livekit.Room{Name: r.GetLivekitRoom(), Sid: sid}
	user := &livekit.ParticipantInfo{Sid: "PA_user", Identity: r.GetCreatedBy(), Name: "Ada"}
	agent := &livekit.ParticipantInfo{Sid: "PA_agent", Identity: "agent-AJ_1", Name: "Agent", Kind: livekit.ParticipantInfo_AGENT}
	ev := func(id, kind string, sec int64, p *livekit.ParticipantInfo) *livekit.WebhookEvent {
		return &livekit.WebhookEvent{Id: r.GetId() + id, Event: kind, Room: lkRoom, Participant: p, CreatedAt: base.Unix() + sec}
	}
	track := ev("/track", "track_published", 3, agent)
	track.Track = &livekit.TrackInfo{Sid: "TR_agent", Type: livekit.TrackType_AUDIO, Source: livekit.TrackSource_MICROPHONE}
	return []*livekit.WebhookEvent{
		ev("/finished", "room_finished", 30, nil),
		ev("/user_left", "participant_left", 20, user),
		track,
		ev("/agent_joined", "participant_joined", 2, agent),
		ev("/user_joined", "participant_joined", 1, user),
		ev("/agent_left", "participant_left", 25, agent),
		ev("/started", "room_started", 0, nil),
	}
}

func TestCallServiceFromWebhooks(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	calls := clients(env.testAPI, parleyv1connect.NewCallServiceClient)
	roomClient := env.clients["connect"]
	convClient := parleyv1connect.NewConversationServiceClient(env.hc, env.url)
	agent := env.agent(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	for proto, client := range calls {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			user, other := env.newUser(t, "Ada"), env.newUser(t, "Bob")
			created, err := roomClient.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "support"}))
			if err != nil {
				t.Fatal(err)
			}
			r := created.Msg.GetRoom()
			pending, err := roomClient.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "later", AgentName: "other-agent"}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = convClient.UpdateConversation(ctx, as(user, &parleyv1.UpdateConversationRequest{ConversationId: r.GetConversationId(),
				Metadata: map[string]string{"crm": "T-1"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"metadata"}}}))
			if err != nil {
				t.Fatal(err)
			}
			life := callLife(r, env.lk.RoomSID(r.GetLivekitRoom()), base)
			callWebhooks(t, env, life...)
			callWebhooks(t, env, life[1], life[0]) // redelivered

			got, err := client.GetCall(ctx, as(user, &parleyv1.GetCallRequest{CallId: r.GetId()}))
			if err != nil {
				t.Fatalf("GetCall: %v", err)
			}
			c := got.Msg.GetCall()
			if c.GetId() != r.GetId() || c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_ENDED ||
				c.GetEndReason() != parleyv1.CallEndReason_CALL_END_REASON_ROOM_FINISHED ||
				!c.GetStartedAt().AsTime().Equal(base) || !c.GetEndedAt().AsTime().Equal(base.Add(30*time.Second)) ||
				c.GetConversationId() != r.GetConversationId() || c.GetAgentName() != roomTestAgent || len(c.GetParticipants()) != 2 {
				t.Fatalf("call = %v", c)
			}
			u, a := c.GetParticipants()[0], c.GetParticipants()[1]
			if u.GetKind() != parleyv1.ParticipantKind_PARTICIPANT_KIND_USER || u.GetIdentity() != user.String() ||
				!u.GetJoinedAt().AsTime().Equal(base.Add(time.Second)) || !u.GetLeftAt().AsTime().Equal(base.Add(20*time.Second)) {
				t.Errorf("user participant = %v", u)
			}
			if a.GetKind() != parleyv1.ParticipantKind_PARTICIPANT_KIND_AGENT || len(a.GetTracks()) != 1 || a.GetTracks()[0].GetType() != "audio" ||
				!a.GetLeftAt().AsTime().Equal(base.Add(25*time.Second)) {
				t.Errorf("agent participant = %v", a)
			}

			// Owner-only for users; agents read any call.
			_, err = client.GetCall(ctx, as(other, &parleyv1.GetCallRequest{CallId: r.GetId()}))
			wantCode(t, "GetCall of another's call", err, connect.CodeNotFound)
			if got, err := client.GetCall(ctx, as(agent, &parleyv1.GetCallRequest{CallId: r.GetId()})); err != nil || got.Msg.GetCall().GetId() != r.GetId() {
				t.Errorf("agent's GetCall = %v, %v", got, err)
			}
			_, err = client.GetCall(ctx, as(user, &parleyv1.GetCallRequest{CallId: "nope"}))
			wantCode(t, "GetCall of a malformed id", err, connect.CodeInvalidArgument)

			list := func(c caller, req *parleyv1.ListCallsRequest) []string {
				t.Helper()
				res, err := client.ListCalls(ctx, as(c, req))
				if err != nil {
					t.Fatalf("ListCalls(%v): %v", req, err)
				}
				var ids []string
				for _, c := range res.Msg.GetCalls() {
					ids = append(ids, c.GetId())
				}
				return ids
			}
			both := []string{pending.Msg.GetRoom().GetId(), r.GetId()}
			for name, tc := range map[string]struct {
				req  *parleyv1.ListCallsRequest
				want []string
			}{
				"all":           {&parleyv1.ListCallsRequest{}, both},
				"ended":         {&parleyv1.ListCallsRequest{Status: parleyv1.CallStatus_CALL_STATUS_ENDED}, both[1:]},
				"pending":       {&parleyv1.ListCallsRequest{Status: parleyv1.CallStatus_CALL_STATUS_PENDING}, both[:1]},
				"live":          {&parleyv1.ListCallsRequest{Status: parleyv1.CallStatus_CALL_STATUS_LIVE}, nil},
				"default agent": {&parleyv1.ListCallsRequest{AgentName: roomTestAgent}, both[1:]},
				"named agent":   {&parleyv1.ListCallsRequest{AgentName: "other-agent"}, both[:1]},
				"metadata":      {&parleyv1.ListCallsRequest{Metadata: map[string]string{"crm": "T-1"}}, both[1:]},
				"no metadata":   {&parleyv1.ListCallsRequest{Metadata: map[string]string{"crm": "T-2"}}, nil},
				"before":        {&parleyv1.ListCallsRequest{CreatedBefore: r.GetCreatedAt()}, nil},
				"range":         {&parleyv1.ListCallsRequest{CreatedAfter: r.GetCreatedAt(), CreatedBefore: pending.Msg.GetRoom().GetCreatedAt()}, both[1:]},
			} {
				if got := list(user, tc.req); !slices.Equal(got, tc.want) {
					t.Errorf("ListCalls %s = %v, want %v", name, got, tc.want)
				}
			}
			if got := list(other, &parleyv1.ListCallsRequest{}); len(got) != 0 {
				t.Errorf("another user's ListCalls = %v, want none", got)
			}
			// Paged: one at a time, the token carrying on.
			first, err := client.ListCalls(ctx, as(user, &parleyv1.ListCallsRequest{PageSize: 1}))
			if err != nil || len(first.Msg.GetCalls()) != 1 || first.Msg.GetNextPageToken() == "" {
				t.Fatalf("first page = %v, %v", first, err)
			}
			second, err := client.ListCalls(ctx, as(user, &parleyv1.ListCallsRequest{PageSize: 1, PageToken: first.Msg.GetNextPageToken()}))
			if err != nil || len(second.Msg.GetCalls()) != 1 || second.Msg.GetCalls()[0].GetId() != r.GetId() || second.Msg.GetNextPageToken() != "" {
				t.Errorf("second page = %v, %v", second, err)
			}
			_, err = client.ListCalls(ctx, as(user, &parleyv1.ListCallsRequest{PageToken: "garbage"}))
			wantCode(t, "ListCalls with a bad token", err, connect.CodeInvalidArgument)
			_, err = client.ListCalls(ctx, as(user, &parleyv1.ListCallsRequest{CreatedAfter: timestamppb.New(base), CreatedBefore: timestamppb.New(base)}))
			wantCode(t, "ListCalls with an empty range", err, connect.CodeInvalidArgument)
			if got := list(agent, &parleyv1.ListCallsRequest{PageSize: 200}); !containsAll(got, both) {
				t.Errorf("agent's ListCalls = %v, want every user's calls, %v among them", got, both)
			}
		})
	}
	t.Run("rest", func(t *testing.T) {
		user := env.newUser(t, "Ada")
		created, err := roomClient.CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{Name: "rest"}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetRoom().GetId()
		status, _, out := restCall(t, http.MethodGet, env.url+"/api/v1/calls/"+id, user.token, "")
		if call, _ := out["call"].(map[string]any); status != http.StatusOK || call["id"] != id || call["status"] != "CALL_STATUS_PENDING" {
			t.Errorf("GET /api/v1/calls/{id} = %d %v", status, out)
		}
		status, _, out = restCall(t, http.MethodGet, env.url+"/api/v1/calls?status=CALL_STATUS_PENDING", user.token, "")
		if calls, _ := out["calls"].([]any); status != http.StatusOK || len(calls) != 1 {
			t.Errorf("GET /api/v1/calls = %d %v", status, out)
		}
	})
}

func containsAll(have, want []string) bool {
	set := map[string]bool{}
	for _, s := range have {
		set[s] = true
	}
	for _, s := range want {
		if !set[s] {
			return false
		}
	}
	return true
}

// TestCallReconcile runs the reconciliation job against the fake LiveKit:
// a call whose room LiveKit still lists stays live and is seen; one whose
// room is gone closes (and its room ends), a late room_finished then
// taking over; a room gone only moments ago is left for its webhook; and
// with LiveKit unreachable, only calls silent for a day close, as stale.
func TestCallReconcile(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	ctx := t.Context()
	user := env.newUser(t, "Ada")
	roomClient, callClient := env.clients["connect"], parleyv1connect.NewCallServiceClient(env.hc, env.url)
	now := time.Now().Truncate(time.Second)
	start := func(name string, at time.Time) *parleyv1.Room {
		t.Helper()
		created, err := roomClient.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: name}))
		if err != nil {
			t.Fatal(err)
		}
		r := created.Msg.GetRoom()
		callWebhooks(t, env, &livekit.WebhookEvent{Id: r.GetId() + "/started", Event: "room_started", CreatedAt: at.Unix(),
			Room: &livekit.Room{Name: r.GetLivekitRoom(), Sid: env.lk.RoomSID(r.GetLivekitRoom())}})
		return r
	}
	get := func(r *parleyv1.Room) *parleyv1.Call {
		t.Helper()
		got, err := callClient.GetCall(ctx, as(user, &parleyv1.GetCallRequest{CallId: r.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		return got.Msg.GetCall()
	}
	listed := start("listed", now.Add(-10*time.Minute))
	gone := start("gone", now.Add(-10*time.Minute))
	sid := env.lk.RoomSID(gone.GetLivekitRoom())
	recent := start("recent", now.Add(-30*time.Second))
	env.lk.CloseRoom(gone.GetLivekitRoom())
	env.lk.CloseRoom(recent.GetLivekitRoom())

	env.rooms.Reconcile(ctx)
	if c := get(listed); c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_LIVE || c.GetLastSeenAt().AsTime().Before(now) {
		t.Errorf("listed call = %v, want live and seen now", c)
	}
	c := get(gone)
	if c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_ENDED || c.GetEndReason() != parleyv1.CallEndReason_CALL_END_REASON_ROOM_GONE ||
		!c.GetEndedAt().AsTime().Equal(now.Add(-10*time.Minute)) {
		t.Errorf("gone call = %v, want ended at its last sign of life", c)
	}
	r, err := roomClient.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: gone.GetId()}))
	if err != nil || r.Msg.GetRoom().GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
		t.Errorf("gone call's room = %v, %v; want ended", r, err)
	}
	if c := get(recent); c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_LIVE {
		t.Errorf("recently gone call = %v, want left live for its webhook", c)
	}
	callWebhooks(t, env, &livekit.WebhookEvent{Id: gone.GetId() + "/finished", Event: "room_finished", CreatedAt: now.Add(-9 * time.Minute).Unix(),
		Room: &livekit.Room{Name: gone.GetLivekitRoom(), Sid: sid}})
	if c := get(gone); c.GetEndReason() != parleyv1.CallEndReason_CALL_END_REASON_ROOM_FINISHED || !c.GetEndedAt().AsTime().Equal(now.Add(-9*time.Minute)) {
		t.Errorf("gone call after its late room_finished = %v", c)
	}

	// LiveKit unreachable: a replica whose LiveKit is a dead address.
	dead, err := rtc.New(rtc.Config{URL: rtctest.BlackHole(t), APIKey: roomTestKey, APISecret: roomTestSecret, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	later := room.NewService(postgres.NewRoomStore(env.db), dead, room.Options{Log: slog.New(slog.DiscardHandler),
		// A day and 15 s after recent was last heard of: listed, seen
		// since, is not silent that long.
		Now: func() time.Time { return now.Add(-30*time.Second + room.MaxCallSilence + 15*time.Second) }})
	t.Cleanup(later.Close)
	later.Reconcile(ctx)
	if c := get(recent); c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_ENDED || c.GetEndReason() != parleyv1.CallEndReason_CALL_END_REASON_STALE {
		t.Errorf("call silent for a day = %v, want ended as stale", c)
	}
	if c := get(listed); c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_LIVE {
		t.Errorf("call seen within the day = %v, want still live", c)
	}
}

// TestCallRecordingFromEgressEvents follows an egress through its webhooks
// into the call: egress_started and egress_updated under the room's sid
// set its state (one under another sid is refused and changes nothing), and
// egress_ended, confirmed with LiveKit's ListEgress, completes it with the
// file the recording becomes, whatever order the three arrive in.
func TestCallRecordingFromEgressEvents(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	ctx := t.Context()
	user := env.newUser(t, "Ada")
	created, err := env.clients["connect"].CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "recorded"}))
	if err != nil {
		t.Fatal(err)
	}
	r := created.Msg.GetRoom()
	sid := env.lk.RoomSID(r.GetLivekitRoom())
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	info := func(st livekit.EgressStatus, sec int64) *livekit.EgressInfo {
		return &livekit.EgressInfo{EgressId: "EG_1", RoomName: r.GetLivekitRoom(), RoomId: sid, Status: st,
			StartedAt: base.UnixNano(), UpdatedAt: base.Add(time.Duration(sec) * time.Second).UnixNano()}
	}
	done := info(livekit.EgressStatus_EGRESS_COMPLETE, 9)
	done.EndedAt = done.UpdatedAt
	done.FileResults = []*livekit.FileInfo{{Filename: room.RecordingPrefix(r.GetLivekitRoom()) + "EG_1.mp4", Size: 2048}}
	env.lk.AddEgress(done)
	forged := info(livekit.EgressStatus_EGRESS_ACTIVE, 5)
	forged.RoomId = "RM_forged"
	before := refusals(t, env.webhook, "egress_updated", room.RefusedRoomMismatch)
	callWebhooks(t, env,
		&livekit.WebhookEvent{Id: "EV_forged", Event: "egress_updated", EgressInfo: forged},
		&livekit.WebhookEvent{Id: "EV_ended", Event: "egress_ended", EgressInfo: done},
		&livekit.WebhookEvent{Id: "EV_updated", Event: "egress_updated", EgressInfo: info(livekit.EgressStatus_EGRESS_ACTIVE, 2)},
		&livekit.WebhookEvent{Id: "EV_started", Event: "egress_started", EgressInfo: info(livekit.EgressStatus_EGRESS_STARTING, 1)})
	if n := refusals(t, env.webhook, "egress_updated", room.RefusedRoomMismatch) - before; n != 1 {
		t.Errorf("forged egress_updated refusals = %v, want 1", n)
	}
	got, err := parleyv1connect.NewCallServiceClient(env.hc, env.url).GetCall(ctx, as(user, &parleyv1.GetCallRequest{CallId: r.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	recs := got.Msg.GetCall().GetRecordings()
	if len(recs) != 1 || recs[0].GetEgressId() != "EG_1" || recs[0].GetStatus() != parleyv1.EgressStatus_EGRESS_STATUS_COMPLETE ||
		!recs[0].GetStartedAt().AsTime().Equal(base) || !recs[0].GetEndedAt().AsTime().Equal(base.Add(9*time.Second)) {
		t.Fatalf("recordings = %v", recs)
	}
	if f := recs[0].GetFiles(); len(f) != 1 || f[0].GetFileId() == "" || f[0].GetFilename() != "EG_1.mp4" || f[0].GetSizeBytes() != 2048 ||
		f[0].GetContentType() != "video/mp4" {
		t.Errorf("recording files = %v", f)
	}
}
