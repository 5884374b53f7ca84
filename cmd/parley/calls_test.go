package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/livekit/protocol/livekit"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// TestCallFromWebhooks runs serve with a fake LiveKit and posts a call's
// webhooks to it as LiveKit might: shuffled, some twice, one posted
// concurrently with its duplicate. GetCall then shows the call as it
// happened, and the endpoint the caller registered receives one
// call.started and one call.ended, each verified by the Standard Webhooks
// reference library.
func TestCallFromWebhooks(t *testing.T) {
	lk := rtctest.NewServer(t, testLiveKitKey, testLiveKitSecret)
	env := webhookEnv(t)
	env["LIVEKIT_URL"] = lk.URL
	verifier := testenv.WebhookReceiver(t)
	s := startServer(t, env)
	ctx := context.Background()
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Email: "caller@example.com", Password: "correct horse battery"}))
	if err != nil {
		t.Fatal(err)
	}
	token := reg.Msg.GetTokens().GetAccessToken()
	received := receiveCallEvents(t, s, verifier, token)
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

	delivered := received.wait(t, 2)
	byType := map[string]room.CallEventData{}
	for _, e := range delivered {
		if _, twice := byType[e.Type]; twice {
			t.Fatalf("%s delivered twice (as different events): %+v", e.Type, delivered)
		}
		byType[e.Type] = e.Data
	}
	st, en := byType[webhook.CallStarted], byType[webhook.CallEnded]
	// Shuffled, the first event showing the call running may be a later
	// one than room_started: call.started tells the call as it stood.
	if st.CallID.String() != r.GetId() || st.StartedAt == nil || st.StartedAt.Before(base) || st.StartedAt.After(base.Add(41*time.Second)) {
		t.Errorf("call.started data = %+v", st)
	}
	if en.CallID.String() != r.GetId() || en.Status != "ended" || en.EndReason != "room_finished" || en.EndedAt == nil ||
		!en.EndedAt.Equal(base.Add(42*time.Second)) {
		t.Errorf("call.ended data = %+v", en)
	}
	// Nothing more comes: the duplicates and late events emitted nothing.
	time.Sleep(2 * time.Second)
	if got := received.wait(t, 2); len(got) != 2 {
		t.Errorf("received %+v, want exactly call.started and call.ended", got)
	}
}

// webhookEnv is serve's environment with outbound webhooks allowed to
// this test's receivers, on 127.0.0.1 over http.
func webhookEnv(t *testing.T) map[string]string {
	t.Helper()
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["PARLEY_WEBHOOK_ALLOW_HTTP"] = "true"
	env["PARLEY_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"
	return env
}

// callEventReceiver collects the events an endpoint receives, one per
// webhook-id.
type callEventReceiver struct {
	mu   sync.Mutex
	seen map[string]bool
	got  []receivedCallEvent
}

type receivedCallEvent struct {
	Type string
	Data room.CallEventData
	// Raw is the data as sent.
	Raw json.RawMessage `json:"-"`
}

// receiveCallEvents registers, for the user of token, an endpoint taking
// call.started and call.ended, and verifies each delivery to it with the
// reference library at verifier.
func receiveCallEvents(t *testing.T, s *server, verifier, token string) *callEventReceiver {
	t.Helper()
	return receiveEvents(t, s, verifier, token, webhook.CallStarted, webhook.CallEnded)
}

// receiveEvents registers, for the user of token, an endpoint taking
// types, and verifies each delivery to it with the reference library at
// verifier.
func receiveEvents(t *testing.T, s *server, verifier, token string, types ...string) *callEventReceiver {
	t.Helper()
	c := &callEventReceiver{seen: map[string]bool{}}
	var secret atomic.Pointer[webhook.Secret]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sec := secret.Load()
		if sec == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if err := testenv.VerifyWebhook(r.Context(), verifier, sec.Text(), r.Header, body); err != nil {
			t.Error(err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var (
			ev  receivedCallEvent
			raw struct {
				Data json.RawMessage `json:"data"`
			}
		)
		if err := errors.Join(json.Unmarshal(body, &ev), json.Unmarshal(body, &raw)); err != nil {
			t.Errorf("delivery %s: %v", body, err)
		}
		ev.Raw = raw.Data
		c.mu.Lock()
		if id := r.Header.Get("webhook-id"); !c.seen[id] {
			c.seen[id] = true
			c.got = append(c.got, ev)
		}
		c.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	created, err := parleyv1connect.NewWebhookServiceClient(http.DefaultClient, s.base).CreateEndpoint(t.Context(),
		bearer(connect.NewRequest(&parleyv1.CreateEndpointRequest{Url: srv.URL + "/hooks", EventTypes: types}), token))
	if err != nil {
		t.Fatal(err)
	}
	sec, err := webhook.ParseSecret(created.Msg.GetSecret())
	if err != nil {
		t.Fatal(err)
	}
	secret.Store(&sec)
	return c
}

// wait returns the events received once there are n, or fails after 30s.
func (c *callEventReceiver) wait(t *testing.T, n int) []receivedCallEvent {
	t.Helper()
	return c.until(t, fmt.Sprintf("%d events", n), func(got []receivedCallEvent) bool { return len(got) >= n })
}

// until returns the events received once done says they are all, or fails
// after 30s, saying it wanted what.
func (c *callEventReceiver) until(t *testing.T, what string, done func([]receivedCallEvent) bool) []receivedCallEvent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.mu.Lock()
		got := slices.Clone(c.got)
		c.mu.Unlock()
		if done(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %+v after 30s, want %s", got, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
