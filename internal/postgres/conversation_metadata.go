package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
)

// A conversation's metadata lives twice (see the migration
// conversation_metadata): as conversations.metadata, which readers get, and
// as rows of conversation_metadata, one a pair, whose index
// (user_id, key, value, created_at DESC, conversation_id DESC) serves the
// filtered pages. The new binary writes both in one statement or
// transaction.
const (
	// createConversationWithMetadataSQL is createConversationSQL with the
	// metadata ($5, a JSON object of strings) in both places.
	createConversationWithMetadataSQL = `WITH c AS (
    INSERT INTO conversations (id, user_id, room_id, title, metadata)
    VALUES ($1::uuid, $2::uuid, $3::uuid, $4::text, $5::jsonb)
 RETURNING id, user_id, created_at, updated_at
), m AS (
    INSERT INTO conversation_metadata (conversation_id, key, value, user_id, created_at)
    SELECT c.id, e.key, e.value, c.user_id, c.created_at
      FROM c, jsonb_each_text($5::jsonb) AS e
)
SELECT created_at, updated_at FROM c`

	// updateConversationSQL changes the title ($4 when $3) and the metadata
	// ($6 when $5) under the row lock, which UpdateConversation then holds
	// while it rewrites the conversation's metadata rows.
	// $1 conversation id, $2 owner or NULL.
	updateConversationSQL = `UPDATE conversations
   SET title = CASE WHEN $3::boolean THEN $4::text ELSE title END,
       metadata = CASE WHEN $5::boolean THEN $6::jsonb ELSE metadata END,
       updated_at = now()
 WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)
RETURNING ` + conversationColumns

	// replaceMetadataRowsSQL makes the metadata rows of conversation $1
	// (owner $3, created at $4) the pairs of $2. It runs after
	// updateConversationSQL in the same transaction: the row lock keeps
	// every other writer of these rows out, and at READ COMMITTED this
	// statement's snapshot, taken after the lock, sees the last writer's.
	replaceMetadataRowsSQL = `WITH gone AS (
    DELETE FROM conversation_metadata
     WHERE conversation_id = $1::uuid AND NOT jsonb_exists($2::jsonb, key)
)
INSERT INTO conversation_metadata (conversation_id, key, value, user_id, created_at)
SELECT $1::uuid, e.key, e.value, $3::uuid, $4::timestamptz
  FROM jsonb_each_text($2::jsonb) AS e
    ON CONFLICT (conversation_id, key) DO UPDATE SET value = EXCLUDED.value
 WHERE conversation_metadata.value <> EXCLUDED.value`

	// ListConversationsInRangeSQL is a page of a user's conversations
	// created in [$4, $2): the ListConversations index range scan with a
	// lower bound. ($2, $3) is the page's exclusive upper position, the
	// cursor or (created_before, nil uuid); $5 the limit.
	ListConversationsInRangeSQL = `SELECT ` + conversationColumns + `
  FROM conversations
 WHERE user_id = $1::uuid
   AND (created_at, id) < ($2::timestamptz, $3::uuid)
   AND created_at >= $4::timestamptz
 ORDER BY created_at DESC, id DESC
 LIMIT $5`

	// ListConversationsByMetadataSQL is a page of a user's conversations
	// whose metadata holds the pair ($2, $3), and every pair of $7 (NULL when
	// there are no others), created in [$6, $4): an ordered range scan of
	// conversation_metadata_page_idx stopped by the LIMIT ($8), whose ids
	// are then fetched by primary key. Entries of the driving pair are
	// matches already; only other pairs can make the scan pass over one,
	// and each such entry costs a primary-key lookup. ($4, $5) is the page's
	// exclusive upper position, as in ListConversationsInRangeSQL. The ids
	// come out of an ARRAY() so that the planner can neither join nor sort
	// before the LIMIT.
	//
	// Its generic plan for a page of 51 of 20,000 conversations of one user,
	// 10,000 of them carrying the pair (TestConversationStoreMetadataPlan
	// logs it, EXPLAIN (ANALYZE, BUFFERS)):
	//
	//	Sort (actual rows=51 loops=1)
	//	  Sort Key: conversations.created_at DESC, conversations.id DESC
	//	  Buffers: shared hit=112
	//	  InitPlan 2 (returns $1)
	//	    ->  Limit (actual rows=51 loops=1)
	//	          ->  Index Only Scan using conversation_metadata_page_idx on conversation_metadata m (actual rows=51 loops=1)
	//	                Index Cond: ((user_id = $1) AND (key = $2) AND (value = $3) AND (ROW(created_at, conversation_id) < ROW($4, $5)) AND (created_at >= $6))
	//	                Filter: (($7 IS NULL) OR (SubPlan 1))
	//	                Buffers: shared hit=7
	//	  ->  Bitmap Heap Scan on conversations (actual rows=51 loops=1)
	//	        Recheck Cond: (id = ANY ($1))
	//	        ->  Bitmap Index Scan on conversations_pkey (actual rows=51 loops=1)
	//
	// Buffers per page, custom and generic plans alike: 111 at 2,000
	// conversations and 112 at 20,000 for the common pair, first page or
	// mid-list or in a time range; 208 at 20,000 for a pair only 60 carry
	// (their rows lie on 51 heap pages, the common pair's on 3). With a rare
	// and a common pair it is driven by the rare one (RarestPairSQL): 268
	// buffers to read its 60 entries and find the 8 that hold both, after
	// the probe's 220 (1,060 entries: the common pair's first 1,000 and the
	// rare pair's 60).
	ListConversationsByMetadataSQL = `SELECT ` + conversationColumns + `
  FROM conversations
 WHERE id = ANY (ARRAY(
        SELECT m.conversation_id
          FROM conversation_metadata m
         WHERE m.user_id = $1::uuid AND m.key = $2::text AND m.value = $3::text
           AND (m.created_at, m.conversation_id) < ($4::timestamptz, $5::uuid)
           AND m.created_at >= $6::timestamptz
           AND ($7::jsonb IS NULL
                OR (SELECT c.metadata @> $7::jsonb FROM conversations c WHERE c.id = m.conversation_id))
         ORDER BY m.created_at DESC, m.conversation_id DESC
         LIMIT $8))
 ORDER BY created_at DESC, id DESC`

	// RarestPairSQL picks, of the pairs ($2[i], $3[i]), the one fewest of
	// the user's conversations in the page's range carry, counting each up
	// to $7 only: the pair ListConversationsByMetadataSQL drives its scan
	// with, so that the other pairs make it pass over as few entries as the
	// index can tell. Each count is an index-only range scan of at most $7
	// entries: the ORDER BY, which the index delivers, keeps the planner from
	// a bitmap scan, which would read every entry of a common pair. Bounds as
	// in ListConversationsByMetadataSQL.
	RarestPairSQL = `SELECT p.k
  FROM unnest($2::text[], $3::text[]) AS p (k, v)
 ORDER BY (SELECT count(*)
             FROM (SELECT 1
                     FROM conversation_metadata m
                    WHERE m.user_id = $1::uuid AND m.key = p.k AND m.value = p.v
                      AND (m.created_at, m.conversation_id) < ($4::timestamptz, $5::uuid)
                      AND m.created_at >= $6::timestamptz
                    ORDER BY m.created_at DESC, m.conversation_id DESC
                    LIMIT $7) AS hit), p.k
 LIMIT 1`

	// RarestPairProbe is how many entries RarestPairSQL counts of a pair at
	// most: past it, pairs are alike to it.
	RarestPairProbe = 1000
)

// metadataColumn scans conversations.metadata.
type metadataColumn map[string]string

// Scan implements sql.Scanner.
func (m *metadataColumn) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case nil:
		*m = nil
		return nil
	case []byte:
		b = v
	case string:
		b = []byte(v)
	default:
		return fmt.Errorf("metadata: cannot scan %T", src)
	}
	var out map[string]string
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	if len(out) == 0 {
		out = nil
	}
	*m = out
	return nil
}

// metadataArg is metadata as the JSON object the statements take.
func metadataArg(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode metadata: %w", err)
	}
	return string(b), nil
}

// createConversationStatement returns the statement that stores c and its
// parameters: without metadata the one older binaries run too.
func createConversationStatement(c conversation.Conversation) (string, []any, error) {
	room := uuid.NullUUID{UUID: c.RoomID, Valid: c.RoomID != uuid.Nil}
	if len(c.Metadata) == 0 {
		return createConversationSQL, []any{c.ID, c.UserID, room, c.Title}, nil
	}
	md, err := metadataArg(c.Metadata)
	if err != nil {
		return "", nil, err
	}
	return createConversationWithMetadataSQL, []any{c.ID, c.UserID, room, c.Title, md}, nil
}

// UpdateConversation implements conversation.Store.
func (s *ConversationStore) UpdateConversation(ctx context.Context, id uuid.UUID, scope conversation.Scope, ch conversation.Change) (_ conversation.Conversation, err error) {
	defer markUnavailable(&err)
	md, err := metadataArg(ch.Metadata)
	if err != nil {
		return conversation.Conversation{}, err
	}
	var r conversationRow
	err = inTx(ctx, s.bunDB, "update conversation", func(ctx context.Context, tx bun.Tx) error {
		err := tx.Tx.QueryRowContext(ctx, updateConversationSQL, uuidArg(id), scopeArg(scope), ch.SetTitle, ch.Title, ch.SetMetadata, md).Scan(r.dest()...)
		if errors.Is(err, sql.ErrNoRows) {
			return conversation.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("update conversation: %w", err)
		}
		if !ch.SetMetadata {
			return nil
		}
		if _, err := tx.Tx.ExecContext(ctx, replaceMetadataRowsSQL, uuidArg(id), md, uuidArg(r.UserID), r.CreatedAt); err != nil {
			return fmt.Errorf("update conversation: metadata rows: %w", err)
		}
		return nil
	})
	if err != nil {
		return conversation.Conversation{}, err
	}
	return r.conversation(), nil
}

// pageBounds are a filtered page's bounds on (created_at, id): strictly
// below (upperAt, upperID), at or above lower.
type pageBounds struct {
	upperAt pgtype.Timestamptz
	upperID uuid.UUID
	lower   pgtype.Timestamptz
}

// boundsOf folds f's time range and the cursor into one upper position and
// a lower time, so that every page is the same range scan; the open ends
// are infinities, never NULLs, which would keep a generic plan from using
// them as index conditions.
func boundsOf(f conversation.Filter, after *conversation.ConversationCursor) pageBounds {
	b := pageBounds{
		upperAt: pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true},
		lower:   pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true},
	}
	if !f.CreatedBefore.IsZero() {
		// (created_before, nil uuid) excludes created_before itself: no id
		// is below the nil uuid.
		b.upperAt = pgtype.Timestamptz{Time: f.CreatedBefore, Valid: true}
	}
	if after != nil && (f.CreatedBefore.IsZero() || after.CreatedAt.Before(f.CreatedBefore)) {
		b.upperAt, b.upperID = pgtype.Timestamptz{Time: after.CreatedAt, Valid: true}, after.ID
	}
	if !f.CreatedAfter.IsZero() {
		b.lower = pgtype.Timestamptz{Time: f.CreatedAfter, Valid: true}
	}
	return b
}

// ListConversationsMatching implements conversation.Store.
func (s *ConversationStore) ListConversationsMatching(ctx context.Context, userID uuid.UUID, f conversation.Filter, after *conversation.ConversationCursor, limit int) (_ []conversation.Conversation, err error) {
	defer markUnavailable(&err)
	b := boundsOf(f, after)
	scan := func(rows *sql.Rows) (conversation.Conversation, error) {
		var r conversationRow
		err := rows.Scan(r.dest()...)
		return r.conversation(), err
	}
	if len(f.Metadata) == 0 {
		return readRows(ctx, s.db, "list conversations", limit, scan, ListConversationsInRangeSQL,
			uuidArg(userID), b.upperAt, uuidArg(b.upperID), b.lower, limit)
	}
	key, err := s.drivingKey(ctx, userID, f.Metadata, b)
	if err != nil {
		return nil, err
	}
	// The driving pair's entries match it already; the others, if any, are
	// checked on the conversation.
	var others any
	if len(f.Metadata) > 1 {
		rest := maps.Clone(f.Metadata)
		delete(rest, key)
		if others, err = metadataArg(rest); err != nil {
			return nil, err
		}
	}
	return readRows(ctx, s.db, "list conversations", limit, scan, ListConversationsByMetadataSQL,
		uuidArg(userID), key, f.Metadata[key], b.upperAt, uuidArg(b.upperID), b.lower, others, limit)
}

// drivingKey returns the key of the pair of md whose entries the page scan
// walks: the only one, or the rarest in the page's range.
func (s *ConversationStore) drivingKey(ctx context.Context, userID uuid.UUID, md map[string]string, b pageBounds) (string, error) {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	if len(keys) == 1 {
		return keys[0], nil
	}
	slices.Sort(keys)
	values := make([]string, len(keys))
	for i, k := range keys {
		values[i] = md[k]
	}
	var key string
	err := s.db.QueryRowContext(ctx, RarestPairSQL, uuidArg(userID), keys, values, b.upperAt, uuidArg(b.upperID), b.lower, RarestPairProbe).Scan(&key)
	if err != nil {
		return "", fmt.Errorf("list conversations: rarest pair: %w", err)
	}
	return key, nil
}
