package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

// listAll pages through ListConversationsMatching with pages of size and
// returns the ids in order.
func listAll(t *testing.T, s *postgres.ConversationStore, owner uuid.UUID, f conversation.Filter, size int) []uuid.UUID {
	t.Helper()
	var got []uuid.UUID
	var after *conversation.ConversationCursor
	for range 100 {
		cs, err := s.ListConversationsMatching(t.Context(), owner, f, after, size)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			got = append(got, c.ID)
		}
		if len(cs) < size {
			return got
		}
		last := cs[len(cs)-1]
		after = &conversation.ConversationCursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	t.Fatal("more than 100 pages")
	return nil
}

func TestConversationStoreMetadata(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner, other := convSeedUser(t, db), convSeedUser(t, db)
	ctx := t.Context()

	// Newest last; created_at of each is its own statement's now().
	mds := []map[string]string{
		{"team": "red", "tier": "gold"},
		{"team": "blue", "tier": "gold"},
		nil,
		{"team": "red"},
		{"team": "red", "tier": "gold", "note": strings.Repeat("é", 512)},
		{"tier": "gold"},
		{"team": "red", "tier": "silver"},
	}
	var cs []conversation.Conversation
	for i, md := range mds {
		c, err := s.CreateConversation(ctx, conversation.Conversation{ID: uuid.Must(uuid.NewV7()), UserID: owner, Title: fmt.Sprint("c", i), Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// Another user's conversation with the same pairs is never listed.
	if _, err := s.CreateConversation(ctx, conversation.Conversation{ID: uuid.Must(uuid.NewV7()), UserID: other, Metadata: map[string]string{"team": "red", "tier": "gold"}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetConversation(ctx, cs[4].ID, conversation.Scope{UserID: owner})
	if err != nil || !maps.Equal(got.Metadata, mds[4]) {
		t.Fatalf("GetConversation = %v, %v; want metadata %v", got.Metadata, err, mds[4])
	}
	if got, err := s.GetConversation(ctx, cs[2].ID, conversation.Scope{}); err != nil || got.Metadata != nil {
		t.Errorf("no metadata = %#v, %v; want nil", got.Metadata, err)
	}

	ids := func(idx ...int) []uuid.UUID {
		out := make([]uuid.UUID, len(idx))
		for i, j := range idx {
			out[i] = cs[j].ID
		}
		return out
	}
	for name, tc := range map[string]struct {
		f    conversation.Filter
		want []uuid.UUID
	}{
		"one pair":                 {conversation.Filter{Metadata: map[string]string{"team": "red"}}, ids(6, 4, 3, 0)},
		"two pairs":                {conversation.Filter{Metadata: map[string]string{"team": "red", "tier": "gold"}}, ids(4, 0)},
		"rare and other":           {conversation.Filter{Metadata: map[string]string{"tier": "silver", "team": "red"}}, ids(6)},
		"no match":                 {conversation.Filter{Metadata: map[string]string{"team": "green"}}, nil},
		"key only of another pair": {conversation.Filter{Metadata: map[string]string{"tier": "red"}}, nil},
		"created range":            {conversation.Filter{CreatedAfter: cs[1].CreatedAt, CreatedBefore: cs[5].CreatedAt}, ids(4, 3, 2, 1)},
		"range and pair":           {conversation.Filter{Metadata: map[string]string{"tier": "gold"}, CreatedAfter: cs[1].CreatedAt, CreatedBefore: cs[5].CreatedAt}, ids(4, 1)},
		"after only":               {conversation.Filter{Metadata: map[string]string{"tier": "gold"}, CreatedAfter: cs[4].CreatedAt}, ids(5, 4)},
		"before only":              {conversation.Filter{CreatedBefore: cs[1].CreatedAt}, ids(0)},
	} {
		for _, size := range []int{1, 2, 50} {
			if got := listAll(t, s, owner, tc.f, size); !slices.Equal(got, tc.want) {
				t.Errorf("%s, pages of %d: %v, want %v", name, size, got, tc.want)
			}
		}
	}

	// Title only: metadata stays, updated_at moves.
	up, err := s.UpdateConversation(ctx, cs[0].ID, conversation.Scope{UserID: owner}, conversation.Change{SetTitle: true, Title: "renamed"})
	if err != nil || up.Title != "renamed" || !maps.Equal(up.Metadata, mds[0]) || !up.UpdatedAt.After(cs[0].UpdatedAt) || !up.CreatedAt.Equal(cs[0].CreatedAt) {
		t.Errorf("title update = %+v, %v", up, err)
	}
	// Metadata replaced: the old pairs no longer match, the new ones do.
	newMD := map[string]string{"team": "blue", "extra": "x"}
	up, err = s.UpdateConversation(ctx, cs[0].ID, conversation.Scope{UserID: owner}, conversation.Change{SetMetadata: true, Metadata: newMD})
	if err != nil || up.Title != "renamed" || !maps.Equal(up.Metadata, newMD) {
		t.Errorf("metadata update = %+v, %v", up, err)
	}
	if got := listAll(t, s, owner, conversation.Filter{Metadata: map[string]string{"tier": "gold"}}, 50); !slices.Equal(got, ids(5, 4, 1)) {
		t.Errorf("tier=gold after the update = %v", got)
	}
	if got := listAll(t, s, owner, conversation.Filter{Metadata: map[string]string{"team": "blue"}}, 50); !slices.Equal(got, ids(1, 0)) {
		t.Errorf("team=blue after the update = %v", got)
	}
	if got := listAll(t, s, owner, conversation.Filter{Metadata: map[string]string{"extra": "x", "team": "blue"}}, 50); !slices.Equal(got, ids(0)) {
		t.Errorf("extra=x,team=blue after the update = %v", got)
	}
	// Cleared metadata leaves no index rows.
	if _, err := s.UpdateConversation(ctx, cs[0].ID, conversation.Scope{UserID: owner}, conversation.Change{SetMetadata: true}); err != nil {
		t.Fatal(err)
	}
	if n := metadataRows(t, db, cs[0].ID); n != 0 {
		t.Errorf("%d metadata rows after clearing", n)
	}

	if _, err := s.UpdateConversation(ctx, cs[1].ID, conversation.Scope{UserID: other}, conversation.Change{SetTitle: true, Title: "x"}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("someone else's update = %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateConversation(ctx, uuid.New(), conversation.Scope{UserID: owner}, conversation.Change{SetTitle: true}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("a missing conversation's update = %v, want ErrNotFound", err)
	}
	if err := s.DeleteConversation(ctx, cs[4].ID, conversation.Scope{UserID: owner}); err != nil {
		t.Fatal(err)
	}
	if n := metadataRows(t, db, cs[4].ID); n != 0 {
		t.Errorf("%d metadata rows after the delete", n)
	}
}

func metadataRows(t *testing.T, db *bun.DB, id uuid.UUID) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM conversation_metadata WHERE conversation_id = ?", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestConversationStoreMetadataOldBinary: a conversation an older binary
// creates (its INSERT names no metadata) reads back without metadata and
// takes metadata later.
func TestConversationStoreMetadataOldBinary(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	s := postgres.NewConversationStore(db)
	owner := convSeedUser(t, db)
	id := uuid.Must(uuid.NewV7())
	if _, err := db.ExecContext(t.Context(), `INSERT INTO conversations (id, user_id, room_id, title) VALUES (?, ?, NULL, 'old')`, id, owner); err != nil {
		t.Fatal(err)
	}
	if c, err := s.GetConversation(t.Context(), id, conversation.Scope{UserID: owner}); err != nil || c.Metadata != nil || c.Title != "old" {
		t.Fatalf("old row = %+v, %v", c, err)
	}
	if _, err := s.UpdateConversation(t.Context(), id, conversation.Scope{UserID: owner}, conversation.Change{SetMetadata: true, Metadata: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, s, owner, conversation.Filter{Metadata: map[string]string{"k": "v"}}, 10); !slices.Equal(got, []uuid.UUID{id}) {
		t.Errorf("filtered = %v", got)
	}
}

// explainNode is a node of EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON).
type explainNode struct {
	NodeType   string        `json:"Node Type"`
	IndexName  string        `json:"Index Name"`
	ActualRows float64       `json:"Actual Rows"`
	Loops      float64       `json:"Actual Loops"`
	SharedHit  int64         `json:"Shared Hit Blocks"`
	SharedRead int64         `json:"Shared Read Blocks"`
	Plans      []explainNode `json:"Plans"`
}

func (n explainNode) walk(f func(explainNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

// explainPage runs EXPLAIN (ANALYZE, BUFFERS) of query prepared under
// plan_cache_mode mode with the literal parameters args, and returns the
// plan and its text.
func explainPage(t *testing.T, db *bun.DB, mode, query string, args ...string) (explainNode, string) {
	t.Helper()
	ctx := t.Context()
	conn, err := db.DB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET plan_cache_mode = "+mode); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "PREPARE page AS "+query); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "DEALLOCATE page; RESET plan_cache_mode")
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
		if a == "NULL" {
			quoted[i] = a
		}
	}
	exec := "EXECUTE page(" + strings.Join(quoted, ", ") + ")"
	var raw string
	if err := conn.QueryRowContext(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+exec).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var out []struct {
		Plan explainNode `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(raw), &out); err != nil || len(out) != 1 {
		t.Fatalf("decode plan %s: %v", raw, err)
	}
	rows, err := conn.QueryContext(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) "+exec)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var text []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		text = append(text, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out[0].Plan, strings.Join(text, "\n")
}

// seedMetadataConversations inserts n conversations of owner, one a second
// back from now, the way CreateConversation stores them: every one has
// tier=common when its number is even, tier=rare when it is a multiple of
// rareEvery (else tier=other), and team=t<number mod 7>. Bulk SQL:
// CreateConversation one by one would take minutes.
func seedMetadataConversations(t *testing.T, db *bun.DB, owner uuid.UUID, n, rareEvery int) {
	t.Helper()
	ctx := t.Context()
	if _, err := db.ExecContext(ctx, `INSERT INTO conversations (id, user_id, title, metadata, created_at, updated_at)
SELECT gen_random_uuid(), ?, 'c' || g,
       jsonb_build_object('tier', CASE WHEN g % ? = 0 THEN 'rare' WHEN g % 2 = 0 THEN 'common' ELSE 'other' END,
                          'team', 't' || (g % 7)),
       now() - g * interval '1 second', now() - g * interval '1 second'
  FROM generate_series(1, ?) g`, owner, rareEvery, n); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO conversation_metadata (conversation_id, key, value, user_id, created_at)
SELECT c.id, e.key, e.value, c.user_id, c.created_at FROM conversations c, jsonb_each_text(c.metadata) e WHERE c.user_id = ?`, owner); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `VACUUM ANALYZE conversations, conversation_metadata`); err != nil {
		t.Fatal(err)
	}
}

// TestConversationStoreMetadataPlan shows that a filtered ListConversations
// page costs the same at 2,000 and at 20,000 conversations, for a value
// half of them carry and one that few do, on the first page and deep into
// the list, with custom and generic plans: one range scan of
// conversation_metadata_page_idx (or, for a time range alone,
// conversations_user_created_idx) that reads no more entries than the page,
// and a bounded number of buffers. The plan text it logs is the one quoted
// at ListConversationsByMetadataSQL.
func TestConversationStoreMetadataPlan(t *testing.T) {
	t.Parallel()
	const limit = 51
	for _, n := range []int{2_000, 20_000} {
		db := testenv.DB(t)
		owner := convSeedUser(t, db)
		// Others' conversations share the table, as in production.
		seedMetadataConversations(t, db, convSeedUser(t, db), n/4, 50)
		// rare: every 330th, so 6 or 60.
		seedMetadataConversations(t, db, owner, n, 330)
		var midAt time.Time
		var midID uuid.UUID
		if err := db.QueryRowContext(t.Context(), `SELECT created_at, id FROM conversations WHERE user_id = ? AND title = ?`, owner, fmt.Sprint("c", n/2)).Scan(&midAt, &midID); err != nil {
			t.Fatal(err)
		}
		mid, inf, ninf, nilID := midAt.Format(time.RFC3339Nano), "infinity", "-infinity", uuid.Nil.String()
		o := owner.String()
		// The probe that picks the driving pair: tier=rare (n/330 entries)
		// over team=t0 (n/7), each counted up to RarestPairProbe entries.
		probeArgs := []string{o, "{team,tier}", "{t0,rare}", inf, nilID, ninf, fmt.Sprint(postgres.RarestPairProbe)}
		for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
			plan, text := explainPage(t, db, mode, postgres.RarestPairSQL, probeArgs...)
			t.Logf("%d conversations, rarest pair, %s:\n%s", n, mode, text)
			plan.walk(func(node explainNode) {
				if node.NodeType == "Seq Scan" || (node.IndexName != "" && node.IndexName != "conversation_metadata_page_idx") {
					t.Errorf("%s: the probe reads by %s %s", mode, node.NodeType, node.IndexName)
				}
			})
			if buffers := plan.SharedHit + plan.SharedRead; buffers > 2*(postgres.RarestPairProbe+50) {
				t.Errorf("%s: the probe read %d buffers for 2 pairs", mode, buffers)
			}
		}
		var key string
		if err := db.DB.QueryRowContext(t.Context(), postgres.RarestPairSQL, owner, []string{"team", "tier"}, []string{"t0", "rare"},
			"infinity", uuid.Nil, "-infinity", postgres.RarestPairProbe).Scan(&key); err != nil || key != "tier" {
			t.Errorf("the rarest pair is %q, %v; want tier", key, err)
		}

		for _, tc := range []struct {
			name, sql, index string
			args             []string
			maxScanRows      float64
		}{
			{"common first page", postgres.ListConversationsByMetadataSQL, "conversation_metadata_page_idx",
				[]string{o, "tier", "common", inf, nilID, ninf, "NULL", fmt.Sprint(limit)}, limit},
			{"common deep page", postgres.ListConversationsByMetadataSQL, "conversation_metadata_page_idx",
				[]string{o, "tier", "common", mid, midID.String(), ninf, "NULL", fmt.Sprint(limit)}, limit},
			{"rare first page", postgres.ListConversationsByMetadataSQL, "conversation_metadata_page_idx",
				[]string{o, "tier", "rare", inf, nilID, ninf, "NULL", fmt.Sprint(limit)}, limit},
			{"common in a time range", postgres.ListConversationsByMetadataSQL, "conversation_metadata_page_idx",
				[]string{o, "tier", "common", mid, nilID, midAt.Add(-time.Duration(n/4) * time.Second).Format(time.RFC3339Nano), "NULL", fmt.Sprint(limit)}, limit},
			// Driven by the rare pair, as RarestPairSQL picks: the common
			// one only filters.
			{"rare and common", postgres.ListConversationsByMetadataSQL, "conversation_metadata_page_idx",
				[]string{o, "tier", "rare", inf, nilID, ninf, `{"team":"t0"}`, fmt.Sprint(limit)}, float64(n / 330)},
			{"time range only", postgres.ListConversationsInRangeSQL, "conversations_user_created_idx",
				[]string{o, mid, nilID, ninf, fmt.Sprint(limit)}, limit},
		} {
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				t.Run(fmt.Sprintf("%d/%s/%s", n, tc.name, mode), func(t *testing.T) {
					plan, text := explainPage(t, db, mode, tc.sql, tc.args...)
					t.Logf("%d conversations, %s, %s:\n%s", n, tc.name, mode, text)
					var scans int
					plan.walk(func(node explainNode) {
						switch node.NodeType {
						case "Seq Scan":
							t.Errorf("a sequential scan of %d rows: the page is not an index range scan", int(node.ActualRows))
						case "Bitmap Index Scan":
							// The page's own rows, fetched by primary key; or,
							// where the planner knows the pair's range to be
							// small, all its entries: a few more than an
							// ordered scan would read.
							switch node.IndexName {
							case "conversations_pkey":
								if node.ActualRows > limit {
									t.Errorf("%v rows fetched by primary key for a page of %d", node.ActualRows, limit)
								}
							case tc.index:
								scans++
								if node.ActualRows > max(tc.maxScanRows, 2*limit) {
									t.Errorf("a bitmap scan of %s read %v entries for a page of %d", tc.index, node.ActualRows, limit)
								}
							default:
								t.Errorf("a bitmap scan of %s", node.IndexName)
							}
						case "Index Scan", "Index Only Scan", "Index Scan Backward", "Index Only Scan Backward":
							if node.IndexName == tc.index {
								scans++
								if node.ActualRows*node.Loops > tc.maxScanRows {
									t.Errorf("the scan of %s read %v entries for a page of %d", tc.index, node.ActualRows*node.Loops, limit)
								}
							}
						case "Sort":
							if node.ActualRows > limit {
								t.Errorf("a sort of %v rows: the page is sorted after the scan", node.ActualRows)
							}
						}
					})
					if scans != 1 {
						t.Errorf("%d scans of %s, want 1", scans, tc.index)
					}
					// Per entry read at most a primary-key lookup (its index
					// levels and heap page) and an index leaf: bounded by the
					// page (or the driving pair's entries in range), not by
					// the table.
					if buffers := plan.SharedHit + plan.SharedRead; float64(buffers) > 5*max(limit, tc.maxScanRows) {
						t.Errorf("%d buffers for a page of %d", buffers, limit)
					}
				})
			}
		}
	}
}
