package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/migrations"
)

// textItem is a user message item with its protojson payload.
func textItem(id, text string) conversation.NewItem {
	payload := fmt.Sprintf(`{"message":{"id":%q,"role":"CHAT_ROLE_USER","content":[{"text":%q}]}}`, id, text)
	return conversation.NewItem{
		Item:         conversation.Item{ID: id, Kind: conversation.ItemMessage, Role: conversation.RoleUser, Text: text, Payload: []byte(payload)},
		MessageRowID: uuid.Must(uuid.NewV7()),
	}
}

func callItem(id, callID string) conversation.NewItem {
	payload := fmt.Sprintf(`{"functionCall":{"id":%q,"callId":%q,"name":"lookup","arguments":"{}"}}`, id, callID)
	return conversation.NewItem{Item: conversation.Item{ID: id, Kind: conversation.ItemFunctionCall, CallID: callID, Payload: []byte(payload)}}
}

func appendItems(t *testing.T, s *postgres.ConversationStore, c conversation.Conversation, items ...conversation.NewItem) (conversation.StoredItems, error) {
	t.Helper()
	for i := range items {
		items[i].Agent = "agent-a"
	}
	return s.AppendItems(t.Context(), c.ID, conversation.Scope{UserID: c.UserID}, conversation.ItemBatch{Items: items})
}

func itemSeqs(items []conversation.Item) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.Seq
	}
	return out
}

// counts reads a conversation's item and message counters and rows.
func counts(t *testing.T, db *bun.DB, id uuid.UUID) (itemCount, lastItem, msgCount, lastSeq, itemRows, msgRows int64) {
	t.Helper()
	err := db.QueryRowContext(t.Context(), `SELECT item_count, last_item_seq, message_count, last_seq,
	        (SELECT count(*) FROM items WHERE conversation_id = c.id), (SELECT count(*) FROM messages WHERE conversation_id = c.id)
	   FROM conversations c WHERE id = ?`, id).Scan(&itemCount, &lastItem, &msgCount, &lastSeq, &itemRows, &msgRows)
	if err != nil {
		t.Fatal(err)
	}
	return
}

func TestItemStoreAppendReplayConflict(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	c := convCreate(t, s, convSeedUser(t, db))

	first, err := appendItems(t, s, c, textItem("item_1", "hello"), callItem("item_2", "call_1"), textItem("item_3", "world"))
	if err != nil {
		t.Fatal(err)
	}
	if got := itemSeqs(first.Items); !slices.Equal(got, []int64{1, 2, 3}) || first.Replayed {
		t.Fatalf("first append: seqs %v replayed %v, want [1 2 3] false", got, first.Replayed)
	}
	if first.Items[0].MessageSeq != 1 || first.Items[1].MessageSeq != 0 || first.Items[2].MessageSeq != 2 {
		t.Errorf("message seqs %d %d %d, want 1 0 2", first.Items[0].MessageSeq, first.Items[1].MessageSeq, first.Items[2].MessageSeq)
	}
	if len(first.Messages) != 2 || first.Messages[1].Content != "world" || first.Messages[1].Seq != 2 {
		t.Errorf("messages %+v, want hello and world at 1 and 2", first.Messages)
	}

	// The same batch, its payloads spelled with other spacing and key
	// order: a replay that stores nothing.
	again := []conversation.NewItem{textItem("item_1", "hello"), callItem("item_2", "call_1"), textItem("item_3", "world")}
	again[1].Payload = []byte(`{ "functionCall" : { "arguments":"{}", "name":"lookup", "callId":"call_1", "id":"item_2" } }`)
	replay, err := appendItems(t, s, c, again...)
	if err != nil {
		t.Fatal(err)
	}
	if got := itemSeqs(replay.Items); !slices.Equal(got, []int64{1, 2, 3}) || !replay.Replayed {
		t.Fatalf("replay: seqs %v replayed %v, want [1 2 3] true", got, replay.Replayed)
	}
	if replay.Items[1].CallID != "call_1" || replay.Items[0].Agent != "agent-a" || replay.Items[2].MessageSeq != 2 {
		t.Errorf("replayed items %+v lack their stored columns", replay.Items)
	}

	// One stored item and a new one: the new one is stored after the rest.
	mixed, err := appendItems(t, s, c, textItem("item_3", "world"), callItem("item_4", "call_2"))
	if err != nil {
		t.Fatal(err)
	}
	if got := itemSeqs(mixed.Items); !slices.Equal(got, []int64{3, 4}) || mixed.Replayed {
		t.Fatalf("mixed: seqs %v replayed %v, want [3 4] false", got, mixed.Replayed)
	}

	// A stored id with other content fails the whole batch.
	if _, err := appendItems(t, s, c, callItem("item_5", "call_3"), textItem("item_1", "changed")); !errors.Is(err, conversation.ErrItemConflict) {
		t.Fatalf("conflicting append: %v, want ErrItemConflict", err)
	}
	ic, li, mc, ls, ir, mr := counts(t, db, c.ID)
	if ic != 4 || li != 4 || mc != 2 || ls != 2 || ir != 4 || mr != 2 {
		t.Errorf("counters items %d/%d messages %d/%d rows %d/%d, want 4/4 2/2 4/2", ic, li, mc, ls, ir, mr)
	}

	other := convSeedUser(t, db)
	if _, err := s.AppendItems(t.Context(), c.ID, conversation.Scope{UserID: other}, conversation.ItemBatch{Items: []conversation.NewItem{callItem("x", "y")}}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("append to another user's conversation: %v, want ErrNotFound", err)
	}
}

func TestItemStoreListItems(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	c := convCreate(t, s, convSeedUser(t, db))
	scope := conversation.Scope{UserID: c.UserID}
	for i := range 5 {
		b := conversation.ItemBatch{Items: []conversation.NewItem{callItem(fmt.Sprintf("c%d", i), "x")}}
		b.Items[0].Agent = []string{"a", "b"}[i%2]
		if _, err := s.AppendItems(t.Context(), c.ID, scope, b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		r    conversation.ItemRange
		want []int64
	}{
		{conversation.ItemRange{Order: conversation.OrderNewestFirst, Limit: 3}, []int64{5, 4, 3}},
		{conversation.ItemRange{Order: conversation.OrderNewestFirst, Before: 3, Limit: 3}, []int64{2, 1}},
		{conversation.ItemRange{Order: conversation.OrderOldestFirst, After: 1, Limit: 2}, []int64{2, 3}},
		{conversation.ItemRange{Order: conversation.OrderOldestFirst, Agent: "a", Limit: 10}, []int64{1, 3, 5}},
		{conversation.ItemRange{Order: conversation.OrderNewestFirst, Agent: "b", Limit: 10}, []int64{4, 2}},
		{conversation.ItemRange{Order: conversation.OrderNewestFirst, Agent: "nobody", Limit: 10}, []int64{}},
	} {
		tc.r.ConversationID, tc.r.Scope = c.ID, scope
		items, err := s.ListItems(t.Context(), tc.r)
		if err != nil {
			t.Fatal(err)
		}
		if got := itemSeqs(items); !slices.Equal(got, tc.want) {
			t.Errorf("ListItems(%+v) = %v, want %v", tc.r, got, tc.want)
		}
	}
	_, err := s.ListItems(t.Context(), conversation.ItemRange{ConversationID: c.ID, Scope: conversation.Scope{UserID: uuid.New()}, Limit: 1})
	if !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("ListItems out of scope: %v, want ErrNotFound", err)
	}
	items, last, exists, err := s.NewItems(t.Context(), c.ID, 3, 10)
	if err != nil || !exists || last != 5 || !slices.Equal(itemSeqs(items), []int64{4, 5}) {
		t.Errorf("NewItems = %v, %d, %v, %v; want [4 5], 5, true", itemSeqs(items), last, exists, err)
	}
	seqs, err := s.LastItemSeqs(t.Context(), []uuid.UUID{c.ID, uuid.New()})
	if err != nil || len(seqs) != 1 || seqs[c.ID] != 5 {
		t.Errorf("LastItemSeqs = %v, %v", seqs, err)
	}
}

// oldSaveTurn saves a turn the way the previous release's binary does:
// PreviousSaveTurnSQL, which writes messages and turns only.
func oldSaveTurn(ctx context.Context, db *bun.DB, c conversation.Conversation, turnID, user, assistant string) error {
	rows, err := db.DB.QueryContext(ctx, postgres.PreviousSaveTurnSQL, postgres.SaveTurnArgs(c.ID, conversation.Scope{}, turnID, convMsgs(user, assistant))...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
	}
	return rows.Err()
}

// TestItemStoreRollingUpdate runs the previous release's SaveTurn beside
// this one's on one conversation: every message gets its item, item seqs
// stay gap-free, and each binary replays the other's turns.
func TestItemStoreRollingUpdate(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	c := convCreate(t, s, convSeedUser(t, db))
	ctx := t.Context()
	scope := conversation.Scope{UserID: c.UserID}

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				turn := fmt.Sprintf("w%d-%d", w, i)
				var err error
				if w%2 == 0 {
					err = oldSaveTurn(ctx, db, c, turn, "u "+turn, "a "+turn)
				} else {
					_, err = s.SaveTurn(ctx, c.ID, scope, turn, convMsgs("u "+turn, "a "+turn))
				}
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
	ic, li, mc, ls, ir, mr := counts(t, db, c.ID)
	if ic != 80 || li != 80 || mc != 80 || ls != 80 || ir != 80 || mr != 80 {
		t.Fatalf("counters items %d/%d messages %d/%d rows %d/%d, want all 80", ic, li, mc, ls, ir, mr)
	}
	var gaps, mismatched int
	if err := db.QueryRowContext(ctx, `SELECT
	        (SELECT count(*) FROM generate_series(1, 80) g WHERE NOT EXISTS (SELECT 1 FROM items WHERE conversation_id = ? AND seq = g)),
	        (SELECT count(*) FROM messages m LEFT JOIN items i ON i.conversation_id = m.conversation_id AND i.message_seq = m.seq
	          WHERE m.conversation_id = ? AND (i.id IS NULL OR i.id <> 'saveturn:' || m.turn_id || CASE m.role WHEN 1 THEN ':user' ELSE ':assistant' END
	                OR i.payload->'message'->'content'->0->>'text' <> m.content))`, c.ID, c.ID).Scan(&gaps, &mismatched); err != nil {
		t.Fatal(err)
	}
	if gaps != 0 || mismatched != 0 {
		t.Errorf("%d item seqs missing, %d messages without their item", gaps, mismatched)
	}

	// This release replays the previous one's turn, and the previous one
	// this release's: its PreviousSaveTurnSQL fails on the turn id, and it reads
	// the turn with ReplayTurnSQL.
	saved, err := s.SaveTurn(ctx, c.ID, scope, "w0-3", convMsgs("u w0-3", "a w0-3"))
	if err != nil || !saved.Replayed || len(saved.Messages) != 2 || saved.Messages[0].Content != "u w0-3" {
		t.Errorf("replay of the old binary's turn = %+v, %v", saved, err)
	}
	err = oldSaveTurn(ctx, db, c, "w1-3", "u w1-3", "a w1-3")
	if !postgres.IsUniqueViolation(err, "turns_pkey") {
		t.Errorf("old binary's SaveTurn of a new turn id: %v, want turns_pkey violation", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM ("+strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(postgres.ReplayTurnSQL, "$1::uuid", "?::uuid"), "$2::uuid", "NULL::uuid"), "$3::text", "?::text")+") r", c.ID, "w1-3").Scan(&n); err != nil || n != 2 {
		t.Errorf("old binary's replay read %d messages, %v; want 2", n, err)
	}
	if ic, _, _, _, _, _ := counts(t, db, c.ID); ic != 80 {
		t.Errorf("replays stored items: %d, want 80", ic)
	}
}

// TestItemsMigrationBackfills migrates a database with messages from
// before items: each message becomes its item with its own seq.
func TestItemsMigrationBackfills(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := open(t, testenv.EmptyDatabaseURL(t), postgres.Options{})
	before := fstest.MapFS{}
	names, err := fs.Glob(migrations.FS, "*.up.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if name >= "20261202000200_items.up.sql" {
			break // names are sorted; later ones build on items
		}
		b, err := fs.ReadFile(migrations.FS, name)
		if err != nil {
			t.Fatal(err)
		}
		before[name] = &fstest.MapFile{Data: b}
	}
	if _, err := postgres.MigrateFS(ctx, db, discard, before); err != nil {
		t.Fatal(err)
	}
	owner := convSeedUser(t, db)
	c := conversation.Conversation{ID: uuid.Must(uuid.NewV7()), UserID: owner}
	if _, err := db.ExecContext(ctx, "INSERT INTO conversations (id, user_id) VALUES (?, ?)", c.ID, owner); err != nil {
		t.Fatal(err)
	}
	if err := oldSaveTurn(ctx, db, c, "t1", "hi", "hello"); err != nil {
		t.Fatal(err)
	}
	if err := oldSaveTurn(ctx, db, c, "", "", "unprompted"); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Migrate(ctx, db, discard); err != nil {
		t.Fatal(err)
	}
	ic, li, _, _, ir, _ := counts(t, db, c.ID)
	if ic != 3 || li != 3 || ir != 3 {
		t.Fatalf("after backfill items %d/%d rows %d, want 3", ic, li, ir)
	}
	s := postgres.NewConversationStore(db)
	items, err := s.ListItems(ctx, conversation.ItemRange{ConversationID: c.ID, Order: conversation.OrderOldestFirst, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var msgID uuid.UUID
	if err := db.QueryRowContext(ctx, "SELECT id FROM messages WHERE conversation_id = ? AND seq = 3", c.ID).Scan(&msgID); err != nil {
		t.Fatal(err)
	}
	wantIDs := []string{"saveturn:t1:user", "saveturn:t1:assistant", "saveturn:" + msgID.String()}
	for i, it := range items {
		var payload struct {
			Message struct {
				ID      string `json:"id"`
				Role    string `json:"role"`
				Content []struct {
					Text string `json:"text"`
				} `json:"content"`
				CreatedAt string `json:"createdAt"`
			} `json:"message"`
		}
		if err := json.Unmarshal(it.Payload, &payload); err != nil {
			t.Fatal(err)
		}
		if it.Seq != int64(i+1) || it.MessageSeq != it.Seq || it.ID != wantIDs[i] || payload.Message.ID != it.ID || payload.Message.CreatedAt == "" {
			t.Errorf("item %d = %+v, payload %+v; want id %s", i, it, payload, wantIDs[i])
		}
	}
	if len(items) != 3 || items[0].Role != conversation.RoleUser || items[2].MessageID != "" || items[0].MessageID != "t1" {
		t.Errorf("backfilled items %+v", items)
	}
	// New items continue after the backfilled ones.
	stored, err := s.AppendItems(ctx, c.ID, conversation.Scope{}, conversation.ItemBatch{Items: []conversation.NewItem{callItem("later", "c")}})
	if err != nil || stored.Items[0].Seq != 4 {
		t.Errorf("append after backfill = %+v, %v; want seq 4", stored, err)
	}
}
