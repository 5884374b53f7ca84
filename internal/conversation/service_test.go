package conversation_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/cache"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/valkeypubsub"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// testRecheck is the replicas' re-check period: short, so tests that lose
// notifications on purpose finish quickly.
const testRecheck = 300 * time.Millisecond

// replica is one Parley process's conversation stack: its own pool, Valkey
// client, cache, hub and Valkey subscription.
type replica struct {
	svc   *conversation.Service
	db    *bun.DB
	store *postgres.ConversationStore
	hub   *conversation.Hub
	reg   *prometheus.Registry
}

func newReplica(t testing.TB, dbURL, valkeyURL string) *replica {
	t.Helper()
	db, err := postgres.Open(context.Background(), dbURL, postgres.Options{MaxOpenConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.DiscardHandler)
	store := postgres.NewConversationStore(db)
	vc := testenv.ValkeyClient(t, valkeyURL)
	reg := prometheus.NewRegistry()
	pages, err := cache.NewPages(vc, time.Minute, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	hub := conversation.NewHub(store, log)
	notifier := valkeypubsub.New(vc, hub, testRecheck, log)
	itemHub := conversation.NewItemHub(store, log)
	itemNotifier := valkeypubsub.NewItems(vc, itemHub, testRecheck, log)
	ctx, cancel := context.WithCancel(context.Background())
	var done sync.WaitGroup
	done.Go(func() { notifier.Run(ctx) })
	done.Go(func() { itemNotifier.Run(ctx) })
	t.Cleanup(func() { cancel(); done.Wait() })
	svc := conversation.NewService(store, conversation.Options{Cache: pages, Notifier: notifier, Hub: hub,
		ItemHub: itemHub, ItemNotifier: itemNotifier, Log: log})
	return &replica{svc: svc, db: db, store: store, hub: hub, reg: reg}
}

// newReplicas starts n replicas over one new database and valkeyURL (the
// shared test server when "").
func newReplicas(t testing.TB, n int, valkeyURL string) []*replica {
	t.Helper()
	dbURL := testenv.DatabaseURL(t)
	if valkeyURL == "" {
		valkeyURL = testenv.ValkeyURL(t)
	}
	rs := make([]*replica, n)
	for i := range rs {
		rs[i] = newReplica(t, dbURL, valkeyURL)
	}
	return rs
}

func seedUser(t testing.TB, db *bun.DB) auth.Principal {
	t.Helper()
	id := uuid.New()
	if _, err := db.ExecContext(context.Background(),
		"INSERT INTO users (id, email, display_name, password_hash) VALUES (?, ?, 'Tester', 'x')", id, id.String()+"@example.com"); err != nil {
		t.Fatalf("seed user: %v", err)
	}
	return auth.Principal{ID: id, Kind: auth.KindUser, TokenID: "t", ExpiresAt: time.Now().Add(time.Hour)}
}

var agent = auth.Principal{ID: uuid.New(), Kind: auth.KindAgent, TokenID: "a", ExpiresAt: time.Now().Add(time.Hour)}

func create(t testing.TB, r *replica, p auth.Principal) conversation.Conversation {
	t.Helper()
	c, err := r.svc.CreateConversation(context.Background(), p, "a title", uuid.Nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func saveTurn(t testing.TB, r *replica, p auth.Principal, id uuid.UUID, turnID, user, assistant string) conversation.SavedTurn {
	t.Helper()
	saved, err := r.svc.SaveTurn(context.Background(), p, conversation.Turn{ConversationID: id, TurnID: turnID, UserMessage: user, AssistantMessage: assistant})
	if err != nil {
		t.Fatalf("SaveTurn(%q): %v", turnID, err)
	}
	return saved
}

func seqsOf(ms []conversation.Message) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

func oneTo(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i + 1)
	}
	return out
}

// listAll pages through every message in order with page size size.
func listAll(t testing.TB, r *replica, p auth.Principal, id uuid.UUID, order conversation.Order, size int) []conversation.Message {
	t.Helper()
	var all []conversation.Message
	token := ""
	for {
		page, err := r.svc.ListMessages(context.Background(), p, conversation.ListMessagesRequest{ConversationID: id, PageSize: size, PageToken: token, Order: order})
		if err != nil {
			t.Fatalf("ListMessages: %v", err)
		}
		if len(page.Messages) > size {
			t.Fatalf("page of %d messages for size %d", len(page.Messages), size)
		}
		all = append(all, page.Messages...)
		if page.NextPageToken == "" {
			return all
		}
		token = page.NextPageToken
	}
}

func TestSaveTurnConcurrentWritersOnThreeReplicas(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 3, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for w := range 20 {
		wg.Go(func() {
			for i := range 10 {
				r := rs[(w+i)%3]
				p := owner
				if i%2 == 1 {
					p = agent
				}
				_, err := r.svc.SaveTurn(t.Context(), p, conversation.Turn{ConversationID: c.ID, TurnID: fmt.Sprintf("w%d-%d", w, i), UserMessage: "u", AssistantMessage: "a"})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := listAll(t, rs[1], owner, c.ID, conversation.OrderOldestFirst, 200)
	if got := seqsOf(all); !slices.Equal(got, oneTo(400)) {
		t.Fatalf("seqs = %v", got)
	}
	got, err := rs[2].svc.GetConversation(t.Context(), owner, c.ID)
	if err != nil || got.LastSeq != 400 || got.MessageCount != 400 {
		t.Errorf("GetConversation = %+v, %v", got, err)
	}
}

func TestSaveTurnReplayedOnReplicas(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 3, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	saveTurn(t, rs[0], owner, c.ID, "", "before", "")

	turn := conversation.Turn{ConversationID: c.ID, TurnID: "retry-me", UserMessage: "hi", AssistantMessage: "hello"}
	results := make([]conversation.SavedTurn, 10)
	errs := make([]error, 10)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() { results[i], errs[i] = rs[i%3].svc.SaveTurn(t.Context(), agent, turn) })
	}
	wg.Wait()
	var first *conversation.SavedTurn
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("SaveTurn %d: %v", i, errs[i])
		}
		if !results[i].Replayed {
			if first != nil {
				t.Fatal("two calls stored the turn")
			}
			first = &results[i]
		}
	}
	if first == nil {
		t.Fatal("no call stored the turn")
	}
	for i, r := range results {
		if len(r.Messages) != 2 || r.Messages[0].ID != first.Messages[0].ID || r.Messages[1].ID != first.Messages[1].ID ||
			r.Messages[0].Seq != 2 || r.Messages[1].Seq != 3 || r.Messages[0].Content != "hi" || r.Messages[1].Role != conversation.RoleAssistant {
			t.Errorf("result %d = %+v", i, r)
		}
	}
	if got := seqsOf(listAll(t, rs[1], owner, c.ID, conversation.OrderOldestFirst, 50)); !slices.Equal(got, oneTo(3)) {
		t.Errorf("seqs after replays = %v", got)
	}

	for _, conflicting := range []conversation.Turn{
		{ConversationID: c.ID, TurnID: "retry-me", UserMessage: "hi", AssistantMessage: "HELLO"},
		{ConversationID: c.ID, TurnID: "retry-me", UserMessage: "hi"},
		{ConversationID: c.ID, TurnID: "retry-me", AssistantMessage: "hello"},
	} {
		if _, err := rs[2].svc.SaveTurn(t.Context(), owner, conflicting); !errors.Is(err, conversation.ErrTurnConflict) {
			t.Errorf("SaveTurn(%+v) = %v, want ErrTurnConflict", conflicting, err)
		}
	}
	// The same turn id in another conversation is a different turn.
	other := create(t, rs[0], owner)
	if s := saveTurn(t, rs[0], owner, other.ID, "retry-me", "x", ""); s.Replayed || s.Messages[0].Seq != 1 {
		t.Errorf("turn id in another conversation = %+v", s)
	}
}

func TestSaveTurnRules(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 1, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	big := strings.Repeat("x", conversation.MaxMessageBytes)
	for _, tc := range []struct {
		name string
		turn conversation.Turn
	}{
		{"both empty", conversation.Turn{}},
		{"user too big", conversation.Turn{UserMessage: big + "y"}},
		{"assistant too big", conversation.Turn{UserMessage: "u", AssistantMessage: big + "y"}},
		{"turn id too long", conversation.Turn{TurnID: strings.Repeat("a", 65), UserMessage: "u"}},
		{"turn id bad chars", conversation.Turn{TurnID: "a b", UserMessage: "u"}},
		{"invalid utf-8", conversation.Turn{UserMessage: "\xff"}},
	} {
		tc.turn.ConversationID = c.ID
		if _, err := rs[0].svc.SaveTurn(t.Context(), owner, tc.turn); !errors.Is(err, conversation.ErrInvalid) {
			t.Errorf("%s: SaveTurn = %v, want ErrInvalid", tc.name, err)
		}
	}
	// The limits themselves are allowed, and an empty message is skipped.
	s := saveTurn(t, rs[0], owner, c.ID, strings.Repeat("a", 64), "", big)
	if len(s.Messages) != 1 || s.Messages[0].Role != conversation.RoleAssistant || s.Messages[0].Seq != 1 || len(s.Messages[0].Content) != len(big) {
		t.Errorf("assistant-only turn = %d messages", len(s.Messages))
	}
}

func TestListMessagesPagingBothOrders(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 2, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	for i := range 25 {
		saveTurn(t, rs[0], owner, c.ID, "", fmt.Sprint("u", i), fmt.Sprint("a", i))
	}
	for _, size := range []int{1, 7, 50, 200} {
		if got := seqsOf(listAll(t, rs[1], owner, c.ID, conversation.OrderOldestFirst, size)); !slices.Equal(got, oneTo(50)) {
			t.Errorf("oldest first, size %d: %v", size, got)
		}
		want := oneTo(50)
		slices.Reverse(want)
		if got := seqsOf(listAll(t, rs[1], owner, c.ID, conversation.OrderNewestFirst, size)); !slices.Equal(got, want) {
			t.Errorf("newest first, size %d: %v", size, got)
		}
	}
	// Defaults: 50, newest first.
	page, err := rs[1].svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID})
	if err != nil || len(page.Messages) != 50 || page.Messages[0].Seq != 50 || page.NextPageToken != "" || page.ConversationID != c.ID {
		t.Errorf("default page: %d messages, first %v, token %q, %v", len(page.Messages), seqsOf(page.Messages[:1]), page.NextPageToken, err)
	}
	// Tokens: garbage and a token of the other order are refused.
	first, err := rs[1].svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID, PageSize: 10})
	if err != nil || first.NextPageToken == "" {
		t.Fatal(err)
	}
	for _, r := range []conversation.ListMessagesRequest{
		{ConversationID: c.ID, PageToken: "not a token"},
		{ConversationID: c.ID, PageToken: first.NextPageToken, Order: conversation.OrderOldestFirst},
	} {
		if _, err := rs[1].svc.ListMessages(t.Context(), owner, r); !errors.Is(err, conversation.ErrInvalidPageToken) {
			t.Errorf("ListMessages(%+v) = %v, want ErrInvalidPageToken", r, err)
		}
	}
	if _, err := rs[1].svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID, PageSize: 201}); !errors.Is(err, conversation.ErrInvalid) {
		t.Errorf("page size 201 = %v", err)
	}
	empty := create(t, rs[0], owner)
	if page, err := rs[1].svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: empty.ID}); err != nil || len(page.Messages) != 0 || page.NextPageToken != "" {
		t.Errorf("empty conversation page = %+v, %v", page, err)
	}
}

// TestListMessagesPagingWhileWriting pages while another replica saves
// turns: oldest first reaches every message, newest first every message
// that existed when it started, each exactly once.
func TestListMessagesPagingWhileWriting(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 2, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	for range 30 {
		saveTurn(t, rs[0], owner, c.ID, "", "u", "a")
	}
	stop := make(chan struct{})
	var written sync.WaitGroup
	written.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				saveTurn(t, rs[0], owner, c.ID, "", "u", "a")
			}
		}
	})
	newest := listAll(t, rs[1], owner, c.ID, conversation.OrderNewestFirst, 7)
	oldest := listAll(t, rs[1], owner, c.ID, conversation.OrderOldestFirst, 7)
	close(stop)
	written.Wait()

	top := newest[0].Seq
	want := oneTo(int(top))
	slices.Reverse(want)
	if got := seqsOf(newest); top < 60 || !slices.Equal(got, want) {
		t.Errorf("newest first while writing: %v", got)
	}
	if got := seqsOf(oldest); len(got) < 60 || !slices.Equal(got, oneTo(len(got))) {
		t.Errorf("oldest first while writing: %v", got)
	}
}

// TestListMessagesNeverStale saves on one replica and lists on another, with
// caches warm on both, 200 times.
func TestListMessagesNeverStale(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 3, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	for i := range 200 {
		saved := saveTurn(t, rs[1], agent, c.ID, fmt.Sprint("t", i), fmt.Sprint("u", i), "a")
		page, err := rs[2].svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID, PageSize: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) == 0 || page.Messages[0].ID != saved.Messages[1].ID || page.Messages[0].Seq != int64(2*i+2) {
			t.Fatalf("try %d: newest page %v lacks seq %d", i, seqsOf(page.Messages), saved.Messages[1].Seq)
		}
	}
	if hits := counter(t, rs[2].reg, "miss"); hits == 0 {
		t.Error("no cache misses counted")
	}
	// A repeated read is served from the cache.
	before := counter(t, rs[2].reg, "hit")
	for range 2 {
		if _, err := rs[2].svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID}); err != nil {
			t.Fatal(err)
		}
	}
	if counter(t, rs[2].reg, "hit") <= before {
		t.Error("a repeated ListMessages was not a cache hit")
	}
}

func counter(t testing.TB, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "parley_cache_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestListMessagesSurvivesValkeyOutage: flushed or stopped, Valkey costs
// speed, never correctness.
func TestListMessagesSurvivesValkeyOutage(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	rs := newReplicas(t, 2, v.URL())
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	check := func(step string, n int) {
		t.Helper()
		for range 2 { // the second read would be a cache hit
			got := seqsOf(listAll(t, rs[1], owner, c.ID, conversation.OrderOldestFirst, 3))
			if !slices.Equal(got, oneTo(n)) {
				t.Fatalf("%s: seqs %v, want 1..%d", step, got, n)
			}
		}
	}
	saveTurn(t, rs[0], owner, c.ID, "", "u", "a")
	check("warm", 2)
	v.Flush()
	check("flushed", 2)
	saveTurn(t, rs[0], owner, c.ID, "", "u", "a")
	check("flushed, then saved", 4)
	v.Stop()
	saveTurn(t, rs[0], owner, c.ID, "", "u", "a")
	start := time.Now()
	check("stopped", 6)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("reads with Valkey down took %v", d)
	}
	if counter(t, rs[1].reg, "error") == 0 {
		t.Error("no cache errors counted while Valkey was down")
	}
	v.Start()
	saveTurn(t, rs[0], owner, c.ID, "", "u", "a")
	check("restarted", 8)
}

func TestAccess(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 1, "")
	r := rs[0]
	owner, stranger := seedUser(t, r.db), seedUser(t, r.db)
	c := create(t, r, owner)
	saveTurn(t, r, owner, c.ID, "t1", "u", "a")
	ctx := t.Context()

	// Someone else's conversation does not exist for the stranger.
	notFound := map[string]error{}
	_, notFound["GetConversation"] = r.svc.GetConversation(ctx, stranger, c.ID)
	_, notFound["SaveTurn"] = r.svc.SaveTurn(ctx, stranger, conversation.Turn{ConversationID: c.ID, UserMessage: "x"})
	_, notFound["SaveTurn replay"] = r.svc.SaveTurn(ctx, stranger, conversation.Turn{ConversationID: c.ID, TurnID: "t1", UserMessage: "u", AssistantMessage: "a"})
	_, notFound["ListMessages"] = r.svc.ListMessages(ctx, stranger, conversation.ListMessagesRequest{ConversationID: c.ID})
	_, notFound["WatchMessages"] = r.svc.WatchMessages(ctx, stranger, c.ID, 0)
	notFound["DeleteConversation"] = r.svc.DeleteConversation(ctx, stranger, c.ID)
	_, notFound["GetConversation missing"] = r.svc.GetConversation(ctx, owner, uuid.New())
	for name, err := range notFound {
		if !errors.Is(err, conversation.ErrNotFound) {
			t.Errorf("%s by a stranger = %v, want ErrNotFound", name, err)
		}
	}
	if page, err := r.svc.ListConversations(ctx, stranger, 0, ""); err != nil || len(page.Conversations) != 0 {
		t.Errorf("stranger's ListConversations = %+v, %v", page, err)
	}

	// Also when the head is cached: the owner's read caches it.
	if _, err := r.svc.ListMessages(ctx, owner, conversation.ListMessagesRequest{ConversationID: c.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.ListMessages(ctx, stranger, conversation.ListMessagesRequest{ConversationID: c.ID}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("ListMessages by a stranger with the head cached = %v, want ErrNotFound", err)
	}

	// Agents reach any conversation for turns and reads, nothing user-scoped.
	if _, err := r.svc.GetConversation(ctx, agent, c.ID); err != nil {
		t.Errorf("agent GetConversation: %v", err)
	}
	if _, err := r.svc.ListMessages(ctx, agent, conversation.ListMessagesRequest{ConversationID: c.ID}); err != nil {
		t.Errorf("agent ListMessages: %v", err)
	}
	w, err := r.svc.WatchMessages(ctx, agent, c.ID, 0)
	if err != nil {
		t.Errorf("agent WatchMessages: %v", err)
	} else {
		w.Close()
	}
	denied := map[string]error{}
	_, denied["CreateConversation"] = r.svc.CreateConversation(ctx, agent, "x", uuid.Nil)
	_, denied["ListConversations"] = r.svc.ListConversations(ctx, agent, 0, "")
	denied["DeleteConversation"] = r.svc.DeleteConversation(ctx, agent, c.ID)
	for name, err := range denied {
		if !errors.Is(err, auth.ErrPermissionDenied) {
			t.Errorf("agent %s = %v, want ErrPermissionDenied", name, err)
		}
	}
	if _, err := r.svc.GetConversation(ctx, auth.Principal{}, c.ID); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("no principal = %v", err)
	}
	// No room checker yet: every room id is refused as not found.
	if _, err := r.svc.CreateConversation(ctx, owner, "x", uuid.New()); !errors.Is(err, conversation.ErrRoomNotFound) {
		t.Errorf("CreateConversation with a room = %v", err)
	}
}

type fakeRooms map[[2]uuid.UUID]bool

func (f fakeRooms) RoomOwnedBy(_ context.Context, roomID, userID uuid.UUID) (bool, error) {
	return f[[2]uuid.UUID{roomID, userID}], nil
}

func TestCreateListDeleteConversations(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DatabaseURL(t)
	base := newReplica(t, dbURL, testenv.ValkeyURL(t))
	owner := seedUser(t, base.db)
	room, vanished := uuid.New(), uuid.New()
	if _, err := base.db.ExecContext(t.Context(), "INSERT INTO rooms (id, name, livekit_room, created_by) VALUES (?, 'r', ?, ?)", room, "parley-"+room.String(), owner.ID); err != nil {
		t.Fatal(err)
	}
	svc := conversation.NewService(base.store, conversation.Options{Rooms: fakeRooms{{room, owner.ID}: true, {vanished, owner.ID}: true}})
	ctx := t.Context()
	if _, err := svc.CreateConversation(ctx, owner, "x", vanished); !errors.Is(err, conversation.ErrRoomNotFound) {
		t.Errorf("a room deleted after the check = %v", err)
	}

	c, err := svc.CreateConversation(ctx, owner, "with room", room)
	if err != nil || c.RoomID != room || c.UserID != owner.ID || c.Title != "with room" || c.CreatedAt.IsZero() {
		t.Fatalf("CreateConversation = %+v, %v", c, err)
	}
	if _, err := svc.CreateConversation(ctx, owner, "x", uuid.New()); !errors.Is(err, conversation.ErrRoomNotFound) {
		t.Errorf("someone else's room = %v", err)
	}
	if _, err := svc.CreateConversation(ctx, owner, strings.Repeat("é", 201), uuid.Nil); !errors.Is(err, conversation.ErrInvalid) {
		t.Errorf("long title = %v", err)
	}
	want := []uuid.UUID{c.ID}
	for range 4 {
		want = append(want, create(t, base, owner).ID)
	}
	slices.Reverse(want)
	var got []uuid.UUID
	token := ""
	for {
		page, err := svc.ListConversations(ctx, owner, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page.Conversations {
			got = append(got, c.ID)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("ListConversations ids = %v, want %v", got, want)
	}
	if _, err := svc.ListConversations(ctx, owner, 0, "junk"); !errors.Is(err, conversation.ErrInvalidPageToken) {
		t.Errorf("junk token = %v", err)
	}
	saveTurn(t, base, owner, c.ID, "t", "u", "a")
	if err := svc.DeleteConversation(ctx, owner, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.GetConversation(ctx, owner, c.ID); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("after delete = %v", err)
	}
	if err := svc.DeleteConversation(ctx, owner, c.ID); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("second delete = %v", err)
	}
}

// BenchmarkListMessagesCached measures the cached path: one MGET in Valkey
// and nothing in PostgreSQL.
func BenchmarkListMessagesCached(b *testing.B) {
	rs := newReplicas(b, 1, "")
	owner := seedUser(b, rs[0].db)
	c := create(b, rs[0], owner)
	for range 50 {
		saveTurn(b, rs[0], owner, c.ID, "", "a user message of some length", "an assistant answer of some more length")
	}
	req := conversation.ListMessagesRequest{ConversationID: c.ID}
	for b.Loop() {
		if page, err := rs[0].svc.ListMessages(b.Context(), owner, req); err != nil || len(page.Messages) != 50 {
			b.Fatal(err)
		}
	}
}

// countingStore counts the store calls of ListMessages.
type countingStore struct {
	*postgres.ConversationStore
	heads, reads atomic.Int64
}

func (s *countingStore) Head(ctx context.Context, id uuid.UUID, sc conversation.Scope) (conversation.Head, error) {
	s.heads.Add(1)
	return s.ConversationStore.Head(ctx, id, sc)
}

func (s *countingStore) ListMessages(ctx context.Context, r conversation.MessageRange) ([]conversation.Message, error) {
	s.reads.Add(1)
	return s.ConversationStore.ListMessages(ctx, r)
}

// TestListMessagesCachedWithoutStore checks that a ListMessages of an
// unchanged conversation asks PostgreSQL nothing, that an expired head costs
// one head read and no page read, that a saved turn costs the next reader one
// page read and no head read, and that a deleted conversation is not found
// through the cache.
func TestListMessagesCachedWithoutStore(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 1, "")
	r := rs[0]
	owner := seedUser(t, r.db)
	c := create(t, r, owner)
	saveTurn(t, r, owner, c.ID, "t1", "u1", "a1")
	vc := testenv.ValkeyClient(t, testenv.ValkeyURL(t))
	pages, err := cache.NewPages(vc, time.Minute, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	store := &countingStore{ConversationStore: r.store}
	svc := conversation.NewService(store, conversation.Options{Cache: pages, Log: slog.New(slog.DiscardHandler)})
	list := func() []int64 {
		t.Helper()
		page, err := svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID})
		if err != nil {
			t.Fatal(err)
		}
		return seqsOf(page.Messages)
	}
	calls := func() [2]int64 { return [2]int64{store.heads.Load(), store.reads.Load()} }

	if got := list(); !slices.Equal(got, []int64{2, 1}) {
		t.Fatalf("first read: %v", got)
	}
	if got := calls(); got != [2]int64{1, 1} {
		t.Fatalf("first read: %v head and page reads, want 1 1", got)
	}
	for range 3 {
		list()
	}
	if got := calls(); got != [2]int64{1, 1} {
		t.Errorf("cached reads asked the store: %v head and page reads in all, want 1 1", got)
	}
	// When the head has expired, the head is read again, and the cached
	// page, still current at it, is served.
	if err := vc.Do(t.Context(), vc.B().Del().Key("parley:head:"+c.ID.String()).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	list()
	if got := calls(); got != [2]int64{2, 1} {
		t.Errorf("after the head expired: %v head and page reads in all, want 2 1", got)
	}
	saveTurn(t, r, owner, c.ID, "t2", "u2", "a2")
	if got := list(); !slices.Equal(got, []int64{4, 3, 2, 1}) {
		t.Fatalf("after a turn: %v", got)
	}
	if got := calls(); got != [2]int64{2, 2} {
		t.Errorf("after a turn: %v head and page reads in all, want 2 2", got)
	}
	if err := r.svc.DeleteConversation(t.Context(), owner, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ListMessages(t.Context(), owner, conversation.ListMessagesRequest{ConversationID: c.ID}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("after delete: %v, want ErrNotFound", err)
	}
}
