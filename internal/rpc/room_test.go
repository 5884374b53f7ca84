package rpc

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

const (
	roomTestKey    = "APIparley"
	roomTestSecret = "a-secret-of-at-least-thirty-two-characters"
	roomTestAgent  = "parley-agent"
)

type roomTestEnv struct {
	*testAPI
	clients map[string]parleyv1connect.RoomServiceClient
}

// newRoomTestEnv is the whole API, whose LiveKit client connects to
// liveKitURL ("" for the fake's own URL), with a RoomService client for
// each protocol.
func newRoomTestEnv(t *testing.T, liveKitURL string) *roomTestEnv {
	t.Helper()
	a := newTestAPI(t, apiOptions{liveKitURL: liveKitURL})
	return &roomTestEnv{testAPI: a, clients: clients(a, parleyv1connect.NewRoomServiceClient)}
}

// newRoomReplica builds what one Parley replica has for rooms: its own pool
// on the database, LiveKit client, room service and webhook handler (with
// its metrics on a registry of its own).
func newRoomReplica(t testing.TB, dbURL, liveKitURL string) (*bun.DB, *room.Service, *WebhookHandler) {
	t.Helper()
	db, err := postgres.Open(t.Context(), dbURL, postgres.Options{MaxOpenConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	lk, err := rtc.New(rtc.Config{
		URL: liveKitURL, PublicURL: "wss://livekit.example.com", APIKey: roomTestKey, APISecret: roomTestSecret,
		AgentName: roomTestAgent, Timeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	svc := room.NewService(postgres.NewRoomStore(db), lk, room.Options{Log: log, AgentName: roomTestAgent, DeleteBackoff: 20 * time.Millisecond})
	t.Cleanup(svc.Close)
	return db, svc, NewWebhookHandler(lk, svc, log, NewWebhookRefusals(prometheus.NewRegistry()))
}

func wantCode(t *testing.T, what string, err error, want connect.Code) {
	t.Helper()
	if got := connect.CodeOf(err); err == nil || got != want {
		t.Errorf("%s: error %v, want %v", what, err, want)
	}
}

// dispatchOf is the dispatch metadata of a room that started its
// conversation without agent metadata.
func dispatchOf(r *parleyv1.Room) string {
	return `{"conversation_id":"` + r.GetConversationId() + `","call_id":"` + r.GetId() + `"}`
}

// checkJoinToken decodes a join token with the API secret and checks it
// lets user join exactly r, with r's configuration.
func checkJoinToken(t *testing.T, join *parleyv1.JoinInfo, r *parleyv1.Room, user caller, name string) {
	t.Helper()
	if join.GetLivekitUrl() != "wss://livekit.example.com" {
		t.Errorf("livekit_url = %q", join.GetLivekitUrl())
	}
	if ttl := time.Until(join.GetExpiresAt().AsTime()); ttl < 59*time.Minute || ttl > time.Hour {
		t.Errorf("expires_at is %v away, want the default 1h", ttl)
	}
	v, err := auth.ParseAPIToken(join.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	_, grants, err := v.Verify(roomTestSecret)
	if err != nil {
		t.Fatalf("join token does not verify with the API secret: %v", err)
	}
	if grants.Identity != user.String() || grants.Name != name {
		t.Errorf("identity %q, name %q; want %s, %q", grants.Identity, grants.Name, user, name)
	}
	if g := grants.Video; g == nil || !g.RoomJoin || g.Room != r.GetLivekitRoom() || !g.GetCanPublish() || !g.GetCanSubscribe() || g.RoomAdmin || g.RoomCreate {
		t.Errorf("video grant %+v, want join/publish/subscribe in %s only", g, r.GetLivekitRoom())
	}
	wantMeta := `{"conversation_id":"` + r.GetConversationId() + `"}`
	cfg := grants.GetRoomConfiguration()
	if cfg.GetName() != r.GetLivekitRoom() || cfg.GetMetadata() != wantMeta {
		t.Errorf("token room config %v, want %s with metadata %s", cfg, r.GetLivekitRoom(), wantMeta)
	}
	if a := cfg.GetAgents(); len(a) != 1 || a[0].GetAgentName() != roomTestAgent || a[0].GetMetadata() != dispatchOf(r) {
		t.Errorf("token room config agents %v", a)
	}
}

// refusals reads h's count of refused events of the kind, for the reason.
func refusals(t *testing.T, h *WebhookHandler, event, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := h.refused.WithLabelValues(event, reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRoomServiceCreateJoinEnd(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	for proto, client := range env.clients {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			user := env.newUser(t, "Ada "+proto)

			created, err := client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "Stand-up"}))
			if err != nil {
				t.Fatalf("CreateRoom: %v", err)
			}
			r := created.Msg.GetRoom()
			if r.GetName() != "Stand-up" || r.GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE || r.GetCreatedBy() != user.String() ||
				r.GetLivekitRoom() != "parley-"+r.GetId() || r.GetCreatedAt() == nil || r.GetEndedAt() != nil {
				t.Errorf("room = %v", r)
			}
			convID := uuid.MustParse(r.GetConversationId())
			c, err := postgres.NewConversationStore(env.db).GetConversation(ctx, convID, conversation.Scope{UserID: user.UUID})
			if err != nil || c.RoomID.String() != r.GetId() || c.Title != "Stand-up" {
				t.Errorf("the room's conversation = %+v, %v", c, err)
			}
			checkJoinToken(t, created.Msg.GetJoin(), r, user, "Ada "+proto)

			// The fake LiveKit was asked for the room and the agent.
			wantMeta := `{"conversation_id":"` + r.GetConversationId() + `"}`
			var sawRoom, sawDispatch bool
			for _, cr := range env.lk.CreatedRooms() {
				sawRoom = sawRoom || (cr.GetName() == r.GetLivekitRoom() && cr.GetMetadata() == wantMeta)
			}
			for _, d := range env.lk.Dispatches() {
				sawDispatch = sawDispatch || (d.GetRoom() == r.GetLivekitRoom() && d.GetAgentName() == roomTestAgent && d.GetMetadata() == dispatchOf(r))
			}
			if !sawRoom || !sawDispatch {
				t.Errorf("LiveKit saw the room: %v, the dispatch: %v", sawRoom, sawDispatch)
			}

			got, err := client.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: r.GetId()}))
			if err != nil || got.Msg.GetRoom().GetId() != r.GetId() || got.Msg.GetRoom().GetConversationId() != r.GetConversationId() {
				t.Errorf("GetRoom = %v, %v", got, err)
			}
			joined, err := client.JoinRoom(ctx, as(user, &parleyv1.JoinRoomRequest{RoomId: r.GetId()}))
			if err != nil {
				t.Fatalf("JoinRoom: %v", err)
			}
			checkJoinToken(t, joined.Msg.GetJoin(), r, user, "Ada "+proto)

			ended, err := client.EndRoom(ctx, as(user, &parleyv1.EndRoomRequest{RoomId: r.GetId()}))
			if err != nil || ended.Msg.GetRoom().GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ENDED || ended.Msg.GetRoom().GetEndedAt() == nil {
				t.Fatalf("EndRoom = %v, %v", ended, err)
			}
			_, err = client.JoinRoom(ctx, as(user, &parleyv1.JoinRoomRequest{RoomId: r.GetId()}))
			wantCode(t, "JoinRoom of an ended room", err, connect.CodeFailedPrecondition)
			again, err := client.EndRoom(ctx, as(user, &parleyv1.EndRoomRequest{RoomId: r.GetId()}))
			if err != nil || !again.Msg.GetRoom().GetEndedAt().AsTime().Equal(ended.Msg.GetRoom().GetEndedAt().AsTime()) {
				t.Errorf("second EndRoom = %v, %v; want the same ended_at", again, err)
			}
			eventually(t, "LiveKit to delete "+r.GetLivekitRoom(), func() bool {
				for _, name := range env.lk.DeletedRooms() {
					if name == r.GetLivekitRoom() {
						return true
					}
				}
				return false
			})
		})
	}
}

func TestRoomServiceWorksWithLiveKitDown(t *testing.T) {
	t.Parallel()
	down := rtctest.NewServer(t, roomTestKey, roomTestSecret)
	down.Close()
	for name, url := range map[string]string{"refused": down.URL, "black hole": rtctest.BlackHole(t)} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := newRoomTestEnv(t, url)
			user := env.newUser(t, "Ada")
			client := env.clients["connect"]
			start := time.Now()
			created, err := client.CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{Name: "offline"}))
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("CreateRoom took %v with LiveKit %s", d, name)
			}
			if err != nil {
				t.Fatalf("CreateRoom with LiveKit %s: %v", name, err)
			}
			// The token alone lets LiveKit create the room right on first join.
			checkJoinToken(t, created.Msg.GetJoin(), created.Msg.GetRoom(), user, "Ada")

			start = time.Now()
			if _, err := client.EndRoom(t.Context(), as(user, &parleyv1.EndRoomRequest{RoomId: created.Msg.GetRoom().GetId()})); err != nil {
				t.Errorf("EndRoom with LiveKit %s: %v", name, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("EndRoom took %v with LiveKit %s", d, name)
			}
		})
	}
}

// TestWebhookSidOfFirstRoomStarted: a room created while LiveKit was
// unreachable has no sid until LiveKit opens it on first join; it takes the
// sid of its first room_started, and from then on only that sid.
func TestWebhookSidOfFirstRoomStarted(t *testing.T) {
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
	event := func(kind, sid string) *livekit.WebhookEvent {
		return &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: kind, CreatedAt: time.Now().Unix(), Room: &livekit.Room{Name: r.GetLivekitRoom(), Sid: sid}}
	}
	status := func() parleyv1.RoomStatus {
		got, err := client.GetRoom(t.Context(), as(user, &parleyv1.GetRoomRequest{RoomId: r.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		return got.Msg.GetRoom().GetStatus()
	}
	for _, ev := range []*livekit.WebhookEvent{
		event("room_finished", "RM_first"), // before any room_started: no sid to match
		event("room_started", "RM_first"),
		event("room_started", "RM_second"), // the sid is taken once
		event("room_finished", "RM_second"),
	} {
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, ev)); code != http.StatusOK {
			t.Fatalf("%s %s: HTTP %d", ev.GetEvent(), ev.GetRoom().GetSid(), code)
		}
		if s := status(); s != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE {
			t.Fatalf("after %s under %s: %v, want active", ev.GetEvent(), ev.GetRoom().GetSid(), s)
		}
	}
	if code := env.postWebhook(t, env.webhook, signedWebhook(t, event("room_finished", "RM_first"))); code != http.StatusOK {
		t.Fatalf("room_finished: HTTP %d", code)
	}
	if s := status(); s != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
		t.Errorf("after room_finished under the first room_started's sid: %v, want ended", s)
	}
}

func TestRoomServiceEndRoomRetriesDelete(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	user := env.newUser(t, "Ada")
	client := env.clients["connect"]
	created, err := client.CreateRoom(t.Context(), as(user, &parleyv1.CreateRoomRequest{Name: "r"}))
	if err != nil {
		t.Fatal(err)
	}
	env.lk.FailDeletes(2)
	if _, err := client.EndRoom(t.Context(), as(user, &parleyv1.EndRoomRequest{RoomId: created.Msg.GetRoom().GetId()})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the third delete attempt", func() bool { return len(env.lk.DeletedRooms()) == 1 })
}

func TestRoomServiceOthersRoomsAreNotFound(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	owner, other := env.newUser(t, "Ada"), env.newUser(t, "Eve")
	for proto, client := range env.clients {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			created, err := client.CreateRoom(ctx, as(owner, &parleyv1.CreateRoomRequest{Name: "private"}))
			if err != nil {
				t.Fatal(err)
			}
			id := created.Msg.GetRoom().GetId()
			_, err = client.GetRoom(ctx, as(other, &parleyv1.GetRoomRequest{RoomId: id}))
			wantCode(t, "GetRoom", err, connect.CodeNotFound)
			_, err = client.JoinRoom(ctx, as(other, &parleyv1.JoinRoomRequest{RoomId: id}))
			wantCode(t, "JoinRoom", err, connect.CodeNotFound)
			_, err = client.EndRoom(ctx, as(other, &parleyv1.EndRoomRequest{RoomId: id}))
			wantCode(t, "EndRoom", err, connect.CodeNotFound)
			list, err := client.ListRooms(ctx, as(other, &parleyv1.ListRoomsRequest{}))
			if err != nil || len(list.Msg.GetRooms()) != 0 {
				t.Errorf("ListRooms of another user = %v, %v", list, err)
			}
			// A room that does not exist answers the same.
			_, err = client.GetRoom(ctx, as(other, &parleyv1.GetRoomRequest{RoomId: uuid.NewString()}))
			wantCode(t, "GetRoom of no room", err, connect.CodeNotFound)

			got, err := client.GetRoom(ctx, as(owner, &parleyv1.GetRoomRequest{RoomId: id}))
			if err != nil || got.Msg.GetRoom().GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE {
				t.Errorf("the owner's room after another user's EndRoom: %v, %v", got, err)
			}
		})
	}
}

func TestRoomServiceRefusesAgents(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	owner := env.newUser(t, "Ada")
	agent := env.agent(t)
	for proto, client := range env.clients {
		t.Run(proto, func(t *testing.T) {
			ctx := t.Context()
			created, err := client.CreateRoom(ctx, as(owner, &parleyv1.CreateRoomRequest{Name: "r"}))
			if err != nil {
				t.Fatal(err)
			}
			id := created.Msg.GetRoom().GetId()
			_, err = client.CreateRoom(ctx, as(agent, &parleyv1.CreateRoomRequest{Name: "r"}))
			wantCode(t, "CreateRoom", err, connect.CodePermissionDenied)
			_, err = client.GetRoom(ctx, as(agent, &parleyv1.GetRoomRequest{RoomId: id}))
			wantCode(t, "GetRoom", err, connect.CodePermissionDenied)
			_, err = client.ListRooms(ctx, as(agent, &parleyv1.ListRoomsRequest{}))
			wantCode(t, "ListRooms", err, connect.CodePermissionDenied)
			_, err = client.JoinRoom(ctx, as(agent, &parleyv1.JoinRoomRequest{RoomId: id}))
			wantCode(t, "JoinRoom", err, connect.CodePermissionDenied)
			_, err = client.EndRoom(ctx, as(agent, &parleyv1.EndRoomRequest{RoomId: id}))
			wantCode(t, "EndRoom", err, connect.CodePermissionDenied)
			// Without the authentication interceptor's principal: refused too.
			_, err = client.ListRooms(ctx, connect.NewRequest(&parleyv1.ListRoomsRequest{}))
			wantCode(t, "ListRooms without a principal", err, connect.CodeUnauthenticated)
		})
	}
}

func TestRoomServiceListRooms(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	user := env.newUser(t, "Ada")
	client := env.clients["grpc"]
	ctx := t.Context()
	var want []string
	for _, name := range []string{"one", "two", "three"} {
		created, err := client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: name}))
		if err != nil {
			t.Fatal(err)
		}
		want = append([]string{created.Msg.GetRoom().GetId()}, want...)
	}
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("ListRooms does not end")
		}
		res, err := client.ListRooms(ctx, as(user, &parleyv1.ListRoomsRequest{PageSize: 2, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Msg.GetRooms() {
			got = append(got, r.GetId())
		}
		if token = res.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("ListRooms pages = %v, want %v (newest first)", got, want)
	}
	_, err := client.ListRooms(ctx, as(user, &parleyv1.ListRoomsRequest{PageToken: "garbage"}))
	wantCode(t, "ListRooms with a bad page token", err, connect.CodeInvalidArgument)
	_, err = client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "   "}))
	wantCode(t, "CreateRoom with a blank name", err, connect.CodeInvalidArgument)
}

func (env *roomTestEnv) postWebhook(t *testing.T, h http.Handler, req *http.Request) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

func signedWebhook(t *testing.T, ev *livekit.WebhookEvent) *http.Request {
	t.Helper()
	req, err := rtctest.WebhookRequest(t.Context(), "http://parley/livekit/webhook", roomTestKey, roomTestSecret, ev)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestWebhook(t *testing.T) {
	t.Parallel()
	env := newRoomTestEnv(t, "")
	user := env.newUser(t, "Ada")
	client := env.clients["connect"]
	ctx := t.Context()
	newRoom := func() *parleyv1.Room {
		created, err := client.CreateRoom(ctx, as(user, &parleyv1.CreateRoomRequest{Name: "r"}))
		if err != nil {
			t.Fatal(err)
		}
		return created.Msg.GetRoom()
	}
	status := func(r *parleyv1.Room) parleyv1.RoomStatus {
		got, err := client.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: r.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		return got.Msg.GetRoom().GetStatus()
	}
	// finished is LiveKit's room_finished for r, under the sid LiveKit
	// gave it when Parley created it.
	finished := func(r *parleyv1.Room, id string) *livekit.WebhookEvent {
		return &livekit.WebhookEvent{Id: id, Event: "room_finished", CreatedAt: time.Now().Unix(),
			Room: &livekit.Room{Name: r.GetLivekitRoom(), Sid: env.lk.RoomSID(r.GetLivekitRoom())}}
	}

	t.Run("refused", func(t *testing.T) {
		r := newRoom()
		ev := finished(r, "EV_refused")
		unsigned := signedWebhook(t, ev)
		unsigned.Header.Del("Authorization")
		badlySigned, _ := rtctest.WebhookRequest(ctx, "http://parley/livekit/webhook", roomTestKey, "not-the-secret-not-the-secret-not-it", ev)
		stale, _ := rtctest.StaleWebhookRequest(ctx, "http://parley/livekit/webhook", roomTestKey, roomTestSecret, ev, 10*time.Minute)
		for name, req := range map[string]*http.Request{"unsigned": unsigned, "badly signed": badlySigned, "stale": stale} {
			// Through the real server and route, as LiveKit would post it.
			req.URL.Scheme, req.URL.Host, req.Host, req.RequestURI = "http", env.url[len("http://"):], "", ""
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s webhook: HTTP %d, want 401", name, res.StatusCode)
			}
		}
		if s := status(r); s != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE {
			t.Errorf("room after refused webhooks: %v, want still active", s)
		}
		// The same event, signed, is then applied: nothing was recorded.
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, ev)); code != http.StatusOK {
			t.Fatalf("signed webhook: HTTP %d", code)
		}
		if s := status(r); s != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
			t.Errorf("room after a signed room_finished: %v, want ended", s)
		}
	})

	t.Run("once across replicas", func(t *testing.T) {
		r := newRoom()
		_, _, second := newRoomReplica(t, env.dbURL, env.lk.URL)
		replicas := []http.Handler{env.webhook, second}
		ev := finished(r, "EV_"+uuid.NewString())
		var wg sync.WaitGroup
		for i := range 4 {
			h := replicas[i%2]
			wg.Go(func() {
				if code := env.postWebhook(t, h, signedWebhook(t, ev)); code != http.StatusOK {
					t.Errorf("delivery %d: HTTP %d", i, code)
				}
			})
		}
		wg.Wait()
		var n int
		if err := env.db.DB.QueryRowContext(ctx, "SELECT count(*) FROM livekit_events WHERE id = $1", ev.GetId()).Scan(&n); err != nil || n != 1 {
			t.Errorf("event recorded %d times, %v", n, err)
		}
		got, err := client.GetRoom(ctx, as(user, &parleyv1.GetRoomRequest{RoomId: r.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		if g := got.Msg.GetRoom(); g.GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ENDED || g.GetEndedAt().AsTime().Unix() != ev.GetCreatedAt() {
			t.Errorf("room = %v, want ended at the event's time", g)
		}
	})

	t.Run("out of order", func(t *testing.T) {
		r := newRoom()
		at := time.Now().Unix()
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, finished(r, "EV_"+uuid.NewString()))); code != http.StatusOK {
			t.Fatalf("room_finished: HTTP %d", code)
		}
		// A late room_started (LiveKit re-created the room, under a new
		// sid, for a joiner holding an old token): the room stays ended
		// and LiveKit's is closed again.
		sid := env.lk.StartRoom(r.GetLivekitRoom())
		started := &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "room_started", CreatedAt: at - 60,
			Room: &livekit.Room{Name: r.GetLivekitRoom(), Sid: sid}}
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, started)); code != http.StatusOK {
			t.Fatalf("room_started: HTTP %d", code)
		}
		if s := status(r); s != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
			t.Errorf("room_started after room_finished: %v, want still ended", s)
		}
		eventually(t, "LiveKit to delete the re-created room", func() bool {
			for _, name := range env.lk.DeletedRooms() {
				if name == r.GetLivekitRoom() {
					return true
				}
			}
			return false
		})
	})

	t.Run("only the room with the name and sid", func(t *testing.T) {
		r, other := newRoom(), newRoom()
		refusedBefore := refusals(t, env.webhook, "room_finished", room.RefusedRoomMismatch)
		for name, lr := range map[string]*livekit.Room{
			"right name, wrong sid":          {Name: r.GetLivekitRoom(), Sid: "RM_forged"},
			"right name, no sid":             {Name: r.GetLivekitRoom()},
			"right name, another room's sid": {Name: r.GetLivekitRoom(), Sid: env.lk.RoomSID(other.GetLivekitRoom())},
		} {
			ev := &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "room_finished", CreatedAt: time.Now().Unix(), Room: lr}
			if code := env.postWebhook(t, env.webhook, signedWebhook(t, ev)); code != http.StatusOK {
				t.Errorf("%s: HTTP %d, want 200 (refused the same way as applied)", name, code)
			}
			if s := status(r); s != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE {
				t.Fatalf("%s: room_finished ended the room", name)
			}
		}
		if s := status(other); s != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE {
			t.Errorf("room_finished under another room's name ended it: %v", s)
		}
		if got := refusals(t, env.webhook, "room_finished", room.RefusedRoomMismatch) - refusedBefore; got != 3 {
			t.Errorf("refusals counted: %v, want 3", got)
		}
		// A participant under a wrong sid is not recorded either.
		joined := &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "participant_joined", Room: &livekit.Room{Name: r.GetLivekitRoom(), Sid: "RM_forged"},
			Participant: &livekit.ParticipantInfo{Sid: "PA_forged", Identity: "mallory"}}
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, joined)); code != http.StatusOK {
			t.Errorf("participant_joined: HTTP %d", code)
		}
		if ss, err := postgres.NewRoomStore(env.db).Sessions(ctx, uuid.MustParse(r.GetId())); err != nil || len(ss) != 0 {
			t.Errorf("sessions after a participant under a wrong sid: %+v, %v", ss, err)
		}
		if code := env.postWebhook(t, env.webhook, signedWebhook(t, finished(r, "EV_"+uuid.NewString()))); code != http.StatusOK {
			t.Fatalf("room_finished under the right sid: HTTP %d", code)
		}
		if s := status(r); s != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
			t.Errorf("room after room_finished under its name and sid: %v, want ended", s)
		}
	})

	t.Run("ignored", func(t *testing.T) {
		for _, ev := range []*livekit.WebhookEvent{
			{Id: "EV_" + uuid.NewString(), Event: "room_finished", Room: &livekit.Room{Name: "someone-elses-room"}},
			{Id: "EV_" + uuid.NewString(), Event: "track_published", Room: &livekit.Room{Name: "parley-" + uuid.NewString()}},
		} {
			if code := env.postWebhook(t, env.webhook, signedWebhook(t, ev)); code != http.StatusOK {
				b, _ := json.Marshal(ev)
				t.Errorf("event %s: HTTP %d", b, code)
			}
		}
	})
}
