package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/webhook"
)

const (
	// AppendItemsSQL appends a batch of items in one statement, the way
	// PreviousSaveTurnSQL appends a turn: it bumps the conversation's last_item_seq
	// (and last_seq by the batch's messages) under the row lock, records
	// the turn id when SaveTurn gives one, inserts the items and the
	// Messages of those that have one. An item id (or turn id) stored
	// before fails the whole statement with a unique violation, leaving
	// nothing behind; the store then sorts replays from conflicts under
	// the row lock. No row back means no such conversation in scope.
	//
	// $1 conversation id, $2 owner or NULL, $3 turn id or NULL, $4 number
	// of items, $5 number of messages, $6 agent, $7 message id; then one
	// array per column, an element per item: $8 ids, $9 kinds, $10 roles
	// (0: none), $11 texts, $12 call ids (''), $13 payloads ('': a plain
	// text message's, made here), $14 message ids (NULL: no message), $15
	// the item's place among the batch's messages (0: none); $16 the
	// webhook.ItemsWindow in seconds, $17 webhook.MaxItemsPerEvent, $18
	// webhook.ItemsAppended.
	//
	// When the owner has an endpoint taking conversation.items_appended,
	// the batch CTE also opens or extends the conversation's pending
	// webhook_item_batches row, due at webhook.ItemBatch.DueAt; otherwise
	// it only probes the owner's endpoints and writes nothing.
	AppendItemsSQL = `WITH conv AS (
    UPDATE conversations
       SET last_item_seq = last_item_seq + $4::bigint,
           item_count = item_count + $4::bigint,
           last_seq = last_seq + $5::bigint,
           message_count = message_count + $5::bigint,
           updated_at = now()
     WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)
 RETURNING user_id, last_item_seq - $4::bigint AS item_base, last_seq - $5::bigint AS msg_base
), batch AS (
    INSERT INTO webhook_item_batches AS b (conversation_id, user_id, first_seq, last_seq, opened_at, due_at)
    SELECT $1::uuid, conv.user_id, conv.item_base + 1, conv.item_base + $4::bigint, now(),
           now() + CASE WHEN $4::bigint >= $17::bigint THEN interval '0' ELSE make_interval(secs => $16::float8) END
      FROM conv
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.user_id = conv.user_id AND $18::text = ANY (e.event_types))
        ON CONFLICT (conversation_id) DO UPDATE
       SET last_seq = EXCLUDED.last_seq,
           due_at = b.opened_at + CASE WHEN EXCLUDED.last_seq - b.first_seq + 1 >= $17::bigint THEN interval '0' ELSE make_interval(secs => $16::float8) END
), turn AS (
    INSERT INTO turns (conversation_id, turn_id, first_seq, message_count)
    SELECT $1::uuid, $3::text, conv.msg_base + 1, $5::smallint
      FROM conv
     WHERE $3::text IS NOT NULL
), new AS (
    SELECT conv.item_base + n.ord AS seq,
           CASE WHEN n.msg_n > 0 THEN conv.msg_base + n.msg_n END AS message_seq,
           n.id, n.kind, NULLIF(n.role, 0) AS role, n.text, NULLIF(n.call_id, '') AS call_id,
           coalesce(NULLIF(n.payload, '')::jsonb, parley_message_item(n.id, n.role, n.text, now())) AS payload,
           n.message_row
      FROM conv,
           unnest($8::text[], $9::smallint[], $10::smallint[], $11::text[], $12::text[], $13::text[], $14::uuid[], $15::bigint[])
           WITH ORDINALITY AS n (id, kind, role, text, call_id, payload, message_row, msg_n, ord)
), item AS (
    INSERT INTO items (conversation_id, seq, id, kind, agent, message_id, role, payload, message_seq, call_id)
    SELECT $1::uuid, seq, id, kind, $6::text, $7::text, role, payload, message_seq, call_id
      FROM new
 RETURNING seq, message_seq, payload, created_at
), msg AS (
    INSERT INTO messages (conversation_id, seq, id, role, content, turn_id, item_seq)
    SELECT $1::uuid, message_seq, message_row, role, text, $3::text, seq
      FROM new
     WHERE message_seq IS NOT NULL
)
SELECT seq, message_seq, payload::text, created_at FROM item ORDER BY seq`

	// lockItemsSQL takes the conversation's row lock for sorting a batch's
	// stored items from its new ones. $1 conversation id, $2 owner or NULL.
	lockItemsSQL = `SELECT 1 FROM conversations
 WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)
   FOR UPDATE`

	itemColumns = `i.seq, i.id, i.kind, i.agent, i.message_id, i.role, i.payload::text, i.message_seq, i.call_id, i.created_at`

	// storedItemsSQL reads the batch's items stored before, and whether
	// each has the payload given now (compared as jsonb, so spacing and key
	// order do not matter). $1 conversation id, $2 ids, $3 payloads.
	storedItemsSQL = `SELECT ` + itemColumns + `, i.payload = NULLIF(n.payload, '')::jsonb
  FROM unnest($2::text[], $3::text[]) AS n (id, payload)
  JOIN items i ON i.conversation_id = $1::uuid AND i.id = n.id`

	// ItemHeadSQL is WatchItems' access check. $1 conversation id, $2
	// owner or NULL.
	ItemHeadSQL = `SELECT last_item_seq FROM conversations WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)`

	// NewItemsSQL is the item hub's read after a change, like
	// NewMessagesSQL: no row means the conversation is gone, one row with
	// NULL item columns nothing new. $1 conversation id, $2 after seq, $3
	// limit.
	NewItemsSQL = `SELECT c.last_item_seq, ` + itemColumns + `
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT * FROM items
         WHERE conversation_id = c.id AND seq > $2::bigint AND seq <= c.last_item_seq
         ORDER BY seq
         LIMIT $3
       ) i ON true
 WHERE c.id = $1::uuid
 ORDER BY i.seq`

	// LastItemSeqsSQL is the item hub's periodic re-check.
	LastItemSeqsSQL = `SELECT id, last_item_seq FROM conversations WHERE id = ANY($1::uuid[])`
)

const itemsIDKey = "items_conversation_id_id_key"

// listItemsSQL returns ListItems' statement: a keyset page on the items
// primary key (or, with an agent, on items_agent_seq_idx), in one round
// trip with the access check. No row means no such conversation in scope;
// one row with NULL item columns an empty page.
//
// $1 conversation id, $2 owner or NULL, $3 and $4 exclusive seq bounds,
// $5 limit, $6 agent.
func listItemsSQL(order conversation.Order, byAgent bool) string {
	dir, agent := "", ""
	if order != conversation.OrderOldestFirst {
		dir = " DESC"
	}
	if byAgent {
		agent = " AND agent = $6::text"
	}
	return `SELECT ` + itemColumns + `
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT * FROM items
         WHERE conversation_id = c.id AND seq > $3::bigint AND seq < $4::bigint` + agent + `
         ORDER BY seq` + dir + `
         LIMIT $5
       ) i ON true
 WHERE c.id = $1::uuid AND ($2::uuid IS NULL OR c.user_id = $2::uuid)
 ORDER BY i.seq` + dir
}

// The four ListItems statements, built once.
var (
	listItemsNewestSQL        = listItemsSQL(conversation.OrderNewestFirst, false)
	listItemsOldestSQL        = listItemsSQL(conversation.OrderOldestFirst, false)
	listItemsNewestByAgentSQL = listItemsSQL(conversation.OrderNewestFirst, true)
	listItemsOldestByAgentSQL = listItemsSQL(conversation.OrderOldestFirst, true)
)

// querier is what runs a statement: the pool, or a transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// AppendItemsArgs returns AppendItemsSQL's parameters for b.
func AppendItemsArgs(id uuid.UUID, s conversation.Scope, b conversation.ItemBatch) []any {
	n := len(b.Items)
	var (
		ids, texts, callIDs, payloads = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		kinds, roles                  = make([]int16, n), make([]int16, n)
		rows                          = make([]pgtype.UUID, n)
		places                        = make([]int64, n)
		msgs                          int64
		agent, messageID              string
	)
	for i, it := range b.Items {
		ids[i], kinds[i], roles[i], texts[i], callIDs[i], payloads[i] = it.ID, int16(it.Kind), int16(it.Role), it.Text, it.CallID, string(it.Payload)
		if it.MessageRowID != uuid.Nil {
			msgs++
			rows[i], places[i] = uuidArg(it.MessageRowID), msgs
		}
		agent, messageID = it.Agent, it.MessageID
	}
	var turnID any
	if b.TurnID != "" {
		turnID = b.TurnID
	}
	return []any{uuidArg(id), scopeArg(s), turnID, int64(n), msgs, agent, messageID,
		ids, kinds, roles, texts, callIDs, payloads, rows, places,
		webhook.ItemsWindow.Seconds(), int64(webhook.MaxItemsPerEvent), webhook.ItemsAppended}
}

// AppendItems implements conversation.ItemStore. The batch goes in one
// statement; only when an id was stored before does it take a transaction,
// to sort replays from conflicts under the row lock and store the rest.
func (s *ConversationStore) AppendItems(ctx context.Context, id uuid.UUID, scope conversation.Scope, b conversation.ItemBatch) (_ conversation.StoredItems, err error) {
	defer markUnavailable(&err)
	// The service never sends an empty batch.
	stored, err := s.insertItems(ctx, s.db, id, scope, b)
	switch {
	case err == nil:
		return stored, nil
	case b.TurnID != "" && (isUniqueViolation(err, turnsPrimaryKey) || isUniqueViolation(err, itemsIDKey)):
		saved, err := s.replayTurn(ctx, id, scope, b.TurnID)
		return conversation.StoredItems{Messages: saved.Messages, Replayed: saved.Replayed}, err
	case isUniqueViolation(err, itemsIDKey):
		err = inTx(ctx, s.bunDB, "append items", func(ctx context.Context, tx bun.Tx) error {
			stored, err = s.appendRest(ctx, tx.Tx, id, scope, b)
			return err
		})
		return stored, err
	}
	return conversation.StoredItems{}, err
}

// appendRest stores what b has not stored yet, under the conversation's
// row lock taken in tx: items stored with the same payload are answered as
// stored, one with a different payload is a conflict (kept and counted when
// b.KeepStored).
func (s *ConversationStore) appendRest(ctx context.Context, tx *sql.Tx, id uuid.UUID, scope conversation.Scope, b conversation.ItemBatch) (conversation.StoredItems, error) {
	rows, err := tx.QueryContext(ctx, lockItemsSQL, uuidArg(id), scopeArg(scope))
	if err != nil {
		return conversation.StoredItems{}, fmt.Errorf("append items: lock: %w", err)
	}
	found := rows.Next()
	rows.Close()
	if err := rows.Err(); err != nil {
		return conversation.StoredItems{}, fmt.Errorf("append items: lock: %w", err)
	}
	if !found {
		return conversation.StoredItems{}, conversation.ErrNotFound
	}

	ids, payloads := make([]string, len(b.Items)), make([]string, len(b.Items))
	for i, it := range b.Items {
		ids[i], payloads[i] = it.ID, string(it.Payload)
	}
	stored := make(map[string]conversation.Item, len(b.Items))
	conflicts := 0
	_, err = readRows(ctx, tx, "append items: stored", 0, func(rows *sql.Rows) (struct{}, error) {
		var same sql.NullBool
		it, err := scanItem(rows, id, &same)
		stored[it.ID] = it
		if !same.Bool {
			conflicts++
		}
		return struct{}{}, err
	}, storedItemsSQL, uuidArg(id), ids, payloads)
	if err != nil {
		return conversation.StoredItems{}, err
	}
	if conflicts > 0 && !b.KeepStored {
		return conversation.StoredItems{}, conversation.ErrItemConflict
	}

	rest := conversation.ItemBatch{TurnID: b.TurnID}
	for _, it := range b.Items {
		if _, ok := stored[it.ID]; !ok {
			rest.Items = append(rest.Items, it)
		}
	}
	out := conversation.StoredItems{Items: make([]conversation.Item, 0, len(b.Items)), Replayed: len(rest.Items) == 0, New: len(rest.Items), Conflicting: conflicts}
	if len(rest.Items) > 0 {
		added, err := s.insertItems(ctx, tx, id, scope, rest)
		if err != nil {
			return conversation.StoredItems{}, err
		}
		for _, it := range added.Items {
			stored[it.ID] = it
		}
		out.Messages = added.Messages
	}
	for _, it := range b.Items {
		out.Items = append(out.Items, stored[it.ID])
	}
	return out, nil
}

// insertItems runs AppendItemsSQL on q.
func (s *ConversationStore) insertItems(ctx context.Context, q querier, id uuid.UUID, scope conversation.Scope, b conversation.ItemBatch) (conversation.StoredItems, error) {
	rows, err := q.QueryContext(ctx, AppendItemsSQL, AppendItemsArgs(id, scope, b)...)
	if err != nil {
		return conversation.StoredItems{}, fmt.Errorf("append items: %w", err)
	}
	defer rows.Close()
	out := conversation.StoredItems{Items: make([]conversation.Item, 0, len(b.Items))}
	for rows.Next() {
		i := len(out.Items)
		if i >= len(b.Items) {
			return conversation.StoredItems{}, errors.New("append items: more rows than items")
		}
		it := b.Items[i].Item
		var msgSeq sql.NullInt64
		if err := rows.Scan(&it.Seq, &msgSeq, &it.Payload, &it.StoredAt); err != nil {
			return conversation.StoredItems{}, fmt.Errorf("append items: scan: %w", err)
		}
		it.ConversationID, it.MessageSeq = id, msgSeq.Int64
		out.Items = append(out.Items, it)
		if msgSeq.Valid {
			out.Messages = append(out.Messages, conversation.Message{
				ID: b.Items[i].MessageRowID, ConversationID: id, Seq: msgSeq.Int64, Role: it.Role,
				Content: it.Text, TurnID: b.TurnID, CreatedAt: it.StoredAt,
			})
		}
	}
	if err := rows.Err(); err != nil {
		return conversation.StoredItems{}, fmt.Errorf("append items: %w", err)
	}
	if len(out.Items) == 0 {
		return conversation.StoredItems{}, conversation.ErrNotFound
	}
	out.New = len(out.Items)
	return out, nil
}

// scanItem scans a row of itemColumns, then extra.
func scanItem(rows *sql.Rows, conversationID uuid.UUID, extra ...any) (conversation.Item, error) {
	var (
		it      = conversation.Item{ConversationID: conversationID}
		role    sql.NullInt16
		msgSeq  sql.NullInt64
		callID  sql.NullString
		payload []byte
	)
	err := rows.Scan(append([]any{&it.Seq, &it.ID, &it.Kind, &it.Agent, &it.MessageID, &role, &payload, &msgSeq, &callID, &it.StoredAt}, extra...)...)
	it.Role, it.MessageSeq, it.CallID, it.Payload = conversation.Role(role.Int16), msgSeq.Int64, callID.String, payload
	return it, err
}

// scanNullableItem scans a row of itemColumns from a LEFT JOIN, after
// lead; ok is false when the join found no item.
func scanNullableItem(rows *sql.Rows, conversationID uuid.UUID, lead ...any) (it conversation.Item, ok bool, err error) {
	var (
		seq, msgSeq                  sql.NullInt64
		id, agent, messageID, callID sql.NullString
		kind, role                   sql.NullInt16
		payload                      []byte
		created                      sql.NullTime
	)
	err = rows.Scan(append(lead, &seq, &id, &kind, &agent, &messageID, &role, &payload, &msgSeq, &callID, &created)...)
	if err != nil || !seq.Valid {
		return conversation.Item{}, false, err
	}
	return conversation.Item{
		ConversationID: conversationID, Seq: seq.Int64, ID: id.String, Kind: conversation.ItemKind(kind.Int16),
		Agent: agent.String, MessageID: messageID.String, Role: conversation.Role(role.Int16), CallID: callID.String,
		Payload: payload, MessageSeq: msgSeq.Int64, StoredAt: created.Time,
	}, true, nil
}

// ListItems implements conversation.ItemStore.
func (s *ConversationStore) ListItems(ctx context.Context, r conversation.ItemRange) (_ []conversation.Item, err error) {
	defer markUnavailable(&err)
	q := listItemsNewestSQL
	switch {
	case r.Order == conversation.OrderOldestFirst && r.Agent != "":
		q = listItemsOldestByAgentSQL
	case r.Order == conversation.OrderOldestFirst:
		q = listItemsOldestSQL
	case r.Agent != "":
		q = listItemsNewestByAgentSQL
	}
	before := r.Before
	if before <= 0 {
		before = 1 << 62
	}
	args := []any{uuidArg(r.ConversationID), scopeArg(r.Scope), r.After, before, r.Limit}
	if r.Agent != "" {
		args = append(args, r.Agent)
	}
	found := false
	var items []conversation.Item
	_, err = readRows(ctx, s.db, "list items", 0, func(rows *sql.Rows) (struct{}, error) {
		found = true
		it, ok, err := scanNullableItem(rows, r.ConversationID)
		if ok {
			items = append(items, it)
		}
		return struct{}{}, err
	}, q, args...)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, conversation.ErrNotFound
	}
	return items, nil
}

// ItemHead implements conversation.ItemStore.
func (s *ConversationStore) ItemHead(ctx context.Context, id uuid.UUID, scope conversation.Scope) (_ int64, err error) {
	defer markUnavailable(&err)
	var last int64
	err = s.db.QueryRowContext(ctx, ItemHeadSQL, uuidArg(id), scopeArg(scope)).Scan(&last)
	if isNoRows(err) {
		return 0, conversation.ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("read item head: %w", err)
	}
	return last, nil
}

// NewItems implements conversation.ItemStore.
func (s *ConversationStore) NewItems(ctx context.Context, id uuid.UUID, after int64, limit int) (items []conversation.Item, lastSeq int64, exists bool, err error) {
	defer markUnavailable(&err)
	_, err = readRows(ctx, s.db, "new items", 0, func(rows *sql.Rows) (struct{}, error) {
		exists = true
		it, ok, err := scanNullableItem(rows, id, &lastSeq)
		if ok {
			items = append(items, it)
		}
		return struct{}{}, err
	}, NewItemsSQL, uuidArg(id), after, limit)
	if err != nil {
		return nil, 0, false, err
	}
	return items, lastSeq, exists, nil
}

// LastItemSeqs implements conversation.ItemStore.
func (s *ConversationStore) LastItemSeqs(ctx context.Context, ids []uuid.UUID) (_ map[uuid.UUID]int64, err error) {
	defer markUnavailable(&err)
	out := make(map[uuid.UUID]int64, len(ids))
	_, err = readRows(ctx, s.db, "last item seqs", 0, func(rows *sql.Rows) (struct{}, error) {
		var (
			id   uuid.UUID
			last int64
		)
		err := rows.Scan(&id, &last)
		out[id] = last
		return struct{}{}, err
	}, LastItemSeqsSQL, ids)
	return out, err
}
