package rpc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

type testServer struct {
	*testAPI
	clients map[string]parleyv1connect.ConversationServiceClient
}

// newTestServer is the whole API, its watches tuned by opts, with a
// ConversationService client for each protocol.
func newTestServer(t *testing.T, opts watchSetup) *testServer {
	t.Helper()
	a := newTestAPI(t, apiOptions{watch: opts})
	return &testServer{testAPI: a, clients: clients(a, parleyv1connect.NewConversationServiceClient)}
}

func codeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

func forEachProtocol(t *testing.T, ts *testServer, f func(t *testing.T, c parleyv1connect.ConversationServiceClient)) {
	for name, c := range ts.clients {
		t.Run(name, func(t *testing.T) { f(t, c) })
	}
}

func TestConversationRPCFlow(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner, agentID := ts.user(t), ts.agent(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{Title: "hello"}))
		if err != nil {
			t.Fatal(err)
		}
		conv := created.Msg.GetConversation()
		if conv.GetUserId() != owner.String() || conv.GetTitle() != "hello" || conv.GetRoomId() != "" || conv.GetCreatedAt() == nil {
			t.Errorf("created %v", conv)
		}
		turn := &parleyv1.SaveTurnRequest{ConversationId: conv.GetId(), TurnId: "t-1", UserMessage: "hi", AssistantMessage: "hello!"}
		saved, err := c.SaveTurn(ctx, as(agentID, turn))
		if err != nil {
			t.Fatal(err)
		}
		msgs := saved.Msg.GetMessages()
		if saved.Msg.GetReplayed() || len(msgs) != 2 || msgs[0].GetSeq() != 1 || msgs[0].GetRole() != parleyv1.Role_ROLE_USER ||
			msgs[1].GetRole() != parleyv1.Role_ROLE_ASSISTANT || msgs[1].GetTurnId() != "t-1" || msgs[1].GetConversationId() != conv.GetId() {
			t.Errorf("SaveTurn = %v", saved.Msg)
		}
		again, err := c.SaveTurn(ctx, as(owner, turn))
		if err != nil || !again.Msg.GetReplayed() || again.Msg.GetMessages()[1].GetId() != msgs[1].GetId() {
			t.Errorf("replay = %v, %v", again.Msg, err)
		}
		turn.AssistantMessage = "different"
		if _, err := c.SaveTurn(ctx, as(owner, turn)); codeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("conflicting replay = %v, want already_exists", err)
		}
		if _, err := c.SaveTurn(ctx, as(owner, &parleyv1.SaveTurnRequest{ConversationId: conv.GetId(), UserMessage: "only user"})); err != nil {
			t.Fatal(err)
		}

		page, err := c.ListMessages(ctx, as(owner, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), PageSize: 2}))
		if err != nil {
			t.Fatal(err)
		}
		if got := page.Msg.GetMessages(); len(got) != 2 || got[0].GetSeq() != 3 || got[1].GetSeq() != 2 || page.Msg.GetNextPageToken() == "" || page.Msg.GetConversationId() != conv.GetId() {
			t.Errorf("first page = %v", page.Msg)
		}
		next, err := c.ListMessages(ctx, as(owner, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), PageSize: 2, PageToken: page.Msg.GetNextPageToken()}))
		if err != nil || len(next.Msg.GetMessages()) != 1 || next.Msg.GetMessages()[0].GetSeq() != 1 || next.Msg.GetNextPageToken() != "" {
			t.Errorf("second page = %v, %v", next.Msg, err)
		}
		oldest, err := c.ListMessages(ctx, as(agentID, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
		if err != nil || len(oldest.Msg.GetMessages()) != 3 || oldest.Msg.GetMessages()[0].GetSeq() != 1 {
			t.Errorf("oldest first = %v, %v", oldest.Msg, err)
		}
		if _, err := c.ListMessages(ctx, as(owner, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), PageToken: "garbage"})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("garbage token = %v", err)
		}
		if _, err := c.GetConversation(ctx, as(owner, &parleyv1.GetConversationRequest{ConversationId: "not-a-uuid"})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("malformed id = %v", err)
		}

		got, err := c.GetConversation(ctx, as(agentID, &parleyv1.GetConversationRequest{ConversationId: conv.GetId()}))
		if err != nil || got.Msg.GetConversation().GetLastSeq() != 3 || got.Msg.GetConversation().GetMessageCount() != 3 {
			t.Errorf("GetConversation = %v, %v", got, err)
		}
		list, err := c.ListConversations(ctx, as(owner, &parleyv1.ListConversationsRequest{}))
		if err != nil || len(list.Msg.GetConversations()) != 1 || list.Msg.GetConversations()[0].GetId() != conv.GetId() {
			t.Errorf("ListConversations = %v, %v", list, err)
		}
		if _, err := c.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv.GetId()})); codeOf(err) != connect.CodeUnimplemented {
			t.Errorf("ExportConversation = %v", err)
		}
		if _, err := c.DeleteConversation(ctx, as(owner, &parleyv1.DeleteConversationRequest{ConversationId: conv.GetId()})); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetConversation(ctx, as(owner, &parleyv1.GetConversationRequest{ConversationId: conv.GetId()})); codeOf(err) != connect.CodeNotFound {
			t.Errorf("after delete = %v", err)
		}
	})
}

// TestConversationRPCAccess: a second user gets not_found on every RPC of
// someone else's conversation; agents are refused the user-scoped RPCs.
func TestConversationRPCAccess(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx := t.Context()
		owner, stranger, agentID := ts.user(t), ts.user(t), ts.agent(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{Title: "mine"}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		if _, err := c.SaveTurn(ctx, as(owner, &parleyv1.SaveTurnRequest{ConversationId: id, TurnId: "t", UserMessage: "u"})); err != nil {
			t.Fatal(err)
		}

		watch := func(p caller) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			s, err := c.WatchMessages(ctx, as(p, &parleyv1.WatchMessagesRequest{ConversationId: id}))
			if err != nil {
				return err
			}
			defer s.Close()
			if !s.Receive() {
				return s.Err()
			}
			return nil
		}
		calls := map[string]func(p caller) error{
			"GetConversation": func(p caller) error {
				_, err := c.GetConversation(ctx, as(p, &parleyv1.GetConversationRequest{ConversationId: id}))
				return err
			},
			"DeleteConversation": func(p caller) error {
				_, err := c.DeleteConversation(ctx, as(p, &parleyv1.DeleteConversationRequest{ConversationId: id}))
				return err
			},
			"SaveTurn": func(p caller) error {
				_, err := c.SaveTurn(ctx, as(p, &parleyv1.SaveTurnRequest{ConversationId: id, UserMessage: "x"}))
				return err
			},
			"SaveTurn replay": func(p caller) error {
				_, err := c.SaveTurn(ctx, as(p, &parleyv1.SaveTurnRequest{ConversationId: id, TurnId: "t", UserMessage: "u"}))
				return err
			},
			"ListMessages": func(p caller) error {
				_, err := c.ListMessages(ctx, as(p, &parleyv1.ListMessagesRequest{ConversationId: id}))
				return err
			},
			"WatchMessages": watch,
		}
		for name, call := range calls {
			if err := call(stranger); codeOf(err) != connect.CodeNotFound {
				t.Errorf("%s by a second user = %v, want not_found", name, err)
			}
		}
		if list, err := c.ListConversations(ctx, as(stranger, &parleyv1.ListConversationsRequest{})); err != nil || len(list.Msg.GetConversations()) != 0 {
			t.Errorf("second user's ListConversations = %v, %v", list, err)
		}

		for _, name := range []string{"GetConversation", "SaveTurn", "SaveTurn replay", "ListMessages", "WatchMessages"} {
			if err := calls[name](agentID); err != nil {
				t.Errorf("agent %s = %v", name, err)
			}
		}
		denied := map[string]error{"DeleteConversation": calls["DeleteConversation"](agentID)}
		_, denied["CreateConversation"] = c.CreateConversation(ctx, as(agentID, &parleyv1.CreateConversationRequest{}))
		_, denied["ListConversations"] = c.ListConversations(ctx, as(agentID, &parleyv1.ListConversationsRequest{}))
		for name, err := range denied {
			if codeOf(err) != connect.CodePermissionDenied {
				t.Errorf("agent %s = %v, want permission_denied", name, err)
			}
		}
		if _, err := c.GetConversation(ctx, connect.NewRequest(&parleyv1.GetConversationRequest{ConversationId: id})); codeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("no principal = %v", err)
		}
	})
}

// watchResult is what a test's WatchMessages stream received.
type watchResult struct {
	seqs       []int64
	heartbeats int
	err        error
}

// watchUntil receives from s until it ends or stop says so.
func watchUntil(s *connect.ServerStreamForClient[parleyv1.WatchMessagesResponse], stop func(watchResult) bool) watchResult {
	var r watchResult
	for s.Receive() {
		if m := s.Msg().GetMessage(); m != nil {
			r.seqs = append(r.seqs, m.GetSeq())
		} else if s.Msg().GetHeartbeat() != nil {
			r.heartbeats++
		}
		if stop(r) {
			return r
		}
	}
	r.err = s.Err()
	return r
}

func TestWatchMessagesRPC(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{Heartbeat: 100 * time.Millisecond})
	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		owner := ts.user(t)
		created, err := c.CreateConversation(ctx, as(owner, &parleyv1.CreateConversationRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		save := func() {
			if _, err := c.SaveTurn(ctx, as(owner, &parleyv1.SaveTurnRequest{ConversationId: id, UserMessage: "u", AssistantMessage: "a"})); err != nil {
				t.Error(err)
			}
		}
		save()
		s, err := c.WatchMessages(ctx, as(owner, &parleyv1.WatchMessagesRequest{ConversationId: id, AfterSeq: 1}))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		// The stored message, then heartbeats while idle, then new ones.
		r := watchUntil(s, func(r watchResult) bool { return r.heartbeats >= 2 })
		saved := make(chan struct{})
		go func() { defer close(saved); save(); save() }()
		r2 := watchUntil(s, func(r watchResult) bool { return len(r.seqs) >= 4 })
		<-saved
		if got := append(r.seqs, r2.seqs...); !equalSeqs(got, 2, 6) || r.err != nil || r2.err != nil {
			t.Fatalf("seqs %v, heartbeats %d, errors %v %v", got, r.heartbeats, r.err, r2.err)
		}
		// Deleting the conversation ends the stream with not_found.
		deleted := make(chan error, 1)
		go func() {
			_, err := c.DeleteConversation(ctx, as(owner, &parleyv1.DeleteConversationRequest{ConversationId: id}))
			deleted <- err
		}()
		end := watchUntil(s, func(watchResult) bool { return false })
		if err := <-deleted; err != nil {
			t.Fatal(err)
		}
		if codeOf(end.err) != connect.CodeNotFound || len(end.seqs) != 0 {
			t.Errorf("after delete: %+v", end)
		}
	})
}

func equalSeqs(got []int64, from, to int64) bool {
	if len(got) != int(to-from+1) {
		return false
	}
	for i, s := range got {
		if s != from+int64(i) {
			return false
		}
	}
	return true
}

func TestWatchMessagesEndsOnExpiryAndDrain(t *testing.T) {
	t.Parallel()
	drain := make(chan struct{})
	ts := newTestServer(t, watchSetup{Heartbeat: time.Hour, Drain: drain})
	owner := ts.user(t)
	c := ts.clients["connect"]
	created, err := c.CreateConversation(t.Context(), as(owner, &parleyv1.CreateConversationRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetConversation().GetId()

	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		// exp is whole seconds: the token lives for one to two.
		req := as(ts.expiring(t, owner, 2*time.Second), &parleyv1.WatchMessagesRequest{ConversationId: id})
		s, err := c.WatchMessages(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		start := time.Now()
		end := watchUntil(s, func(watchResult) bool { return false })
		if codeOf(end.err) != connect.CodeUnauthenticated || time.Since(start) > 5*time.Second {
			t.Errorf("expiry: %+v after %v", end, time.Since(start))
		}
	})

	streams := map[string]*connect.ServerStreamForClient[parleyv1.WatchMessagesResponse]{}
	for name, c := range ts.clients {
		s, err := c.WatchMessages(t.Context(), as(owner, &parleyv1.WatchMessagesRequest{ConversationId: id}))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		streams[name] = s
	}
	time.Sleep(100 * time.Millisecond)
	close(drain)
	for name, s := range streams {
		end := watchUntil(s, func(watchResult) bool { return false })
		var ce *connect.Error
		if codeOf(end.err) != connect.CodeUnavailable || !errors.As(end.err, &ce) || !strings.Contains(ce.Message(), "reconnect") {
			t.Errorf("%s drain: %+v", name, end)
		}
	}
}

func TestWatchMessagesEndsWhenTheTokenIsRevoked(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{Heartbeat: 50 * time.Millisecond})
	owner := ts.user(t)
	created, err := ts.clients["connect"].CreateConversation(t.Context(), as(owner, &parleyv1.CreateConversationRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetConversation().GetId()
	streams := map[string]*connect.ServerStreamForClient[parleyv1.WatchMessagesResponse]{}
	for name, c := range ts.clients {
		s, err := c.WatchMessages(t.Context(), as(owner, &parleyv1.WatchMessagesRequest{ConversationId: id}))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		streams[name] = s
	}
	// Let each stream live through a few checks before the token goes.
	time.Sleep(200 * time.Millisecond)
	if err := ts.accounts.Logout(t.Context(), ts.principal(t, owner), ""); err != nil {
		t.Fatal(err)
	}
	for name, s := range streams {
		start := time.Now()
		end := watchUntil(s, func(watchResult) bool { return false })
		if codeOf(end.err) != connect.CodeUnauthenticated || time.Since(start) > 5*time.Second {
			t.Errorf("%s: %+v after %v, want unauthenticated", name, end, time.Since(start))
		}
	}
}

// TestWatchMessagesEndsWhenTheFamilyIsRevoked checks that a stream ends once
// the refresh family its token was issued from is revoked (reuse or Logout
// on any replica), and that a stream of another family goes on.
func TestWatchMessagesEndsWhenTheFamilyIsRevoked(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, watchSetup{Heartbeat: 50 * time.Millisecond})
	email := uuid.NewString() + "@example.com"
	u, doomed, err := ts.accounts.Register(t.Context(), email, "correct horse battery", "")
	if err != nil {
		t.Fatal(err)
	}
	_, kept, err := ts.accounts.Login(t.Context(), email, "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	owner := caller{UUID: u.ID, token: doomed.AccessToken}
	created, err := ts.clients["connect"].CreateConversation(t.Context(), as(owner, &parleyv1.CreateConversationRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	watch := func(c parleyv1connect.ConversationServiceClient, family account.TokenPair) *connect.ServerStreamForClient[parleyv1.WatchMessagesResponse] {
		req := as(caller{UUID: u.ID, token: family.AccessToken}, &parleyv1.WatchMessagesRequest{ConversationId: created.Msg.GetConversation().GetId()})
		s, err := c.WatchMessages(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	streams := map[string]*connect.ServerStreamForClient[parleyv1.WatchMessagesResponse]{}
	for name, c := range ts.clients {
		streams[name] = watch(c, doomed)
	}
	other := watch(ts.clients["connect"], kept)
	// Let each stream live through a few checks before the family goes,
	// revoked by the reuse of a spent refresh token; the streams' access
	// token itself is not revoked.
	time.Sleep(200 * time.Millisecond)
	if _, err := ts.accounts.Refresh(t.Context(), doomed.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.accounts.Refresh(t.Context(), doomed.RefreshToken); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("reuse of a spent refresh token = %v", err)
	}
	for name, s := range streams {
		start := time.Now()
		end := watchUntil(s, func(watchResult) bool { return false })
		if codeOf(end.err) != connect.CodeUnauthenticated || time.Since(start) > 5*time.Second {
			t.Errorf("%s: %+v after %v, want unauthenticated", name, end, time.Since(start))
		}
	}
	if r := watchUntil(other, func(r watchResult) bool { return r.heartbeats >= 3 }); r.err != nil {
		t.Errorf("the stream of another family ended: %v", r.err)
	}
}
