package rtc_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

const (
	testKey    = "APIparley"
	testSecret = "a-secret-of-at-least-thirty-two-characters"
)

func newClient(t *testing.T, cfg rtc.Config) *rtc.Client {
	t.Helper()
	if cfg.APIKey == "" {
		cfg.APIKey, cfg.APISecret = testKey, testSecret
	}
	c, err := rtc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func spec() room.Spec {
	return room.Spec{Name: "parley-" + uuid.NewString(), Metadata: `{"conversation_id":"` + uuid.NewString() + `"}`}
}

func TestCreateRoomOnTheWire(t *testing.T) {
	t.Parallel()
	for _, agent := range []string{"", "parley-agent"} {
		t.Run("agent="+agent, func(t *testing.T) {
			t.Parallel()
			lk := rtctest.NewServer(t, testKey, testSecret)
			c := newClient(t, rtc.Config{URL: lk.URL, AgentName: agent})
			s := spec()
			sid, err := c.CreateRoom(t.Context(), s)
			if err != nil {
				t.Fatalf("CreateRoom: %v", err)
			}
			if sid == "" || sid != lk.RoomSID(s.Name) {
				t.Errorf("CreateRoom returned sid %q, the server gave the room %q", sid, lk.RoomSID(s.Name))
			}
			created := lk.CreatedRooms()
			if len(created) != 1 || created[0].GetName() != s.Name || created[0].GetMetadata() != s.Metadata {
				t.Errorf("the server saw CreateRoom %v, want name %s with metadata %s", created, s.Name, s.Metadata)
			}
			dispatches := lk.Dispatches()
			if agent == "" {
				if len(dispatches) != 0 {
					t.Errorf("dispatches without an agent: %v", dispatches)
				}
				return
			}
			if len(dispatches) != 1 || dispatches[0].GetAgentName() != agent || dispatches[0].GetRoom() != s.Name || dispatches[0].GetMetadata() != s.Metadata {
				t.Errorf("the server saw dispatches %v, want %s into %s with metadata %s", dispatches, agent, s.Name, s.Metadata)
			}
		})
	}
}

func TestWrongSecretIsRefusedByTheServer(t *testing.T) {
	t.Parallel()
	lk := rtctest.NewServer(t, testKey, testSecret)
	c := newClient(t, rtc.Config{URL: lk.URL, APIKey: testKey, APISecret: "not-the-secret-not-the-secret-not-it"})
	if _, err := c.CreateRoom(t.Context(), spec()); err == nil {
		t.Fatal("CreateRoom signed with the wrong secret succeeded")
	}
	if lk.Unauthorized() != 1 || len(lk.CreatedRooms()) != 0 {
		t.Errorf("server refused %d requests and created %d rooms; want 1 and 0", lk.Unauthorized(), len(lk.CreatedRooms()))
	}
}

func TestUnreachableServerFailsWithinTimeout(t *testing.T) {
	t.Parallel()
	down := rtctest.NewServer(t, testKey, testSecret)
	down.Close()
	for name, url := range map[string]string{"down": down.URL, "black hole": rtctest.BlackHole(t)} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, rtc.Config{URL: url, AgentName: "a", Timeout: 300 * time.Millisecond})
			start := time.Now()
			if _, err := c.CreateRoom(t.Context(), spec()); err == nil {
				t.Error("CreateRoom succeeded against no server")
			}
			if _, err := c.Egress(t.Context(), "parley-x", "EG_1"); err == nil || errors.Is(err, room.ErrEgressNotFound) {
				t.Errorf("Egress against no server = %v, want an outage, not ErrEgressNotFound", err)
			}
			if err := c.DeleteRoom(t.Context(), "parley-x"); err == nil {
				t.Error("DeleteRoom succeeded against no server")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("three calls took %v with a 300ms timeout", d)
			}
		})
	}
}

func TestDeleteRoom(t *testing.T) {
	t.Parallel()
	lk := rtctest.NewServer(t, testKey, testSecret)
	c := newClient(t, rtc.Config{URL: lk.URL})
	s := spec()
	if _, err := c.CreateRoom(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	lk.FailDeletes(1)
	if err := c.DeleteRoom(t.Context(), s.Name); err == nil {
		t.Error("DeleteRoom hid the server's failure")
	}
	if err := c.DeleteRoom(t.Context(), s.Name); err != nil {
		t.Errorf("DeleteRoom: %v", err)
	}
	// LiveKit no longer knowing the room is what deleting wanted.
	if err := c.DeleteRoom(t.Context(), s.Name); err != nil {
		t.Errorf("DeleteRoom of a deleted room: %v", err)
	}
	if got := lk.DeletedRooms(); len(got) != 1 || got[0] != s.Name {
		t.Errorf("deleted rooms = %v", got)
	}
}

func TestJoinTokenClaims(t *testing.T) {
	t.Parallel()
	c := newClient(t, rtc.Config{URL: "ws://lk.internal:7880", PublicURL: "wss://lk.example.com", AgentName: "parley-agent", TokenTTL: 10 * time.Minute})
	s := spec()
	user := uuid.NewString()
	before := time.Now()
	join, err := c.JoinToken(s, room.Grant{Identity: user, Name: "Ada"})
	if err != nil {
		t.Fatal(err)
	}
	if join.URL != "wss://lk.example.com" {
		t.Errorf("URL = %q, want the public URL", join.URL)
	}
	if d := join.ExpiresAt.Sub(before); d < 10*time.Minute-2*time.Second || d > 10*time.Minute {
		t.Errorf("ExpiresAt is %v after issue, want the 10m TTL", d)
	}

	v, err := auth.ParseAPIToken(join.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Verify("some-other-secret-some-other-secret!"); err == nil {
		t.Error("token verifies with the wrong secret")
	}
	claims, grants, err := v.Verify(testSecret)
	if err != nil {
		t.Fatalf("token does not verify with the API secret: %v", err)
	}
	if v.APIKey() != testKey || grants.Identity != user || grants.Name != "Ada" {
		t.Errorf("key %q, identity %q, name %q", v.APIKey(), grants.Identity, grants.Name)
	}
	if exp := claims.ExpiresAt.Time; exp.Before(join.ExpiresAt) || exp.Sub(join.ExpiresAt) > 2*time.Second {
		t.Errorf("token exp %v, JoinInfo says %v", exp, join.ExpiresAt)
	}
	g := grants.Video
	if g == nil || !g.RoomJoin || g.Room != s.Name || !g.GetCanPublish() || !g.GetCanSubscribe() {
		t.Fatalf("video grant = %+v, want join, publish and subscribe in %s", g, s.Name)
	}
	if g.RoomCreate || g.RoomAdmin || g.RoomList || g.RoomRecord {
		t.Errorf("video grant carries admin rights: %+v", g)
	}
	cfg := grants.GetRoomConfiguration()
	if cfg.GetName() != s.Name || cfg.GetMetadata() != s.Metadata {
		t.Errorf("room config = %v, want name %s and metadata %s", cfg, s.Name, s.Metadata)
	}
	if a := cfg.GetAgents(); len(a) != 1 || a[0].GetAgentName() != "parley-agent" || a[0].GetMetadata() != s.Metadata {
		t.Errorf("room config agents = %v", a)
	}
}

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	c := newClient(t, rtc.Config{URL: "http://unused"})
	ev := &livekit.WebhookEvent{
		Id: "EV_1", Event: "participant_joined", CreatedAt: 1_900_000_000,
		Room:        &livekit.Room{Name: "parley-1", Sid: "RM_1"},
		Participant: &livekit.ParticipantInfo{Sid: "PA_1", Identity: "u1", Name: "Ada"},
	}
	ctx := t.Context()
	signed := func() *http.Request {
		r, err := rtctest.WebhookRequest(ctx, "http://parley/livekit/webhook", testKey, testSecret, ev)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	got, err := c.Verify(signed())
	if err != nil {
		t.Fatalf("Verify of a signed event: %v", err)
	}
	want := room.Event{ID: "EV_1", Kind: room.EventParticipantJoined, LiveKitRoom: "parley-1", RoomSID: "RM_1", At: time.Unix(1_900_000_000, 0).UTC(),
		Participant: room.Participant{SessionID: "PA_1", Identity: "u1", Name: "Ada", Kind: room.KindUser}}
	if got.ID != want.ID || got.Kind != want.Kind || got.LiveKitRoom != want.LiveKitRoom || got.RoomSID != want.RoomSID ||
		!got.At.Equal(want.At) || got.Participant != want.Participant {
		t.Errorf("Verify = %+v, want %+v", got, want)
	}

	unsigned := signed()
	unsigned.Header.Del("Authorization")
	wrongSecret, _ := rtctest.WebhookRequest(ctx, "http://parley/", testKey, "not-the-secret-not-the-secret-not-it", ev)
	wrongKey, _ := rtctest.WebhookRequest(ctx, "http://parley/", "APIother", testSecret, ev)
	stale, _ := rtctest.StaleWebhookRequest(ctx, "http://parley/", testKey, testSecret, ev, 10*time.Minute)
	// The signature covers the body: a changed body no longer matches it.
	tampered := signed()
	body, err := io.ReadAll(tampered.Body)
	if err != nil {
		t.Fatal(err)
	}
	tampered.Body = io.NopCloser(strings.NewReader(strings.Replace(string(body), "participant_joined", "room_finished", 1)))
	for name, r := range map[string]*http.Request{"unsigned": unsigned, "wrong secret": wrongSecret, "wrong key": wrongKey, "stale": stale, "tampered": tampered} {
		if _, err := c.Verify(r); !errors.Is(err, room.ErrInvalidWebhook) {
			t.Errorf("Verify(%s) = %v, want ErrInvalidWebhook", name, err)
		}
	}
}

// TestVerifyCallEvents checks what the call record takes from LiveKit's
// events: participant kinds, tracks and egress states with their times.
func TestVerifyCallEvents(t *testing.T) {
	t.Parallel()
	c := newClient(t, rtc.Config{URL: "http://unused"})
	verify := func(ev *livekit.WebhookEvent) room.Event {
		t.Helper()
		r, err := rtctest.WebhookRequest(t.Context(), "http://parley/livekit/webhook", testKey, testSecret, ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Verify(r)
		if err != nil {
			t.Fatalf("Verify(%s): %v", ev.GetEvent(), err)
		}
		return got
	}
	lkRoom := &livekit.Room{Name: "parley-1", Sid: "RM_1"}
	for _, tc := range []struct {
		p    *livekit.ParticipantInfo
		want room.ParticipantKind
	}{
		{&livekit.ParticipantInfo{Identity: "u1"}, room.KindUser},
		{&livekit.ParticipantInfo{Identity: "bot", Kind: livekit.ParticipantInfo_AGENT}, room.KindAgent},
		{&livekit.ParticipantInfo{Identity: "agent-AJ_1"}, room.KindAgent},
		{&livekit.ParticipantInfo{Identity: "sip_+1555", Kind: livekit.ParticipantInfo_SIP}, room.KindUser},
		{&livekit.ParticipantInfo{Identity: "EG_1", Kind: livekit.ParticipantInfo_EGRESS}, room.KindOther},
	} {
		tc.p.Sid = "PA_1"
		got := verify(&livekit.WebhookEvent{Id: "EV_1", Event: "participant_left", Room: lkRoom, Participant: tc.p})
		if got.Kind != room.EventParticipantLeft || got.Participant.Kind != tc.want {
			t.Errorf("participant %v: %+v, want kind %d", tc.p, got, tc.want)
		}
	}
	got := verify(&livekit.WebhookEvent{Id: "EV_2", Event: "track_published", Room: lkRoom, CreatedAt: 1_900_000_000,
		Participant: &livekit.ParticipantInfo{Sid: "PA_1", Identity: "u1"},
		Track:       &livekit.TrackInfo{Sid: "TR_1", Type: livekit.TrackType_AUDIO, Source: livekit.TrackSource_MICROPHONE}})
	if want := (room.Track{SID: "TR_1", Type: "audio", Source: "microphone", PublishedAt: time.Unix(1_900_000_000, 0).UTC()}); got.Kind != room.EventTrackPublished || got.Track != want || got.Participant.SessionID != "PA_1" {
		t.Errorf("track_published = %+v, want track %+v", got, want)
	}
	ns := int64(1_900_000_000_123_456_789)
	got = verify(&livekit.WebhookEvent{Id: "EV_3", Event: "egress_updated",
		EgressInfo: &livekit.EgressInfo{EgressId: "EG_1", RoomName: "parley-1", RoomId: "RM_1", Status: livekit.EgressStatus_EGRESS_ACTIVE, StartedAt: ns, UpdatedAt: ns + 1}})
	if want := (room.EgressState{Status: room.EgressActive, StartedAt: time.Unix(0, ns).UTC(), UpdatedAt: time.Unix(0, ns+1).UTC()}); got.Kind != room.EventEgressUpdated ||
		got.LiveKitRoom != "parley-1" || got.RoomSID != "RM_1" || got.EgressID != "EG_1" || got.Egress != want {
		t.Errorf("egress_updated = %+v, want state %+v", got, want)
	}
}

func TestVerifyEgressEnded(t *testing.T) {
	t.Parallel()
	c := newClient(t, rtc.Config{URL: "http://unused"})
	for _, tc := range []struct {
		status livekit.EgressStatus
		want   int
	}{
		{livekit.EgressStatus_EGRESS_COMPLETE, 1},
		{livekit.EgressStatus_EGRESS_LIMIT_REACHED, 1},
		{livekit.EgressStatus_EGRESS_FAILED, 0},
	} {
		ev := &livekit.WebhookEvent{Id: "EV_" + tc.status.String(), Event: "egress_ended", EgressInfo: &livekit.EgressInfo{
			EgressId: "EG_1", RoomName: "parley-1", RoomId: "RM_1", Status: tc.status,
			FileResults: []*livekit.FileInfo{{Filename: "recordings/parley-1/EG_1.MP4", Location: "https://acct.blob.core.windows.net/c/recordings/parley-1/EG_1.MP4", Size: 42}},
		}}
		r, err := rtctest.WebhookRequest(t.Context(), "http://parley/", testKey, testSecret, ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Verify(r)
		if err != nil {
			t.Fatal(err)
		}
		if got.Kind != room.EventEgressEnded || got.LiveKitRoom != "parley-1" || got.RoomSID != "RM_1" || got.EgressID != "EG_1" || len(got.Recordings) != tc.want {
			t.Errorf("%s: Verify = %+v", tc.status, got)
			continue
		}
		if tc.want == 0 {
			continue
		}
		want := room.Recording{EgressID: "EG_1", BlobName: "recordings/parley-1/EG_1.MP4", Location: ev.EgressInfo.FileResults[0].Location,
			Filename: "EG_1.MP4", SizeBytes: 42, ContentType: "video/mp4"}
		if got.Recordings[0] != want {
			t.Errorf("%s: recording = %+v, want %+v", tc.status, got.Recordings[0], want)
		}
	}
}

// TestEgressAsLiveKitSaysIt asks the server's Egress service, not the
// webhook, what an egress is and wrote.
func TestEgressAsLiveKitSaysIt(t *testing.T) {
	t.Parallel()
	lk := rtctest.NewServer(t, testKey, testSecret)
	c := newClient(t, rtc.Config{URL: lk.URL})
	files := []*livekit.FileInfo{{Filename: "recordings/parley-1/EG_1.mp4", Size: 42}}
	lk.AddEgress(&livekit.EgressInfo{EgressId: "EG_1", RoomName: "parley-1", RoomId: "RM_1", Status: livekit.EgressStatus_EGRESS_COMPLETE, FileResults: files})
	lk.AddEgress(&livekit.EgressInfo{EgressId: "EG_2", RoomName: "parley-2", RoomId: "RM_2", Status: livekit.EgressStatus_EGRESS_FAILED, FileResults: files})

	got, err := c.Egress(t.Context(), "parley-1", "EG_1")
	if err != nil {
		t.Fatal(err)
	}
	want := room.Recording{EgressID: "EG_1", BlobName: "recordings/parley-1/EG_1.mp4", Filename: "EG_1.mp4", SizeBytes: 42, ContentType: "video/mp4"}
	if got.ID != "EG_1" || got.RoomName != "parley-1" || got.RoomSID != "RM_1" || len(got.Recordings) != 1 || got.Recordings[0] != want {
		t.Errorf("Egress = %+v, want EG_1 of parley-1 (RM_1) with %+v", got, want)
	}
	if got, err := c.Egress(t.Context(), "parley-2", "EG_2"); err != nil || len(got.Recordings) != 0 {
		t.Errorf("failed egress = %+v, %v; want no recordings", got, err)
	}
	for _, q := range [][2]string{{"parley-2", "EG_1"}, {"parley-1", "EG_9"}} {
		if _, err := c.Egress(t.Context(), q[0], q[1]); !errors.Is(err, room.ErrEgressNotFound) {
			t.Errorf("Egress(%s, %s) = %v, want ErrEgressNotFound", q[0], q[1], err)
		}
	}
	bad := newClient(t, rtc.Config{URL: lk.URL, APIKey: testKey, APISecret: "not-the-secret-not-the-secret-not-it"})
	if _, err := bad.Egress(t.Context(), "parley-1", "EG_1"); err == nil || errors.Is(err, room.ErrEgressNotFound) {
		t.Errorf("Egress with the wrong secret = %v, want the server's refusal", err)
	}
}

// TestRealLiveKit runs the adapter against a real server, e.g.
// `livekit-server --dev` (key devkey, secret secret). It is opt-in: no
// LiveKit server can be built on every machine.
func TestRealLiveKit(t *testing.T) {
	url := os.Getenv("LIVEKIT_URL")
	if url == "" {
		t.Skip("LIVEKIT_URL is not set; set it (and LIVEKIT_API_KEY, LIVEKIT_API_SECRET) to run against a real LiveKit server")
	}
	key, secret := os.Getenv("LIVEKIT_API_KEY"), os.Getenv("LIVEKIT_API_SECRET")
	if key == "" {
		key, secret = "devkey", "secret"
	}
	const agent = "parley-test-agent"
	c := newClient(t, rtc.Config{URL: url, APIKey: key, APISecret: secret, AgentName: agent, Timeout: 5 * time.Second})
	s := spec()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	sid, err := c.CreateRoom(ctx, s)
	if err != nil {
		t.Fatalf("CreateRoom: %v", err)
	}
	admin := lksdk.NewRoomServiceClient(url, key, secret)
	list, err := admin.ListRooms(ctx, &livekit.ListRoomsRequest{Names: []string{s.Name}})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetRooms()) != 1 || list.GetRooms()[0].GetMetadata() != s.Metadata || list.GetRooms()[0].GetSid() != sid {
		t.Errorf("server lists %v, want %s (sid %s) with metadata %s", list.GetRooms(), s.Name, sid, s.Metadata)
	}
	if _, err := c.Egress(ctx, s.Name, "EG_none"); !errors.Is(err, room.ErrEgressNotFound) {
		t.Errorf("Egress of an egress that never was: %v, want ErrEgressNotFound", err)
	}
	var md struct {
		ConversationID string `json:"conversation_id"`
	}
	if err := json.Unmarshal([]byte(list.GetRooms()[0].GetMetadata()), &md); err != nil || md.ConversationID == "" {
		t.Errorf("metadata %q: %v", list.GetRooms()[0].GetMetadata(), err)
	}
	dispatches, err := lksdk.NewAgentDispatchServiceClient(url, key, secret).ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: s.Name})
	if err != nil {
		t.Fatal(err)
	}
	if d := dispatches.GetAgentDispatches(); len(d) != 1 || d[0].GetAgentName() != agent || d[0].GetMetadata() != s.Metadata {
		t.Errorf("server lists dispatches %v, want %s with metadata %s", d, agent, s.Metadata)
	}
	if _, err := c.JoinToken(s, room.Grant{Identity: uuid.NewString(), Name: "Ada"}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRoom(ctx, s.Name); err != nil {
		t.Fatalf("DeleteRoom: %v", err)
	}
	list, err = admin.ListRooms(ctx, &livekit.ListRoomsRequest{Names: []string{s.Name}})
	if err != nil || len(list.GetRooms()) != 0 {
		t.Errorf("after DeleteRoom the server lists %v, %v", list.GetRooms(), err)
	}
}
