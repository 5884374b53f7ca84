package rpc

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

// dispatchedTo returns what the fake LiveKit was asked to dispatch into
// lkRoom through its Twirp API, nil if nothing.
func (env *roomTestEnv) dispatchedTo(t *testing.T, lkRoom string) *livekit.CreateAgentDispatchRequest {
	t.Helper()
	var got *livekit.CreateAgentDispatchRequest
	for _, d := range env.lk.Dispatches() {
		if d.GetRoom() == lkRoom {
			if got != nil {
				t.Errorf("two dispatches into %s: %v and %v", lkRoom, got, d)
			}
			got = d
		}
	}
	return got
}

// tokenDispatch returns the room metadata and the one agent dispatch of a
// join token's room configuration.
func tokenDispatch(t *testing.T, join *parleyv1.JoinInfo) (string, *livekit.RoomAgentDispatch) {
	t.Helper()
	v, err := auth.ParseAPIToken(join.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	_, grants, err := v.Verify(roomTestSecret)
	if err != nil {
		t.Fatal(err)
	}
	cfg := grants.GetRoomConfiguration()
	if len(cfg.GetAgents()) != 1 {
		t.Fatalf("token room config agents = %v, want one", cfg.GetAgents())
	}
	return cfg.GetMetadata(), cfg.GetAgents()[0]
}

// checkDispatch checks a dispatch's agent and its metadata, decoded.
func checkDispatch(t *testing.T, where, agent, gotAgent, gotMeta string, want room.DispatchMetadata) {
	t.Helper()
	var got room.DispatchMetadata
	if err := json.Unmarshal([]byte(gotMeta), &got); err != nil {
		t.Errorf("%s: dispatch metadata %q: %v", where, gotMeta, err)
	}
	if gotAgent != agent || got != want {
		t.Errorf("%s: dispatch of %q with %s, want %q with %+v", where, gotAgent, gotMeta, agent, want)
	}
}

// seedTurn saves a turn into the conversation through SaveTurn, and a tool
// call through AppendItems (an item that is no message), and returns the
// seq the dispatch of a room resuming it must carry: its last item's.
func (env *roomTestEnv) seedTurn(t *testing.T, conv uuid.UUID, user caller) int64 {
	t.Helper()
	convs := parleyv1connect.NewConversationServiceClient(env.hc, env.url)
	_, err := convs.SaveTurn(t.Context(), as(user, &parleyv1.SaveTurnRequest{ConversationId: conv.String(), UserMessage: "hello", AssistantMessage: "hi"}))
	if err != nil {
		t.Fatal(err)
	}
	call := &parleyv1.ChatContext_ChatItem{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{
		Id: "fc_" + uuid.NewString(), CallId: "c", Name: "lookup", Arguments: "{}",
	}}}
	if _, err := convs.AppendItems(t.Context(), as(user, &parleyv1.AppendItemsRequest{ConversationId: conv.String(), Items: []*parleyv1.ChatContext_ChatItem{call}})); err != nil {
		t.Fatal(err)
	}
	list, err := convs.ListItems(t.Context(), as(user, &parleyv1.ListItemsRequest{ConversationId: conv.String(), PageSize: 1, Order: parleyv1.Order_ORDER_NEWEST_FIRST}))
	if err != nil || len(list.Msg.GetItems()) != 1 {
		t.Fatalf("ListItems = %v, %v", list, err)
	}
	return list.Msg.GetItems()[0].GetSeq()
}

// TestCreateRoomAgentJob: CreateRoom's agent_name and agent_metadata reach
// LiveKit's dispatch (API and join token alike) beside the conversation id,
// the room keeps its metadata, and the room names its agent; without
// agent_name it is PARLEY_LIVEKIT_AGENT_NAME's.
func TestCreateRoomAgentJob(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	for proto, client := range env.clients {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			user := env.newUser(t, "Ada")
			created, err := client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{
				Name: "support", AgentName: "support-bot", AgentMetadata: `{"lang":"fr","tier":2}`,
			}))
			if err != nil {
				t.Fatalf("CreateRoom: %v", err)
			}
			r := created.Msg.GetRoom()
			if r.GetAgentName() != "support-bot" {
				t.Errorf("room agent_name = %q", r.GetAgentName())
			}
			want := room.DispatchMetadata{ConversationID: r.GetConversationId(), AgentMetadata: `{"lang":"fr","tier":2}`, CallID: r.GetId()}
			d := env.dispatchedTo(t, r.GetLivekitRoom())
			if d == nil {
				t.Fatal("LiveKit was asked for no dispatch")
			}
			checkDispatch(t, "Twirp CreateDispatch", "support-bot", d.GetAgentName(), d.GetMetadata(), want)
			for _, cr := range env.lk.CreatedRooms() {
				if cr.GetName() == r.GetLivekitRoom() && cr.GetMetadata() != `{"conversation_id":"`+r.GetConversationId()+`"}` {
					t.Errorf("room metadata %s", cr.GetMetadata())
				}
			}
			roomMeta, td := tokenDispatch(t, created.Msg.GetJoin())
			if roomMeta != `{"conversation_id":"`+r.GetConversationId()+`"}` {
				t.Errorf("token room metadata %s", roomMeta)
			}
			checkDispatch(t, "CreateRoom's token", "support-bot", td.GetAgentName(), td.GetMetadata(), want)

			// The job is the room's: GetRoom names the agent, JoinRoom's
			// token dispatches the same.
			got, err := client.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: r.GetId()}))
			if err != nil || got.Msg.GetRoom().GetAgentName() != "support-bot" {
				t.Errorf("GetRoom = %v, %v", got, err)
			}
			joined, err := client.JoinRoom(ctx, as(user, &parleyv1.JoinRoomRequest{RoomId: r.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			_, td = tokenDispatch(t, joined.Msg.GetJoin())
			checkDispatch(t, "JoinRoom's token", "support-bot", td.GetAgentName(), td.GetMetadata(), want)

			plain, err := client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "plain"}))
			if err != nil {
				t.Fatal(err)
			}
			if a := plain.Msg.GetRoom().GetAgentName(); a != roomTestAgent {
				t.Errorf("agent_name of a room naming none = %q, want the default %q", a, roomTestAgent)
			}
			list, err := client.ListRooms(ctx, as(user, &parleyv1.ListRoomsRequest{}))
			if err != nil || len(list.Msg.GetRooms()) != 2 || list.Msg.GetRooms()[0].GetAgentName() != roomTestAgent || list.Msg.GetRooms()[1].GetAgentName() != "support-bot" {
				t.Errorf("ListRooms = %v, %v", list, err)
			}
		})
	}
}

// TestCreateRoomResumesConversation: CreateRoom with one of the caller's
// conversations makes a room for it and no new conversation, once its room
// has ended; the dispatch carries the conversation's last seq; the
// conversation's room_id names the new room while the old room keeps it.
func TestCreateRoomResumesConversation(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	for proto, client := range env.clients {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			user := env.newUser(t, "Ada")
			first, err := client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "Monday"}))
			if err != nil {
				t.Fatal(err)
			}
			old := first.Msg.GetRoom()
			conv := uuid.MustParse(old.GetConversationId())
			env.seedTurn(t, conv, user)
			lastSeq := env.seedTurn(t, conv, user)

			resume := &parleyv1.CreateRoomRequest{Name: "Tuesday", ConversationId: conv.String(), AgentMetadata: "again"}
			_, err = client.CreateRoom(ctx, as(user, resume))
			wantCode(t, "resuming a conversation whose room is active", err, connect.CodeFailedPrecondition)

			if _, err := client.EndRoom(ctx, as(user, &parleyv1.EndRoomRequest{RoomId: old.GetId()})); err != nil {
				t.Fatal(err)
			}
			created, err := client.CreateRoom(ctx, as(user, resume))
			if err != nil {
				t.Fatalf("CreateRoom resuming: %v", err)
			}
			r := created.Msg.GetRoom()
			if r.GetConversationId() != conv.String() || r.GetId() == old.GetId() || r.GetName() != "Tuesday" ||
				r.GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE || r.GetAgentName() != roomTestAgent {
				t.Errorf("resumed room = %v", r)
			}
			want := room.DispatchMetadata{ConversationID: conv.String(), LastSeq: lastSeq, AgentMetadata: "again", CallID: r.GetId()}
			if d := env.dispatchedTo(t, r.GetLivekitRoom()); d == nil {
				t.Error("LiveKit was asked for no dispatch")
			} else {
				checkDispatch(t, "Twirp CreateDispatch", roomTestAgent, d.GetAgentName(), d.GetMetadata(), want)
			}
			roomMeta, td := tokenDispatch(t, created.Msg.GetJoin())
			if roomMeta != `{"conversation_id":"`+conv.String()+`"}` {
				t.Errorf("token room metadata %s", roomMeta)
			}
			checkDispatch(t, "CreateRoom's token", roomTestAgent, td.GetAgentName(), td.GetMetadata(), want)

			// Later turns do not move the room's restore point: every join
			// token dispatches what CreateRoom did.
			env.seedTurn(t, conv, user)
			joined, err := client.JoinRoom(ctx, as(user, &parleyv1.JoinRoomRequest{RoomId: r.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			_, td = tokenDispatch(t, joined.Msg.GetJoin())
			checkDispatch(t, "JoinRoom's token", roomTestAgent, td.GetAgentName(), td.GetMetadata(), want)

			list, err := parleyv1connect.NewConversationServiceClient(env.hc, env.url).
				ListConversations(ctx, as(user, &parleyv1.ListConversationsRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			if cs := list.Msg.GetConversations(); len(cs) != 1 || cs[0].GetId() != conv.String() || cs[0].GetRoomId() != r.GetId() || cs[0].GetTitle() != "Monday" {
				t.Errorf("the user's conversations = %v; want only %s, with room %s and its title kept", cs, conv, r.GetId())
			}
			got, err := client.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: old.GetId()}))
			if err != nil || got.Msg.GetRoom().GetConversationId() != conv.String() {
				t.Errorf("the old room = %v, %v; want it to keep its conversation", got, err)
			}
		})
	}
}

// TestResumeRefusals: only the caller's own conversations resume; others'
// and unknown ones are not_found alike, agents create no rooms.
func TestResumeRefusals(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	client := env.clients["connect"]
	ctx := t.Context()
	owner, other := env.newUser(t, "Ada"), env.newUser(t, "Eve")
	created, err := client.CreateRoom(ctx, as(owner, &parleyv1.CreateRoomRequest{Name: "private"}))
	if err != nil {
		t.Fatal(err)
	}
	r := created.Msg.GetRoom()
	if _, err := client.EndRoom(ctx, as(owner, &parleyv1.EndRoomRequest{RoomId: r.GetId()})); err != nil {
		t.Fatal(err)
	}
	before := len(env.lk.CreatedRooms())

	_, err = client.CreateRoom(ctx, as(other, &parleyv1.CreateRoomRequest{Name: "x", ConversationId: r.GetConversationId()}))
	wantCode(t, "resuming someone else's conversation", err, connect.CodeNotFound)
	_, err = client.CreateRoom(ctx, as(owner, &parleyv1.CreateRoomRequest{Name: "x", ConversationId: uuid.NewString()}))
	wantCode(t, "resuming an unknown conversation", err, connect.CodeNotFound)
	_, err = client.CreateRoom(ctx, as(owner, &parleyv1.CreateRoomRequest{Name: "x", ConversationId: "not-a-uuid"}))
	wantCode(t, "a malformed conversation_id", err, connect.CodeInvalidArgument)
	_, err = client.CreateRoom(ctx, as(env.agent(t), &parleyv1.CreateRoomRequest{Name: "x", ConversationId: r.GetConversationId()}))
	wantCode(t, "an agent resuming", err, connect.CodePermissionDenied)
	if n := len(env.lk.CreatedRooms()); n != before {
		t.Errorf("refused resumes asked LiveKit for %d rooms", n-before)
	}
	rooms, err := client.ListRooms(ctx, as(other, &parleyv1.ListRoomsRequest{}))
	if err != nil || len(rooms.Msg.GetRooms()) != 0 {
		t.Errorf("the other user's rooms = %v, %v", rooms, err)
	}
}

// TestConcurrentResumes: of resumes of one conversation racing on several
// replicas, exactly one makes a room; the others find it active.
func TestConcurrentResumes(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	user := env.newUser(t, "Ada")
	client := env.clients["connect"]
	created, err := client.CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{Name: "r"}))
	if err != nil {
		t.Fatal(err)
	}
	r := created.Msg.GetRoom()
	if _, err := client.EndRoom(t.Context(), as(user, &parleyv1.EndRoomRequest{RoomId: r.GetId()})); err != nil {
		t.Fatal(err)
	}
	const n = 6
	services := []*room.Service{env.rooms}
	for range 2 {
		_, svc, _ := newRoomReplica(t, env.dbURL, env.lk.URL)
		services = append(services, svc)
	}
	p := env.principal(t, user)
	conv := uuid.MustParse(r.GetConversationId())
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, _, errs[i] = services[i%len(services)].Create(t.Context(), p, room.Request{Name: "again", ConversationID: conv})
		})
	}
	wg.Wait()
	var ok int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, room.ErrConversationLive):
			t.Errorf("a racing resume: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d racing resumes made a room, want 1", ok, n)
	}
}

// TestResumeWithLiveKitDown: with LiveKit unreachable, the join token alone
// carries the resumed dispatch, last seq included.
func TestResumeWithLiveKitDown(t *testing.T) {
	t.Parallel()
	down := rtctest.NewServer(t, roomTestKey, roomTestSecret)
	down.Close()
	env := newRoomTestEnv(t, down.URL)
	user := env.newUser(t, "Ada")
	client := env.clients["connect"]
	created, err := client.CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{Name: "offline"}))
	if err != nil {
		t.Fatal(err)
	}
	r := created.Msg.GetRoom()
	conv := uuid.MustParse(r.GetConversationId())
	lastSeq := env.seedTurn(t, conv, user)
	if _, err := client.EndRoom(t.Context(), as(user, &parleyv1.EndRoomRequest{RoomId: r.GetId()})); err != nil {
		t.Fatal(err)
	}
	resumed, err := client.CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{
		Name: "offline again", ConversationId: conv.String(), AgentName: "restorer", AgentMetadata: "m",
	}))
	if err != nil {
		t.Fatalf("CreateRoom resuming with LiveKit down: %v", err)
	}
	_, td := tokenDispatch(t, resumed.Msg.GetJoin())
	checkDispatch(t, "CreateRoom's token", "restorer", td.GetAgentName(), td.GetMetadata(),
		room.DispatchMetadata{ConversationID: conv.String(), LastSeq: lastSeq, AgentMetadata: "m", CallID: resumed.Msg.GetRoom().GetId()})
}

// TestRoomOfAnOlderReplica: a room an older replica made (no agent columns)
// is served and joined with the configured agent and the metadata it had.
func TestRoomOfAnOlderReplica(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	user := env.newUser(t, "Ada")
	client := env.clients["connect"]
	ctx := t.Context()
	roomID, convID := uuid.New(), uuid.New()
	// The statements of the previous release's CreateRoom.
	tx, err := env.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO rooms (id, name, conversation_id, livekit_room, created_by) VALUES (?, 'old', ?, ?, ?)`,
		roomID, convID, "parley-"+roomID.String(), user.UUID); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO conversations (id, user_id, room_id, title) VALUES (?, ?, ?, 'old')`, convID, user.UUID, roomID); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := client.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: roomID.String()}))
	if err != nil || got.Msg.GetRoom().GetAgentName() != roomTestAgent {
		t.Errorf("GetRoom = %v, %v; want agent %q", got, err, roomTestAgent)
	}
	joined, err := client.JoinRoom(ctx, as(user, &parleyv1.JoinRoomRequest{RoomId: roomID.String()}))
	if err != nil {
		t.Fatal(err)
	}
	meta := `{"conversation_id":"` + convID.String() + `"}`
	dispatch := `{"conversation_id":"` + convID.String() + `","call_id":"` + roomID.String() + `"}`
	roomMeta, td := tokenDispatch(t, joined.Msg.GetJoin())
	if roomMeta != meta || td.GetAgentName() != roomTestAgent || td.GetMetadata() != dispatch {
		t.Errorf("token room metadata %s, dispatch %v; want %s and %s with %s", roomMeta, td, meta, roomTestAgent, dispatch)
	}
}
