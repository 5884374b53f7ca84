package postgres_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

// convSeedUser inserts a user row for conversations to belong to.
func convSeedUser(t testing.TB, db *bun.DB) uuid.UUID {
	t.Helper()
	id := uuid.New()
	_, err := db.ExecContext(context.Background(),
		"INSERT INTO users (id, email, display_name, password_hash) VALUES (?, ?, 'Tester', 'x')", id, id.String()+"@example.com")
	if err != nil {
		t.Fatalf("seed user: %v", err)
	}
	return id
}

func convCreate(t testing.TB, s *postgres.ConversationStore, owner uuid.UUID) conversation.Conversation {
	t.Helper()
	c, err := s.CreateConversation(context.Background(), conversation.Conversation{ID: uuid.Must(uuid.NewV7()), UserID: owner, Title: "t"})
	if err != nil {
		t.Fatalf("CreateConversation: %v", err)
	}
	return c
}

func convMsgs(user, assistant string) []conversation.NewMessage {
	var out []conversation.NewMessage
	if user != "" {
		out = append(out, conversation.NewMessage{ID: uuid.Must(uuid.NewV7()), Role: conversation.RoleUser, Content: user})
	}
	if assistant != "" {
		out = append(out, conversation.NewMessage{ID: uuid.Must(uuid.NewV7()), Role: conversation.RoleAssistant, Content: assistant})
	}
	return out
}

func TestConversationStoreSaveTurnConcurrentWriters(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(t, db)
	c := convCreate(t, s, owner)

	const writers, turns = 20, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*turns)
	for w := range writers {
		wg.Go(func() {
			for i := range turns {
				saved, err := s.SaveTurn(t.Context(), c.ID, conversation.Scope{UserID: owner}, fmt.Sprintf("w%d-t%d", w, i), convMsgs(fmt.Sprintf("u%d-%d", w, i), fmt.Sprintf("a%d-%d", w, i)))
				if err != nil {
					errs <- err
					return
				}
				if len(saved.Messages) != 2 || saved.Messages[1].Seq != saved.Messages[0].Seq+1 || saved.Replayed {
					errs <- fmt.Errorf("SaveTurn = %+v", saved)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	msgs, err := s.ListMessages(t.Context(), conversation.MessageRange{ConversationID: c.ID, Order: conversation.OrderOldestFirst, Before: 1 << 40, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2*writers*turns {
		t.Fatalf("stored %d messages, want %d", len(msgs), 2*writers*turns)
	}
	for i, m := range msgs {
		if m.Seq != int64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
		// Each turn is a consecutive (user, assistant) pair.
		want := conversation.RoleUser
		if i%2 == 1 {
			want = conversation.RoleAssistant
			if m.TurnID != msgs[i-1].TurnID {
				t.Fatalf("seq %d is turn %q, seq %d is turn %q", m.Seq, m.TurnID, msgs[i-1].Seq, msgs[i-1].TurnID)
			}
		}
		if m.Role != want {
			t.Fatalf("seq %d role %d, want %d", m.Seq, m.Role, want)
		}
	}
	got, err := s.GetConversation(t.Context(), c.ID, conversation.Scope{})
	if err != nil {
		t.Fatal(err)
	}
	if got.LastSeq != 400 || got.MessageCount != 400 {
		t.Errorf("conversation last_seq %d message_count %d, want 400 400", got.LastSeq, got.MessageCount)
	}
}

func TestConversationStoreSaveTurnReplay(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(t, db)
	c := convCreate(t, s, owner)
	ctx := t.Context()

	// A turn with only an assistant message, saved 10 times at once.
	msgs := convMsgs("", "hello")
	results := make([]conversation.SavedTurn, 10)
	errs := make([]error, 10)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() { results[i], errs[i] = s.SaveTurn(ctx, c.ID, conversation.Scope{}, "turn-1", msgs) })
	}
	wg.Wait()
	fresh := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("SaveTurn %d: %v", i, errs[i])
		}
		if !r.Replayed {
			fresh++
		}
		if len(r.Messages) != 1 || r.Messages[0].Seq != 1 || r.Messages[0].Content != "hello" || r.Messages[0].Role != conversation.RoleAssistant || r.Messages[0].TurnID != "turn-1" {
			t.Errorf("SaveTurn %d = %+v", i, r)
		}
	}
	if fresh != 1 {
		t.Errorf("%d calls stored the turn, want 1", fresh)
	}
	// The replay does not consume seqs.
	next, err := s.SaveTurn(ctx, c.ID, conversation.Scope{}, "", convMsgs("u", "a"))
	if err != nil {
		t.Fatal(err)
	}
	if next.Messages[0].Seq != 2 || next.Messages[1].Seq != 3 || next.Messages[0].TurnID != "" {
		t.Errorf("next turn = %+v", next)
	}
}

func TestConversationStoreScope(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner, other := convSeedUser(t, db), convSeedUser(t, db)
	c := convCreate(t, s, owner)
	ctx := t.Context()
	mine, theirs := conversation.Scope{UserID: owner}, conversation.Scope{UserID: other}

	if _, err := s.SaveTurn(ctx, c.ID, theirs, "x", convMsgs("u", "")); err != conversation.ErrNotFound {
		t.Errorf("SaveTurn by other = %v, want ErrNotFound", err)
	}
	if _, err := s.SaveTurn(ctx, c.ID, mine, "x", convMsgs("u", "")); err != nil {
		t.Fatal(err)
	}
	// The used turn id must not leak the conversation to someone else.
	if _, err := s.SaveTurn(ctx, c.ID, theirs, "x", convMsgs("u", "")); err != conversation.ErrNotFound {
		t.Errorf("SaveTurn replay by other = %v, want ErrNotFound", err)
	}
	if _, err := s.Head(ctx, c.ID, theirs); err != conversation.ErrNotFound {
		t.Errorf("Head by other = %v", err)
	}
	if _, err := s.GetConversation(ctx, c.ID, theirs); err != conversation.ErrNotFound {
		t.Errorf("GetConversation by other = %v", err)
	}
	if err := s.DeleteConversation(ctx, c.ID, theirs); err != conversation.ErrNotFound {
		t.Errorf("DeleteConversation by other = %v", err)
	}
	if h, err := s.Head(ctx, c.ID, conversation.Scope{}); err != nil || h.LastSeq != 1 || h.Owner != mine.UserID {
		t.Errorf("Head any = %+v, %v; want last_seq 1 owned by %s", h, err, mine.UserID)
	}
	if err := s.DeleteConversation(ctx, c.ID, mine); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveTurn(ctx, c.ID, conversation.Scope{}, "y", convMsgs("u", "")); err != conversation.ErrNotFound {
		t.Errorf("SaveTurn after delete = %v", err)
	}
	_, _, exists, err := s.NewMessages(ctx, c.ID, 0, 10)
	if err != nil || exists {
		t.Errorf("NewMessages after delete: exists %v, %v", exists, err)
	}
}

func TestConversationStoreNewMessagesAndLastSeqs(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(t, db)
	a, b := convCreate(t, s, owner), convCreate(t, s, owner)
	ctx := t.Context()
	for range 3 {
		if _, err := s.SaveTurn(ctx, a.ID, conversation.Scope{}, "", convMsgs("u", "a")); err != nil {
			t.Fatal(err)
		}
	}
	msgs, last, exists, err := s.NewMessages(ctx, a.ID, 2, 3)
	if err != nil || !exists || last != 6 {
		t.Fatalf("NewMessages = last %d exists %v err %v", last, exists, err)
	}
	if got := seqs(msgs); !slices.Equal(got, []int64{3, 4, 5}) {
		t.Errorf("NewMessages seqs = %v", got)
	}
	msgs, last, exists, err = s.NewMessages(ctx, b.ID, 0, 3)
	if err != nil || !exists || last != 0 || len(msgs) != 0 {
		t.Errorf("NewMessages(empty) = %v %d %v %v", msgs, last, exists, err)
	}
	gone := uuid.New()
	m, err := s.LastSeqs(ctx, []uuid.UUID{a.ID, b.ID, gone})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m[a.ID] != 6 || m[b.ID] != 0 {
		t.Errorf("LastSeqs = %v", m)
	}
}

func TestConversationStoreListConversations(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner, other := convSeedUser(t, db), convSeedUser(t, db)
	ctx := t.Context()
	var want []uuid.UUID
	for range 7 {
		want = append(want, convCreate(t, s, owner).ID)
	}
	convCreate(t, s, other)
	slices.Reverse(want)

	var got []uuid.UUID
	var after *conversation.ConversationCursor
	for {
		cs, err := s.ListConversations(ctx, owner, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			got = append(got, c.ID)
		}
		if len(cs) < 3 {
			break
		}
		last := cs[len(cs)-1]
		after = &conversation.ConversationCursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	if !slices.Equal(got, want) {
		t.Errorf("paged ids = %v, want %v", got, want)
	}
}

func seqs(ms []conversation.Message) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

// TestListMessagesPlanIsIndexedKeyset shows that a page's cost does not grow
// with the history: at 10 and at 100,000 messages, each keyset query is a
// LIMIT over an index scan of the primary key that reads no more rows than
// the page, with no sort, with both custom and generic plans.
func TestListMessagesPlanIsIndexedKeyset(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(t, db)
	ctx := t.Context()

	// The long conversation goes first so that the short one, like any in
	// production, shares the table with plenty of other rows.
	for _, n := range []int64{100_000, 10} {
		c := convCreate(t, s, owner)
		// Bulk seeding; SaveTurn would take minutes for 100,000.
		if _, err := db.ExecContext(ctx, `INSERT INTO messages (conversation_id, seq, id, role, content)
			SELECT ?, g, gen_random_uuid(), 1, 'm' || g FROM generate_series(1, ?) g`, c.ID, n); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `UPDATE conversations SET last_seq = ?, message_count = ? WHERE id = ?`, n, n, c.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `ANALYZE messages`); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, sql     string
			after, before int64
		}{
			{"newest first page", postgres.ListMessagesNewestSQL, 0, n + 1},
			{"newest middle page", postgres.ListMessagesNewestSQL, 0, n / 2},
			{"oldest first page", postgres.ListMessagesOldestSQL, 0, n + 1},
			{"oldest middle page", postgres.ListMessagesOldestSQL, n / 2, n + 1},
		} {
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				t.Run(fmt.Sprintf("%d/%s/%s", n, tc.name, mode), func(t *testing.T) {
					plan := explainPrepared(t, db, mode, tc.sql, c.ID, tc.after, tc.before, 51)
					assertKeysetPlan(t, plan, 51)
				})
			}
		}
	}
}

type planNode = explainNode

// explainPrepared runs EXPLAIN ANALYZE of the statement prepared on one
// connection with the given plan_cache_mode.
func explainPrepared(t *testing.T, db *bun.DB, mode, query string, args ...any) planNode {
	t.Helper()
	literals := make([]string, len(args))
	for i, a := range args {
		literals[i] = fmt.Sprint(a)
	}
	plan, _ := explainPage(t, db, mode, query, literals...)
	return plan
}

func assertKeysetPlan(t *testing.T, plan planNode, limit float64) {
	t.Helper()
	if plan.NodeType != "Limit" || len(plan.Plans) != 1 {
		t.Fatalf("plan root %q with %d children, want Limit over one index scan: %+v", plan.NodeType, len(plan.Plans), plan)
	}
	scan := plan.Plans[0]
	if (scan.NodeType != "Index Scan" && scan.NodeType != "Index Scan Backward") || scan.IndexName != "messages_pkey" {
		t.Fatalf("plan under Limit is %q on %q, want an index scan of messages_pkey: %+v", scan.NodeType, scan.IndexName, plan)
	}
	if scan.ActualRows > limit {
		t.Errorf("index scan read %v rows for a page of %v", scan.ActualRows, limit)
	}
}

// convBench returns a store on a database of its own and a conversation
// there, with the scope of its owner.
func convBench(b *testing.B) (*postgres.ConversationStore, conversation.Conversation, conversation.Scope) {
	db := testenv.DB(b)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(b, db)
	return s, convCreate(b, s, owner), conversation.Scope{UserID: owner}
}

// BenchmarkSaveTurn measures SaveTurn as the store runs it: the turn's two
// message items through AppendItemsSQL, one round trip per turn.
func BenchmarkSaveTurn(b *testing.B) {
	s, c, scope := convBench(b)
	msgs := convMsgs("what is the weather like?", "Sunny, 21 degrees.")
	i := 0
	for b.Loop() {
		i++
		if _, err := s.SaveTurn(b.Context(), c.ID, scope, fmt.Sprint("turn-", i), msgs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSaveTurnReplay measures a retried turn: the failed statement and
// the read of the stored turn.
func BenchmarkSaveTurnReplay(b *testing.B) {
	db := testenv.DB(b)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(b, db)
	c := convCreate(b, s, owner)
	msgs := convMsgs("u", "a")
	if _, err := s.SaveTurn(b.Context(), c.ID, conversation.Scope{}, "once", msgs); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if r, err := s.SaveTurn(b.Context(), c.ID, conversation.Scope{}, "once", msgs); err != nil || !r.Replayed {
			b.Fatal(r, err)
		}
	}
}

// TestConversationStoreSimpleProtocol runs the hot statements as pgx runs
// them behind PgBouncer (deploy/k8s/README.md): every parameter sent as
// text, with no statement description to type it by.
func TestConversationStoreSimpleProtocol(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"simple_protocol", "exec"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			url := testenv.DatabaseURL(t)
			sep := "?"
			if strings.Contains(url, "?") {
				sep = "&"
			}
			db, err := postgres.Open(t.Context(), url+sep+"default_query_exec_mode="+mode, postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			s := postgres.NewConversationStore(db)
			owner := convSeedUser(t, db)
			c := convCreate(t, s, owner)
			scope := conversation.Scope{UserID: owner}
			saved, err := s.SaveTurn(t.Context(), c.ID, scope, "t1", convMsgs("u", "a"))
			if err != nil || len(saved.Messages) != 2 {
				t.Fatalf("SaveTurn: %+v, %v", saved, err)
			}
			h, err := s.Head(t.Context(), c.ID, scope)
			if err != nil || h.LastSeq != 2 || h.Owner != owner {
				t.Fatalf("Head: %+v, %v", h, err)
			}
			msgs, err := s.ListMessages(t.Context(), conversation.MessageRange{ConversationID: c.ID, Order: conversation.OrderNewestFirst, Before: 3, Limit: 10})
			if err != nil || len(msgs) != 2 || msgs[0].ID != saved.Messages[1].ID {
				t.Fatalf("ListMessages: %+v, %v", msgs, err)
			}
		})
	}
}

// BenchmarkListMessages measures an uncached ListMessages page of 50 as the
// store reads it.
func BenchmarkListMessages(b *testing.B) {
	s, c, scope := convBench(b)
	for i := range 30 {
		if _, err := s.SaveTurn(b.Context(), c.ID, scope, fmt.Sprint("turn-", i), convMsgs("u", "a")); err != nil {
			b.Fatal(err)
		}
	}
	r := conversation.MessageRange{ConversationID: c.ID, Order: conversation.OrderNewestFirst, Before: 61, Limit: 51}
	for b.Loop() {
		if msgs, err := s.ListMessages(b.Context(), r); err != nil || len(msgs) != 51 {
			b.Fatal(len(msgs), err)
		}
	}
}
