package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/livekit/protocol/livekit"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestCallFromWebhooks runs serve with a fake LiveKit and posts a call's
// webhooks to it as LiveKit might: shuffled, some twice, one posted
// concurrently with its duplicate. GetCall then shows the call as it
// happened.
func TestCallFromWebhooks(t *testing.T) {
	lk := rtctest.NewServer(t, testLiveKitKey, testLiveKitSecret)
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["LIVEKIT_URL"] = lk.URL
	s := startServer(t, env)
	ctx := context.Background()
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Email: "caller@example.com", Password: "correct horse battery"}))
	if err != nil {
		t.Fatal(err)
	}
	token := reg.Msg.GetTokens().GetAccessToken()
	created, err := parleyv1connect.NewRoomServiceClient(http.DefaultClient, s.base).CreateRoom(ctx,
		bearer(connect.NewRequest(&parleyv1.CreateRoomRequest{Name: "support line"}), token))
	if err != nil {
		t.Fatal(err)
	}
	r := created.Msg.GetRoom()
	lkRoom := &livekit.Room{Name: r.GetLivekitRoom(), Sid: lk.RoomSID(r.GetLivekitRoom())}
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	user := &livekit.ParticipantInfo{Sid: "PA_user", Identity: reg.Msg.GetUser().GetId(), Name: "Caller"}
	agent := &livekit.ParticipantInfo{Sid: "PA_agent", Identity: "agent-AJ_1", Kind: livekit.ParticipantInfo_AGENT}
	ev := func(id, kind string, sec int64, p *livekit.ParticipantInfo) *livekit.WebhookEvent {
		return &livekit.WebhookEvent{Id: id, Event: kind, Room: lkRoom, Participant: p, CreatedAt: base.Unix() + sec}
	}
	events := []*livekit.WebhookEvent{
		ev("EV_started", "room_started", 0, nil),
		ev("EV_user_joined", "participant_joined", 1, user),
		ev("EV_agent_joined", "participant_joined", 2, agent),
		ev("EV_user_left", "participant_left", 40, user),
		ev("EV_agent_left", "participant_left", 41, agent),
		ev("EV_finished", "room_finished", 42, nil),
	}
	rng := rand.New(rand.NewPCG(16, 1))
	order := append(rng.Perm(len(events)), 0, 5, 3)
	post := func(e *livekit.WebhookEvent) int {
		req, err := rtctest.WebhookRequest(ctx, s.base+"/livekit/webhook", testLiveKitKey, testLiveKitSecret, e)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	codes := make(chan int, 2)
	go func() { codes <- post(events[order[0]]) }()
	go func() { codes <- post(events[order[0]]) }()
	for range 2 {
		if code := <-codes; code != http.StatusOK {
			t.Fatalf("concurrent duplicate webhook: HTTP %d", code)
		}
	}
	for _, i := range order[1:] {
		if code := post(events[i]); code != http.StatusOK {
			t.Fatalf("webhook %s: HTTP %d", events[i].GetId(), code)
		}
	}

	got, err := parleyv1connect.NewCallServiceClient(http.DefaultClient, s.base).GetCall(ctx,
		bearer(connect.NewRequest(&parleyv1.GetCallRequest{CallId: r.GetId()}), token))
	if err != nil {
		t.Fatal(err)
	}
	c := got.Msg.GetCall()
	if c.GetStatus() != parleyv1.CallStatus_CALL_STATUS_ENDED || !c.GetStartedAt().AsTime().Equal(base) ||
		!c.GetEndedAt().AsTime().Equal(base.Add(42*time.Second)) || len(c.GetParticipants()) != 2 {
		t.Fatalf("call after webhooks in order %v = %v", order, c)
	}
	for _, p := range c.GetParticipants() {
		wantKind, joined, left := parleyv1.ParticipantKind_PARTICIPANT_KIND_USER, 1, 40
		if p.GetSessionId() == "PA_agent" {
			wantKind, joined, left = parleyv1.ParticipantKind_PARTICIPANT_KIND_AGENT, 2, 41
		}
		if p.GetKind() != wantKind || !p.GetJoinedAt().AsTime().Equal(base.Add(time.Duration(joined)*time.Second)) ||
			!p.GetLeftAt().AsTime().Equal(base.Add(time.Duration(left)*time.Second)) {
			t.Errorf("participant = %v", p)
		}
	}
}
