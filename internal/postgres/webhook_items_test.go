package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// longAfter is a flush time at which every batch is due.
var longAfter = time.Now().Add(time.Hour)

// itemsEventsOf reads the conversation.items_appended data the user's
// endpoints are sent about conversation id, in the order of the endpoint's
// line (delivery id), and checks each is queued for exactly the user's
// subscribed endpoints (want of them).
func itemsEventsOf(t *testing.T, db *bun.DB, id uuid.UUID, want int) []webhook.ItemsAppendedData {
	t.Helper()
	rows, err := db.DB.QueryContext(t.Context(), `SELECT e.type, e.payload, (SELECT count(*) FROM webhook_deliveries d WHERE d.event_id = e.id),
       (SELECT min(d.id) FROM webhook_deliveries d WHERE d.event_id = e.id)
  FROM webhook_events e
 WHERE e.type = $1
 ORDER BY 4, e.id`, webhook.ItemsAppended)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []webhook.ItemsAppendedData
	for rows.Next() {
		var (
			typ        string
			payload    []byte
			deliveries int
			first      *int64
		)
		if err := rows.Scan(&typ, &payload, &deliveries, &first); err != nil {
			t.Fatal(err)
		}
		var p struct {
			Type      string                    `json:"type"`
			Timestamp time.Time                 `json:"timestamp"`
			Data      webhook.ItemsAppendedData `json:"data"`
		}
		if err := json.Unmarshal(payload, &p); err != nil || p.Type != typ || p.Timestamp.IsZero() {
			t.Fatalf("payload %s: %v", payload, err)
		}
		if p.Data.ConversationID != id {
			continue
		}
		if deliveries != want {
			t.Errorf("event %s has %d deliveries, want %d", payload, deliveries, want)
		}
		out = append(out, p.Data)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkCoverage checks that events announce seqs 1 to last of conversation
// c exactly once, in contiguous ranges in order, each naming its items as
// ListItems has them.
func checkCoverage(t *testing.T, s *postgres.ConversationStore, c conversation.Conversation, events []webhook.ItemsAppendedData, last int64) {
	t.Helper()
	items, err := s.ListItems(t.Context(), conversation.ItemRange{
		ConversationID: c.ID, Scope: conversation.Scope{UserID: c.UserID}, Order: conversation.OrderOldestFirst, Limit: 100000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(items)) != last {
		t.Fatalf("%d items stored, want %d", len(items), last)
	}
	next := int64(1)
	for _, e := range events {
		if e.FirstSeq != next || e.LastSeq < e.FirstSeq || e.ItemCount != e.LastSeq-e.FirstSeq+1 ||
			len(e.Items) != int(e.ItemCount) || e.ItemCount > webhook.MaxItemsPerEvent {
			t.Fatalf("event %d..%d (%d items, %d named) after seq %d: want a range from %d of at most %d; all: %+v",
				e.FirstSeq, e.LastSeq, e.ItemCount, len(e.Items), next-1, next, webhook.MaxItemsPerEvent, events)
		}
		for i, it := range e.Items {
			stored := items[e.FirstSeq-1+int64(i)]
			if it.ID != stored.ID || it.Type != stored.Kind.Type() {
				t.Fatalf("event names item %d as %+v, stored is %s %s", e.FirstSeq+int64(i), it, stored.ID, stored.Kind.Type())
			}
		}
		next = e.LastSeq + 1
	}
	if next != last+1 {
		t.Fatalf("events end at seq %d, want %d: %+v", next-1, last, events)
	}
}

// itemsSubscriber returns a new database's stores and a user with an
// endpoint taking conversation.items_appended.
func itemsSubscriber(t *testing.T) (*bun.DB, *postgres.ConversationStore, *postgres.WebhookStore, uuid.UUID) {
	t.Helper()
	db := testenv.DB(t)
	owner := convSeedUser(t, db)
	subscribe(t, db, owner, webhook.ItemsAppended)
	return db, postgres.NewConversationStore(db), postgres.NewWebhookStore(db), owner
}

func itemBatchRows(t *testing.T, db *bun.DB) int {
	t.Helper()
	var n int
	if err := db.DB.QueryRowContext(t.Context(), `SELECT count(*) FROM webhook_item_batches`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func flush(t *testing.T, s *postgres.WebhookStore, now time.Time) int {
	t.Helper()
	n, err := s.FlushItemBatches(t.Context(), now, 20)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// flushAll flushes at now until nothing is due and returns how many events
// that wrote.
func flushAll(t *testing.T, s *postgres.WebhookStore, now time.Time) int {
	t.Helper()
	total := 0
	for n := flush(t, s, now); n > 0; n = flush(t, s, now) {
		total += n
	}
	return total
}

// callItems returns n function call items named prefix-0, prefix-1, ...
func callItems(prefix string, n int) []conversation.NewItem {
	out := make([]conversation.NewItem, n)
	for i := range out {
		out[i] = callItem(fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("call-%s-%d", prefix, i))
	}
	return out
}

// Writers append to two conversations at once (AppendItems batches, a
// batch larger than MaxItemsPerEvent, SaveTurn) while a flusher flushes
// everything due as it goes: each conversation's events, in their
// endpoint's order, cover every seq exactly once, contiguously, and name
// the items as stored.
func TestItemsAppendedCoverEverySeqOnceUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	db, convs, hooks, owner := itemsSubscriber(t)
	subscribe(t, db, owner, webhook.CallEnded) // not sent items_appended
	cs := []conversation.Conversation{convCreate(t, convs, owner), convCreate(t, convs, owner)}

	var (
		writers sync.WaitGroup
		done    = make(chan struct{})
		flushed = make(chan int)
	)
	go func() {
		total := 0
		for {
			select {
			case <-done:
				flushed <- total
				return
			default:
			}
			n, err := hooks.FlushItemBatches(t.Context(), longAfter, 3)
			if err != nil {
				t.Error(err)
			}
			total += n
		}
	}()
	for w := range 6 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			c := cs[w%2]
			for i := range 8 {
				var err error
				switch {
				case w == 0 && i == 3:
					_, err = appendItems(t, convs, c, callItems(fmt.Sprintf("big-%d", w), 150)...)
				case w%3 == 2:
					_, err = convs.SaveTurn(t.Context(), c.ID, conversation.Scope{UserID: owner}, fmt.Sprintf("turn-%d-%d", w, i), convMsgs("hi", "hello"))
				default:
					_, err = appendItems(t, convs, c, callItems(fmt.Sprintf("w%d-%d", w, i), 1+i%4)...)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	writers.Wait()
	close(done)
	events := <-flushed + flushAll(t, hooks, longAfter)
	if t.Failed() {
		t.FailNow()
	}
	if n := itemBatchRows(t, db); n != 0 {
		t.Errorf("%d batches left after flushing everything", n)
	}
	got := 0
	for _, c := range cs {
		_, last, _, _, _, _ := counts(t, db, c.ID)
		evs := itemsEventsOf(t, db, c.ID, 1)
		checkCoverage(t, convs, c, evs, last)
		got += len(evs)
	}
	if got != events {
		t.Errorf("the flushes reported %d events, the outbox holds %d", events, got)
	}
}

// Rolling update: the previous release's SaveTurn (messages only, items
// from the items migration's trigger) opens and extends the batch as
// AppendItemsSQL does, so with both binaries writing one conversation
// while a flusher runs, the events cover every seq exactly once.
func TestItemsAppendedCoverOldBinaryTurns(t *testing.T) {
	t.Parallel()
	db, convs, hooks, owner := itemsSubscriber(t)
	c := convCreate(t, convs, owner)
	scope := conversation.Scope{UserID: owner}
	batch := func() webhook.ItemBatch {
		t.Helper()
		var (
			b   = webhook.ItemBatch{ConversationID: c.ID}
			due time.Time
		)
		if err := db.DB.QueryRowContext(t.Context(), `SELECT user_id, first_seq, last_seq, opened_at, due_at FROM webhook_item_batches WHERE conversation_id = $1`, c.ID).
			Scan(&b.UserID, &b.FirstSeq, &b.LastSeq, &b.OpenedAt, &due); err != nil {
			t.Fatal(err)
		}
		if !due.Equal(b.DueAt()) {
			t.Errorf("batch %+v due at %v, want %v", b, due, b.DueAt())
		}
		return b
	}

	// An old turn opens a batch, then extends one a new append opened,
	// and one of 101 items is due at once.
	if err := oldSaveTurn(t.Context(), db, c, "old-1", "hi", "hello"); err != nil {
		t.Fatal(err)
	}
	if b := batch(); b.UserID != owner || b.FirstSeq != 1 || b.LastSeq != 2 {
		t.Fatalf("old turn's batch %+v, want seqs 1..2 of the owner", b)
	}
	if n := flushAll(t, hooks, longAfter); n != 1 {
		t.Fatalf("flushed %d events, want 1", n)
	}
	if _, err := appendItems(t, convs, c, callItems("a", 99)...); err != nil {
		t.Fatal(err)
	}
	if err := oldSaveTurn(t.Context(), db, c, "old-2", "hi", "hello"); err != nil {
		t.Fatal(err)
	}
	if b := batch(); b.FirstSeq != 3 || b.LastSeq != 103 || !b.DueAt().Equal(b.OpenedAt) {
		t.Fatalf("batch %+v, want seqs 3..103 due at once", b)
	}

	var (
		writers sync.WaitGroup
		done    = make(chan struct{})
		flushed = make(chan struct{})
	)
	go func() {
		defer close(flushed)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := hooks.FlushItemBatches(t.Context(), longAfter, 3); err != nil {
				t.Error(err)
			}
		}
	}()
	for w := range 4 {
		writers.Go(func() {
			for i := range 8 {
				turn := fmt.Sprintf("w%d-%d", w, i)
				var err error
				switch w {
				case 0, 1:
					err = oldSaveTurn(t.Context(), db, c, turn, "u "+turn, "a "+turn)
				case 2:
					_, err = convs.SaveTurn(t.Context(), c.ID, scope, turn, convMsgs("u "+turn, "a "+turn))
				default:
					_, err = appendItems(t, convs, c, callItems(turn, 1+i%3)...)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	writers.Wait()
	close(done)
	<-flushed
	flushAll(t, hooks, longAfter)
	if t.Failed() {
		t.FailNow()
	}
	if n := itemBatchRows(t, db); n != 0 {
		t.Errorf("%d batches left after flushing everything", n)
	}
	_, last, _, _, _, _ := counts(t, db, c.ID)
	if want := int64(2 + 99 + 2 + 3*16 + 15); last != want {
		t.Fatalf("last item seq %d, want %d", last, want)
	}
	checkCoverage(t, convs, c, itemsEventsOf(t, db, c.ID, 1), last)
}

// A batch is due ItemsWindow after its first append, or at once when it
// holds MaxItemsPerEvent; a longer one goes out MaxItemsPerEvent at a time,
// its rest due at the window's end.
func TestItemsAppendedWindowAndMax(t *testing.T) {
	t.Parallel()
	db, convs, hooks, owner := itemsSubscriber(t)
	c := convCreate(t, convs, owner)
	opened := func() time.Time {
		t.Helper()
		var at time.Time
		if err := db.DB.QueryRowContext(t.Context(), `SELECT opened_at FROM webhook_item_batches WHERE conversation_id = $1`, c.ID).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}

	if _, err := appendItems(t, convs, c, callItems("a", 3)...); err != nil {
		t.Fatal(err)
	}
	if _, err := appendItems(t, convs, c, callItems("b", 2)...); err != nil {
		t.Fatal(err)
	}
	at := opened()
	if n := flush(t, hooks, at.Add(webhook.ItemsWindow-time.Millisecond)); n != 0 {
		t.Fatalf("flushed %d events before the window passed", n)
	}
	if n := flush(t, hooks, at.Add(webhook.ItemsWindow)); n != 1 {
		t.Fatalf("flushed %d events once the window passed, want 1", n)
	}

	if _, err := appendItems(t, convs, c, callItems("c", 150)...); err != nil {
		t.Fatal(err)
	}
	at = opened()
	if n := flush(t, hooks, at); n != 1 {
		t.Fatalf("flushed %d events of a full batch at once, want 1", n)
	}
	if n := flush(t, hooks, at.Add(webhook.ItemsWindow-time.Millisecond)); n != 0 {
		t.Fatalf("flushed %d events of the rest before the window passed", n)
	}
	if n := flush(t, hooks, at.Add(webhook.ItemsWindow)); n != 1 {
		t.Fatalf("flushed %d events of the rest once the window passed, want 1", n)
	}
	evs := itemsEventsOf(t, db, c.ID, 1)
	checkCoverage(t, convs, c, evs, 155)
	var ranges [][2]int64
	for _, e := range evs {
		ranges = append(ranges, [2]int64{e.FirstSeq, e.LastSeq})
	}
	if want := [][2]int64{{1, 5}, {6, 105}, {106, 155}}; !slices.Equal(ranges, want) {
		t.Errorf("ranges %v, want %v", ranges, want)
	}
	if evs[0].Items[0] != (webhook.AppendedItem{ID: "a-0", Type: "function_call"}) {
		t.Errorf("first item named %+v", evs[0].Items[0])
	}
}

// Without an endpoint taking conversation.items_appended an append (or
// the previous release's SaveTurn) writes no batch, and nothing is
// announced.
func TestItemsAppendedNotRecordedWithoutSubscriber(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	convs, hooks := postgres.NewConversationStore(db), postgres.NewWebhookStore(db)
	calls := convSeedUser(t, db)
	subscribe(t, db, calls, webhook.CallStarted, webhook.CallEnded, webhook.ReportReady)
	none := convSeedUser(t, db)
	for _, owner := range []uuid.UUID{calls, none} {
		c := convCreate(t, convs, owner)
		if _, err := appendItems(t, convs, c, callItems("x", 3)...); err != nil {
			t.Fatal(err)
		}
		if _, err := convs.SaveTurn(t.Context(), c.ID, conversation.Scope{UserID: owner}, "t1", convMsgs("hi", "hello")); err != nil {
			t.Fatal(err)
		}
		if err := oldSaveTurn(t.Context(), db, c, "t2", "hi", "hello"); err != nil {
			t.Fatal(err)
		}
	}
	if n := itemBatchRows(t, db); n != 0 {
		t.Errorf("%d batches without a subscriber", n)
	}
	if n := flushAll(t, hooks, longAfter); n != 0 {
		t.Errorf("flushed %d events without a subscriber", n)
	}
	var events int
	if err := db.DB.QueryRowContext(t.Context(), `SELECT count(*) FROM webhook_events WHERE type = $1`, webhook.ItemsAppended).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != 0 {
		t.Errorf("%d items_appended events without a subscriber", events)
	}
}

// An append that does not commit records nothing: a transaction rolled
// back after the append statement, and a batch that fails on a conflict.
func TestItemsAppendedNothingFromRolledBackAppends(t *testing.T) {
	t.Parallel()
	db, convs, hooks, owner := itemsSubscriber(t)
	c := convCreate(t, convs, owner)

	tx, err := db.DB.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := tx.QueryContext(t.Context(), postgres.AppendItemsSQL,
		postgres.AppendItemsArgs(c.ID, conversation.Scope{UserID: owner}, conversation.ItemBatch{Items: callItems("gone", 2)})...)
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	var inTx int
	if err := tx.QueryRowContext(t.Context(), `SELECT count(*) FROM webhook_item_batches`).Scan(&inTx); err != nil {
		t.Fatal(err)
	}
	if inTx != 1 {
		t.Fatalf("the append's transaction sees %d batches, want 1", inTx)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if n := itemBatchRows(t, db); n != 0 {
		t.Fatalf("%d batches after the rollback", n)
	}

	if _, err := appendItems(t, convs, c, callItems("kept", 1)...); err != nil {
		t.Fatal(err)
	}
	if n := flushAll(t, hooks, longAfter); n != 1 {
		t.Fatalf("flushed %d events, want 1", n)
	}
	conflicting := append(callItems("new", 2), callItem("kept-0", "another call"))
	if _, err := appendItems(t, convs, c, conflicting...); err == nil {
		t.Fatal("a conflicting batch was stored")
	}
	if n := itemBatchRows(t, db); n != 0 {
		t.Fatalf("%d batches after a failed append", n)
	}
	if n := flushAll(t, hooks, longAfter); n != 0 {
		t.Errorf("flushed %d events after a failed append", n)
	}
	checkCoverage(t, convs, c, itemsEventsOf(t, db, c.ID, 1), 1)
}

// Two replicas' stores flush the same batches at once: each batch becomes
// one event, and a batch another transaction holds (being flushed, or its
// conversation being deleted) is passed over rather than waited for.
func TestItemsAppendedFlushedOnceByConcurrentStores(t *testing.T) {
	t.Parallel()
	url := testenv.DatabaseURL(t)
	open := func() *bun.DB {
		db, err := postgres.Open(t.Context(), url, postgres.Options{MaxOpenConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	db, other := open(), open()
	convs := postgres.NewConversationStore(db)
	owner := convSeedUser(t, db)
	subscribe(t, db, owner, webhook.ItemsAppended)
	var cs []conversation.Conversation
	for i := range 40 {
		c := convCreate(t, convs, owner)
		if _, err := appendItems(t, convs, c, callItems("x", 1+i%3)...); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}

	// Another transaction holds the first batch.
	held, err := db.DB.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()
	if _, err := held.ExecContext(t.Context(), `SELECT 1 FROM webhook_item_batches WHERE conversation_id = $1 FOR UPDATE`, cs[0].ID); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	totals := make([]int, 2)
	for i, store := range []*postgres.WebhookStore{postgres.NewWebhookStore(db), postgres.NewWebhookStore(other)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, err := store.FlushItemBatches(ctx, longAfter, 3)
				if err != nil {
					t.Errorf("store %d: %v", i, err)
					return
				}
				if n == 0 {
					return
				}
				totals[i] += n
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if totals[0]+totals[1] != len(cs)-1 {
		t.Errorf("the stores flushed %v events, want %d (all but the held batch)", totals, len(cs)-1)
	}
	if err := held.Rollback(); err != nil {
		t.Fatal(err)
	}
	if n := flushAll(t, postgres.NewWebhookStore(other), longAfter); n != 1 {
		t.Errorf("flushed %d events once the held batch was released, want 1", n)
	}
	for _, c := range cs {
		_, last, _, _, _, _ := counts(t, db, c.ID)
		checkCoverage(t, convs, c, itemsEventsOf(t, db, c.ID, 1), last)
	}
}

// A conversation deleted with a pending batch takes the batch with it; a
// flush while the deletion is under way passes over it, announcing the
// other conversations', and nothing of it is announced after.
func TestItemsAppendedDeletedConversationsBatch(t *testing.T) {
	t.Parallel()
	db, convs, hooks, owner := itemsSubscriber(t)
	gone, kept, later := convCreate(t, convs, owner), convCreate(t, convs, owner), convCreate(t, convs, owner)
	for _, c := range []conversation.Conversation{gone, kept, later} {
		if _, err := appendItems(t, convs, c, callItems("x", 2)...); err != nil {
			t.Fatal(err)
		}
	}
	if err := convs.DeleteConversation(t.Context(), gone.ID, conversation.Scope{UserID: owner}); err != nil {
		t.Fatal(err)
	}

	deleting, err := db.DB.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer deleting.Rollback()
	if _, err := deleting.ExecContext(t.Context(), `DELETE FROM conversations WHERE id = $1`, later.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	n, err := hooks.FlushItemBatches(ctx, longAfter, 20)
	if err != nil || n != 1 {
		t.Fatalf("flush during a deletion: %d events, %v; want 1 (the kept conversation's)", n, err)
	}
	if err := deleting.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := itemBatchRows(t, db); n != 0 {
		t.Errorf("%d batches left", n)
	}
	if n := flushAll(t, hooks, longAfter); n != 0 {
		t.Errorf("flushed %d more events", n)
	}
	checkCoverage(t, convs, kept, itemsEventsOf(t, db, kept.ID, 1), 2)
	for _, c := range []conversation.Conversation{gone, later} {
		if evs := itemsEventsOf(t, db, c.ID, 1); len(evs) != 0 {
			t.Errorf("deleted conversation announced: %+v", evs)
		}
	}
}

// A batch whose event cannot be written (its user is gone, so the event
// breaks webhook_events' foreign key) fails alone: the pass flushes the
// others, due after it, and returns its error; the batch stays pending
// and flushes once it can.
func TestItemsAppendedFailingBatchDoesNotStopOthers(t *testing.T) {
	t.Parallel()
	db, convs, hooks, owner := itemsSubscriber(t)
	bad := convCreate(t, convs, owner)
	if _, err := appendItems(t, convs, bad, callItems("bad", 2)...); err != nil {
		t.Fatal(err)
	}
	var others []conversation.Conversation
	for range 3 {
		c := convCreate(t, convs, owner)
		if _, err := appendItems(t, convs, c, callItems("x", 2)...); err != nil {
			t.Fatal(err)
		}
		others = append(others, c)
	}
	// First by due_at, so every pass meets it first.
	if _, err := db.DB.ExecContext(t.Context(), `UPDATE webhook_item_batches SET user_id = $2, due_at = due_at - interval '1 hour' WHERE conversation_id = $1`,
		bad.ID, uuid.New()); err != nil {
		t.Fatal(err)
	}
	for pass := range 2 {
		n, err := hooks.FlushItemBatches(t.Context(), longAfter, 20)
		if want := len(others) * (1 - pass); n != want || err == nil {
			t.Fatalf("pass %d: flushed %d events, err %v; want %d and the bad batch's error", pass, n, err, want)
		}
	}
	if n := itemBatchRows(t, db); n != 1 {
		t.Fatalf("%d batches left, want the failing one", n)
	}
	for _, c := range others {
		checkCoverage(t, convs, c, itemsEventsOf(t, db, c.ID, 1), 2)
	}
	if _, err := db.DB.ExecContext(t.Context(), `UPDATE webhook_item_batches SET user_id = $2 WHERE conversation_id = $1`, bad.ID, owner); err != nil {
		t.Fatal(err)
	}
	if n := flushAll(t, hooks, longAfter); n != 1 {
		t.Fatalf("flushed %d events once the batch could be written, want 1", n)
	}
	checkCoverage(t, convs, bad, itemsEventsOf(t, db, bad.ID, 1), 2)
}
