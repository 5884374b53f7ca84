package rpc

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/cache"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/revocation"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/valkeypubsub"
)

// Test principals travel in headers, read by testPrincipals in place of the
// real authentication interceptor.
const (
	testUserHeader    = "X-Test-User"
	testAgentHeader   = "X-Test-Agent"
	testExpiresHeader = "X-Test-Expires"
	testFamilyHeader  = "X-Test-Family"
)

type testPrincipals struct{}

func (testPrincipals) principal(h http.Header) (auth.Principal, bool) {
	p := auth.Principal{TokenID: "test", ExpiresAt: time.Now().Add(time.Hour)}
	if exp, err := time.Parse(time.RFC3339Nano, h.Get(testExpiresHeader)); err == nil {
		p.ExpiresAt = exp
	}
	if family, err := uuid.Parse(h.Get(testFamilyHeader)); err == nil {
		p.FamilyID = family
	}
	if id, err := uuid.Parse(h.Get(testUserHeader)); err == nil {
		p.ID, p.Kind = id, auth.KindUser
		return p, true
	}
	if id, err := uuid.Parse(h.Get(testAgentHeader)); err == nil {
		p.ID, p.Kind = id, auth.KindAgent
		return p, true
	}
	return p, false
}

func (tp testPrincipals) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if p, ok := tp.principal(req.Header()); ok {
			ctx = auth.WithPrincipal(ctx, p)
		}
		return next(ctx, req)
	}
}

func (testPrincipals) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (tp testPrincipals) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if p, ok := tp.principal(conn.RequestHeader()); ok {
			ctx = auth.WithPrincipal(ctx, p)
		}
		return next(ctx, conn)
	}
}

// watchSetup tunes a test server's watches: the heartbeat on the wire, which
// is also how often a watch asks sessions, a channel whose closing drains
// the server, and the sessions (nil: never asked).
type watchSetup struct {
	Heartbeat time.Duration
	Drain     chan struct{}
	Sessions  conversation.Sessions
}

// sessionsFunc is a conversation.Sessions answering with a function.
type sessionsFunc func(ctx context.Context, p auth.Principal) error

func (f sessionsFunc) CheckRevoked(ctx context.Context, p auth.Principal) error { return f(ctx, p) }

type testServer struct {
	url     string
	db      *bun.DB
	clients map[string]parleyv1connect.ConversationServiceClient
}

// newTestServer serves a ConversationServer over h2c, backed by a new
// database and the shared Valkey.
func newTestServer(t *testing.T, opts watchSetup) *testServer {
	t.Helper()
	db := testenv.DB(t)
	log := slog.New(slog.DiscardHandler)
	store := postgres.NewConversationStore(db)
	vc := testenv.ValkeyClient(t, testenv.ValkeyURL(t))
	pages, err := cache.NewPages(vc, time.Minute, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	hub := conversation.NewHub(store, log)
	notifier := valkeypubsub.New(vc, hub, 500*time.Millisecond, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); notifier.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if opts.Drain != nil {
		go func() {
			select {
			case <-opts.Drain:
				hub.Drain()
			case <-ctx.Done():
			}
		}()
	}
	svc := conversation.NewService(store, conversation.Options{Cache: pages, Notifier: notifier, Hub: hub, Log: log,
		Sessions: opts.Sessions, SessionCheck: opts.Heartbeat})

	mux := http.NewServeMux()
	mux.Handle(parleyv1connect.NewConversationServiceHandler(NewConversationServer(svc, WatchOptions{Heartbeat: opts.Heartbeat}, log), connect.WithInterceptors(testPrincipals{})))
	url, httpClient := serveH2C(t, mux)
	ts := &testServer{url: url, db: db, clients: map[string]parleyv1connect.ConversationServiceClient{
		"connect": parleyv1connect.NewConversationServiceClient(httpClient, url),
		"grpc":    parleyv1connect.NewConversationServiceClient(httpClient, url, connect.WithGRPC()),
		"grpcweb": parleyv1connect.NewConversationServiceClient(httpClient, url, connect.WithGRPCWeb()),
	}}
	return ts
}

func (ts *testServer) user(t *testing.T) uuid.UUID {
	t.Helper()
	id := uuid.New()
	if _, err := ts.db.ExecContext(t.Context(),
		"INSERT INTO users (id, email, display_name, password_hash) VALUES (?, ?, 'Tester', 'x')", id, id.String()+"@example.com"); err != nil {
		t.Fatal(err)
	}
	return id
}

// as returns a request for msg made by the user (or agent) id.
func as[T any](id uuid.UUID, agent bool, msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if agent {
		req.Header().Set(testAgentHeader, id.String())
	} else {
		req.Header().Set(testUserHeader, id.String())
	}
	return req
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
		owner, agentID := ts.user(t), uuid.New()
		created, err := c.CreateConversation(ctx, as(owner, false, &parleyv1.CreateConversationRequest{Title: "hello"}))
		if err != nil {
			t.Fatal(err)
		}
		conv := created.Msg.GetConversation()
		if conv.GetUserId() != owner.String() || conv.GetTitle() != "hello" || conv.GetRoomId() != "" || conv.GetCreatedAt() == nil {
			t.Errorf("created %v", conv)
		}
		turn := &parleyv1.SaveTurnRequest{ConversationId: conv.GetId(), TurnId: "t-1", UserMessage: "hi", AssistantMessage: "hello!"}
		saved, err := c.SaveTurn(ctx, as(agentID, true, turn))
		if err != nil {
			t.Fatal(err)
		}
		msgs := saved.Msg.GetMessages()
		if saved.Msg.GetReplayed() || len(msgs) != 2 || msgs[0].GetSeq() != 1 || msgs[0].GetRole() != parleyv1.Role_ROLE_USER ||
			msgs[1].GetRole() != parleyv1.Role_ROLE_ASSISTANT || msgs[1].GetTurnId() != "t-1" || msgs[1].GetConversationId() != conv.GetId() {
			t.Errorf("SaveTurn = %v", saved.Msg)
		}
		again, err := c.SaveTurn(ctx, as(owner, false, turn))
		if err != nil || !again.Msg.GetReplayed() || again.Msg.GetMessages()[1].GetId() != msgs[1].GetId() {
			t.Errorf("replay = %v, %v", again.Msg, err)
		}
		turn.AssistantMessage = "different"
		if _, err := c.SaveTurn(ctx, as(owner, false, turn)); codeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("conflicting replay = %v, want already_exists", err)
		}
		if _, err := c.SaveTurn(ctx, as(owner, false, &parleyv1.SaveTurnRequest{ConversationId: conv.GetId(), UserMessage: "only user"})); err != nil {
			t.Fatal(err)
		}

		page, err := c.ListMessages(ctx, as(owner, false, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), PageSize: 2}))
		if err != nil {
			t.Fatal(err)
		}
		if got := page.Msg.GetMessages(); len(got) != 2 || got[0].GetSeq() != 3 || got[1].GetSeq() != 2 || page.Msg.GetNextPageToken() == "" || page.Msg.GetConversationId() != conv.GetId() {
			t.Errorf("first page = %v", page.Msg)
		}
		next, err := c.ListMessages(ctx, as(owner, false, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), PageSize: 2, PageToken: page.Msg.GetNextPageToken()}))
		if err != nil || len(next.Msg.GetMessages()) != 1 || next.Msg.GetMessages()[0].GetSeq() != 1 || next.Msg.GetNextPageToken() != "" {
			t.Errorf("second page = %v, %v", next.Msg, err)
		}
		oldest, err := c.ListMessages(ctx, as(agentID, true, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
		if err != nil || len(oldest.Msg.GetMessages()) != 3 || oldest.Msg.GetMessages()[0].GetSeq() != 1 {
			t.Errorf("oldest first = %v, %v", oldest.Msg, err)
		}
		if _, err := c.ListMessages(ctx, as(owner, false, &parleyv1.ListMessagesRequest{ConversationId: conv.GetId(), PageToken: "garbage"})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("garbage token = %v", err)
		}
		if _, err := c.GetConversation(ctx, as(owner, false, &parleyv1.GetConversationRequest{ConversationId: "not-a-uuid"})); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("malformed id = %v", err)
		}

		got, err := c.GetConversation(ctx, as(agentID, true, &parleyv1.GetConversationRequest{ConversationId: conv.GetId()}))
		if err != nil || got.Msg.GetConversation().GetLastSeq() != 3 || got.Msg.GetConversation().GetMessageCount() != 3 {
			t.Errorf("GetConversation = %v, %v", got, err)
		}
		list, err := c.ListConversations(ctx, as(owner, false, &parleyv1.ListConversationsRequest{}))
		if err != nil || len(list.Msg.GetConversations()) != 1 || list.Msg.GetConversations()[0].GetId() != conv.GetId() {
			t.Errorf("ListConversations = %v, %v", list, err)
		}
		if _, err := c.ExportConversation(ctx, as(owner, false, &parleyv1.ExportConversationRequest{ConversationId: conv.GetId()})); codeOf(err) != connect.CodeUnimplemented {
			t.Errorf("ExportConversation = %v", err)
		}
		if _, err := c.DeleteConversation(ctx, as(owner, false, &parleyv1.DeleteConversationRequest{ConversationId: conv.GetId()})); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetConversation(ctx, as(owner, false, &parleyv1.GetConversationRequest{ConversationId: conv.GetId()})); codeOf(err) != connect.CodeNotFound {
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
		owner, stranger, agentID := ts.user(t), ts.user(t), uuid.New()
		created, err := c.CreateConversation(ctx, as(owner, false, &parleyv1.CreateConversationRequest{Title: "mine"}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		if _, err := c.SaveTurn(ctx, as(owner, false, &parleyv1.SaveTurnRequest{ConversationId: id, TurnId: "t", UserMessage: "u"})); err != nil {
			t.Fatal(err)
		}

		watch := func(p uuid.UUID, agent bool) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			s, err := c.WatchMessages(ctx, as(p, agent, &parleyv1.WatchMessagesRequest{ConversationId: id}))
			if err != nil {
				return err
			}
			defer s.Close()
			if !s.Receive() {
				return s.Err()
			}
			return nil
		}
		calls := map[string]func(p uuid.UUID, agent bool) error{
			"GetConversation": func(p uuid.UUID, agent bool) error {
				_, err := c.GetConversation(ctx, as(p, agent, &parleyv1.GetConversationRequest{ConversationId: id}))
				return err
			},
			"DeleteConversation": func(p uuid.UUID, agent bool) error {
				_, err := c.DeleteConversation(ctx, as(p, agent, &parleyv1.DeleteConversationRequest{ConversationId: id}))
				return err
			},
			"SaveTurn": func(p uuid.UUID, agent bool) error {
				_, err := c.SaveTurn(ctx, as(p, agent, &parleyv1.SaveTurnRequest{ConversationId: id, UserMessage: "x"}))
				return err
			},
			"SaveTurn replay": func(p uuid.UUID, agent bool) error {
				_, err := c.SaveTurn(ctx, as(p, agent, &parleyv1.SaveTurnRequest{ConversationId: id, TurnId: "t", UserMessage: "u"}))
				return err
			},
			"ListMessages": func(p uuid.UUID, agent bool) error {
				_, err := c.ListMessages(ctx, as(p, agent, &parleyv1.ListMessagesRequest{ConversationId: id}))
				return err
			},
			"WatchMessages": watch,
		}
		for name, call := range calls {
			if err := call(stranger, false); codeOf(err) != connect.CodeNotFound {
				t.Errorf("%s by a second user = %v, want not_found", name, err)
			}
		}
		if list, err := c.ListConversations(ctx, as(stranger, false, &parleyv1.ListConversationsRequest{})); err != nil || len(list.Msg.GetConversations()) != 0 {
			t.Errorf("second user's ListConversations = %v, %v", list, err)
		}

		for _, name := range []string{"GetConversation", "SaveTurn", "SaveTurn replay", "ListMessages", "WatchMessages"} {
			if err := calls[name](agentID, true); err != nil {
				t.Errorf("agent %s = %v", name, err)
			}
		}
		denied := map[string]error{"DeleteConversation": calls["DeleteConversation"](agentID, true)}
		_, denied["CreateConversation"] = c.CreateConversation(ctx, as(agentID, true, &parleyv1.CreateConversationRequest{}))
		_, denied["ListConversations"] = c.ListConversations(ctx, as(agentID, true, &parleyv1.ListConversationsRequest{}))
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
		created, err := c.CreateConversation(ctx, as(owner, false, &parleyv1.CreateConversationRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		id := created.Msg.GetConversation().GetId()
		save := func() {
			if _, err := c.SaveTurn(ctx, as(owner, false, &parleyv1.SaveTurnRequest{ConversationId: id, UserMessage: "u", AssistantMessage: "a"})); err != nil {
				t.Error(err)
			}
		}
		save()
		s, err := c.WatchMessages(ctx, as(owner, false, &parleyv1.WatchMessagesRequest{ConversationId: id, AfterSeq: 1}))
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
			_, err := c.DeleteConversation(ctx, as(owner, false, &parleyv1.DeleteConversationRequest{ConversationId: id}))
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
	created, err := c.CreateConversation(t.Context(), as(owner, false, &parleyv1.CreateConversationRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetConversation().GetId()

	forEachProtocol(t, ts, func(t *testing.T, c parleyv1connect.ConversationServiceClient) {
		req := as(owner, false, &parleyv1.WatchMessagesRequest{ConversationId: id})
		req.Header().Set(testExpiresHeader, time.Now().Add(300*time.Millisecond).Format(time.RFC3339Nano))
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
		s, err := c.WatchMessages(t.Context(), as(owner, false, &parleyv1.WatchMessagesRequest{ConversationId: id}))
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
	var revoked atomic.Bool
	ts := newTestServer(t, watchSetup{Heartbeat: 50 * time.Millisecond, Sessions: sessionsFunc(func(context.Context, auth.Principal) error {
		if revoked.Load() {
			return auth.ErrUnauthenticated
		}
		return nil
	})})
	owner := ts.user(t)
	created, err := ts.clients["connect"].CreateConversation(t.Context(), as(owner, false, &parleyv1.CreateConversationRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetConversation().GetId()
	streams := map[string]*connect.ServerStreamForClient[parleyv1.WatchMessagesResponse]{}
	for name, c := range ts.clients {
		s, err := c.WatchMessages(t.Context(), as(owner, false, &parleyv1.WatchMessagesRequest{ConversationId: id}))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		streams[name] = s
	}
	// Let each stream live through a few checks before the token goes.
	time.Sleep(200 * time.Millisecond)
	revoked.Store(true)
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
	accounts := postgres.NewAccountStore(testenv.DB(t))
	revoked := revocation.New(testenv.ValkeyClient(t, testenv.ValkeyURL(t)), accounts,
		revocation.Options{KeyPrefix: "test:" + uuid.NewString() + ":revoked:"})
	t.Cleanup(revoked.Close)
	ts := newTestServer(t, watchSetup{Heartbeat: 50 * time.Millisecond, Sessions: account.NewService(accounts, nil, revoked, account.Options{})})
	owner := ts.user(t)
	u, err := accounts.CreateUser(t.Context(), account.User{ID: owner, Email: uuid.NewString() + "@example.com", DisplayName: "x"}, "h")
	if err != nil {
		t.Fatal(err)
	}
	signIn := func(name string) account.RefreshToken {
		rt := account.RefreshToken{ID: uuid.New(), Hash: []byte(name), UserID: u.ID, FamilyID: uuid.New(),
			ExpiresAt: time.Now().Add(time.Hour), AccessExpiresAt: time.Now().Add(time.Hour)}
		if err := accounts.CreateRefreshToken(t.Context(), rt); err != nil {
			t.Fatal(err)
		}
		return rt
	}
	doomed, kept := signIn("doomed"), signIn("kept")
	created, err := ts.clients["connect"].CreateConversation(t.Context(), as(owner, false, &parleyv1.CreateConversationRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	watch := func(c parleyv1connect.ConversationServiceClient, family uuid.UUID) *connect.ServerStreamForClient[parleyv1.WatchMessagesResponse] {
		req := as(owner, false, &parleyv1.WatchMessagesRequest{ConversationId: created.Msg.GetConversation().GetId()})
		req.Header().Set(testFamilyHeader, family.String())
		s, err := c.WatchMessages(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	streams := map[string]*connect.ServerStreamForClient[parleyv1.WatchMessagesResponse]{}
	for name, c := range ts.clients {
		streams[name] = watch(c, doomed.FamilyID)
	}
	other := watch(ts.clients["connect"], kept.FamilyID)
	// Let each stream live through a few checks before the family goes,
	// as account.Service revokes it: the store, then the cache.
	time.Sleep(200 * time.Millisecond)
	rf, ok, err := accounts.RevokeRefreshFamily(t.Context(), doomed.Hash, u.ID, time.Now())
	if err != nil || !ok {
		t.Fatalf("RevokeRefreshFamily = %v, %v", ok, err)
	}
	if err := revoked.RevokeFamily(t.Context(), rf.ID, rf.ExpiresAt); err != nil {
		t.Fatal(err)
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
