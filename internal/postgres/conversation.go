package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
)

// The conversation store's statements are plain SQL with $n parameters, run
// on the *sql.DB under Bun rather than through Bun's query builder: pgx then
// binds the parameters server-side and caches each statement prepared, so a
// call is one round trip, and benchmarks (pgbench included) can run exactly
// the same text. Where a statement takes a scope, $2 is the owner the
// conversation must have, or NULL for any owner (agents).
const (
	// PreviousSaveTurnSQL is how the previous release appends a turn, kept for the
	// rolling-update tests and the benchmarks: the items migration's
	// trigger gives each of its messages its item. This release saves
	// turns with AppendItemsSQL. It appends a turn in one statement: it bumps the
	// conversation's last_seq under the row lock (allocating consecutive seqs,
	// so seq order is commit order), records the turn id, and inserts the
	// messages. A used turn id fails the whole statement with a unique
	// violation on turns_pkey, leaving nothing behind; ReplayTurnSQL then
	// reads the stored turn. No row back means no such conversation in scope.
	//
	// $1 conversation id, $2 owner or NULL, $3 turn id or NULL, $4 number of
	// messages (1 or 2), $5..$7 id, role, content of the first message,
	// $8..$10 of the second (NULL, NULL, '' when there is none).
	PreviousSaveTurnSQL = `WITH conv AS (
    UPDATE conversations
       SET last_seq = last_seq + $4::bigint,
           message_count = message_count + $4::bigint,
           updated_at = now()
     WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)
 RETURNING last_seq - $4::bigint AS base
), turn AS (
    INSERT INTO turns (conversation_id, turn_id, first_seq, message_count)
    SELECT $1::uuid, $3::text, conv.base + 1, $4::smallint
      FROM conv
     WHERE $3::text IS NOT NULL
), msg AS (
    INSERT INTO messages (conversation_id, seq, id, role, content, turn_id)
    SELECT $1::uuid, conv.base + v.n, v.id, v.role, v.content, $3::text
      FROM conv,
           (VALUES (1, $5::uuid, $6::smallint, $7::text),
                   (2, $8::uuid, $9::smallint, $10::text)) AS v (n, id, role, content)
     WHERE v.n <= $4::bigint
 RETURNING seq, id, role, created_at
)
SELECT seq, id, role, created_at FROM msg ORDER BY seq`

	// ReplayTurnSQL reads the messages of a saved turn, in seq order.
	// $1 conversation id, $2 owner or NULL, $3 turn id.
	ReplayTurnSQL = `SELECT m.seq, m.id, m.role, m.content, m.created_at
  FROM turns t
  JOIN conversations c ON c.id = t.conversation_id AND ($2::uuid IS NULL OR c.user_id = $2::uuid)
  JOIN messages m ON m.conversation_id = t.conversation_id
                 AND m.seq >= t.first_seq AND m.seq < t.first_seq + t.message_count
 WHERE t.conversation_id = $1::uuid AND t.turn_id = $3::text
 ORDER BY m.seq`

	// LastSeqSQL is ListMessages' access check and page key when the cache
	// has no head: one primary-key lookup. $1 conversation id, $2 owner or NULL.
	LastSeqSQL = `SELECT last_seq, user_id FROM conversations WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)`

	// ListMessagesNewestSQL and ListMessagesOldestSQL are keyset pages on the
	// messages primary key: an index range scan stopped by the LIMIT, whose
	// cost does not depend on the history's length.
	// $1 conversation id, $2 and $3 exclusive seq bounds, $4 limit.
	ListMessagesNewestSQL = `SELECT seq, id, role, content, turn_id, created_at
  FROM messages
 WHERE conversation_id = $1::uuid AND seq > $2::bigint AND seq < $3::bigint
 ORDER BY seq DESC
 LIMIT $4`
	ListMessagesOldestSQL = `SELECT seq, id, role, content, turn_id, created_at
  FROM messages
 WHERE conversation_id = $1::uuid AND seq > $2::bigint AND seq < $3::bigint
 ORDER BY seq
 LIMIT $4`

	// NewMessagesSQL is the watch hub's read after a change: the
	// conversation's last_seq with up to $3 messages after seq $2. No row at
	// all means the conversation is gone; one row with NULL message columns
	// means nothing new.
	NewMessagesSQL = `SELECT c.last_seq, m.seq, m.id, m.role, m.content, m.turn_id, m.created_at
  FROM conversations c
  LEFT JOIN LATERAL (
        SELECT seq, id, role, content, turn_id, created_at
          FROM messages
         WHERE conversation_id = c.id AND seq > $2::bigint AND seq <= c.last_seq
         ORDER BY seq
         LIMIT $3
       ) m ON true
 WHERE c.id = $1::uuid
 ORDER BY m.seq`

	// LastSeqsSQL is the watch hub's periodic re-check: the last_seq of every
	// watched conversation in one query. Missing ids were deleted.
	LastSeqsSQL = `SELECT id, last_seq FROM conversations WHERE id = ANY($1::uuid[])`

	createConversationSQL = `INSERT INTO conversations (id, user_id, room_id, title)
VALUES ($1::uuid, $2::uuid, $3::uuid, $4::text)
RETURNING created_at, updated_at`

	conversationColumns = `id, user_id, room_id, title, message_count, last_seq, created_at, updated_at, metadata, item_count, last_item_seq`

	getConversationSQL = `SELECT ` + conversationColumns + `
  FROM conversations WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)`

	deleteConversationSQL = `DELETE FROM conversations
 WHERE id = $1::uuid AND ($2::uuid IS NULL OR user_id = $2::uuid)`
)

const (
	turnsPrimaryKey      = "turns_pkey"
	conversationsRoomKey = "conversations_room_id_fkey"
)

// ConversationStore keeps conversations, their messages and turn ids. It
// implements conversation.Store.
type ConversationStore struct {
	db *sql.DB
	// bunDB runs the store's transactions (inTx).
	bunDB *bun.DB
	pages newestFirst
}

var _ conversation.Store = (*ConversationStore)(nil)

// NewConversationStore returns a ConversationStore over db.
func NewConversationStore(db *bun.DB) *ConversationStore {
	return &ConversationStore{db: db.DB, bunDB: db, pages: newestFirstPages(conversationColumns, "conversations", "", "user_id")}
}

// scopeArg is the $2 of scoped statements: the owner, or NULL for any.
func scopeArg(s conversation.Scope) any {
	if s.Any() {
		return nil
	}
	return uuidArg(s.UserID)
}

// uuidArg passes id to pgx as a pgtype.UUID, which its uuid codec sends as
// 16 binary bytes: uuid.UUID would go through driver.Valuer, a string and
// PostgreSQL's text parser. Unlike a bare [16]byte it also encodes as text
// where pgx sends every parameter as text (default_query_exec_mode
// simple_protocol or exec, as behind PgBouncer). The hot statements take
// their ids this way.
func uuidArg(id uuid.UUID) pgtype.UUID { return pgtype.UUID{Bytes: id, Valid: true} }

// SaveTurnArgs returns PreviousSaveTurnSQL's parameters for msgs (one or two).
func SaveTurnArgs(id uuid.UUID, s conversation.Scope, turnID string, msgs []conversation.NewMessage) []any {
	args := []any{uuidArg(id), scopeArg(s), nil, int64(len(msgs)), nil, nil, "", nil, nil, ""}
	if turnID != "" {
		args[2] = turnID
	}
	for i, m := range msgs[:min(len(msgs), 2)] {
		args[4+3*i], args[5+3*i], args[6+3*i] = uuidArg(m.ID), int16(m.Role), m.Content
	}
	return args
}

// SaveTurn saves a turn the way the service does: as a batch of message
// items (conversation.TurnItems) through AppendItems. msgs are one or two.
func (s *ConversationStore) SaveTurn(ctx context.Context, id uuid.UUID, scope conversation.Scope, turnID string, msgs []conversation.NewMessage) (conversation.SavedTurn, error) {
	if len(msgs) < 1 || len(msgs) > 2 {
		return conversation.SavedTurn{}, fmt.Errorf("save turn: %d messages", len(msgs))
	}
	stored, err := s.AppendItems(ctx, id, scope, conversation.TurnItems(id, turnID, msgs))
	if err != nil {
		return conversation.SavedTurn{}, err
	}
	return conversation.SavedTurn{Messages: stored.Messages, Replayed: stored.Replayed}, nil
}

func (s *ConversationStore) replayTurn(ctx context.Context, id uuid.UUID, scope conversation.Scope, turnID string) (conversation.SavedTurn, error) {
	rows, err := s.db.QueryContext(ctx, ReplayTurnSQL, id, scopeArg(scope), turnID)
	if err != nil {
		return conversation.SavedTurn{}, fmt.Errorf("replay turn: %w", err)
	}
	defer rows.Close()
	saved := conversation.SavedTurn{Replayed: true}
	for rows.Next() {
		m := conversation.Message{ConversationID: id, TurnID: turnID}
		if err := rows.Scan(&m.Seq, &m.ID, &m.Role, &m.Content, &m.CreatedAt); err != nil {
			return conversation.SavedTurn{}, fmt.Errorf("replay turn: scan: %w", err)
		}
		saved.Messages = append(saved.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return conversation.SavedTurn{}, fmt.Errorf("replay turn: %w", err)
	}
	if len(saved.Messages) == 0 {
		// Deleted between the failed insert and this read.
		return conversation.SavedTurn{}, conversation.ErrNotFound
	}
	return saved, nil
}

// Head implements conversation.Store.
func (s *ConversationStore) Head(ctx context.Context, id uuid.UUID, scope conversation.Scope) (_ conversation.Head, err error) {
	defer markUnavailable(&err)
	var h conversation.Head
	err = s.db.QueryRowContext(ctx, LastSeqSQL, uuidArg(id), scopeArg(scope)).Scan(&h.LastSeq, &h.Owner)
	if errors.Is(err, sql.ErrNoRows) {
		return conversation.Head{}, conversation.ErrNotFound
	}
	if err != nil {
		return conversation.Head{}, fmt.Errorf("read conversation head: %w", err)
	}
	return h, nil
}

// ListMessages implements conversation.Store.
func (s *ConversationStore) ListMessages(ctx context.Context, r conversation.MessageRange) (_ []conversation.Message, err error) {
	defer markUnavailable(&err)
	q := ListMessagesNewestSQL
	if r.Order == conversation.OrderOldestFirst {
		q = ListMessagesOldestSQL
	}
	return readRows(ctx, s.db, "list messages", min(r.Limit, 256), func(rows *sql.Rows) (conversation.Message, error) {
		m := conversation.Message{ConversationID: r.ConversationID}
		var turnID sql.NullString
		err := rows.Scan(&m.Seq, &m.ID, &m.Role, &m.Content, &turnID, &m.CreatedAt)
		m.TurnID = turnID.String
		return m, err
	}, q, uuidArg(r.ConversationID), r.After, r.Before, r.Limit)
}

// NewMessages returns up to limit messages of conversation id with seq >
// after, and its last_seq; exists is false when the conversation is gone.
func (s *ConversationStore) NewMessages(ctx context.Context, id uuid.UUID, after int64, limit int) (msgs []conversation.Message, lastSeq int64, exists bool, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, NewMessagesSQL, id, after, limit)
	if err != nil {
		return nil, 0, false, fmt.Errorf("new messages: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		exists = true
		var (
			seq     sql.NullInt64
			msgID   uuid.NullUUID
			role    sql.NullInt16
			content sql.NullString
			turnID  sql.NullString
			created sql.NullTime
		)
		if err := rows.Scan(&lastSeq, &seq, &msgID, &role, &content, &turnID, &created); err != nil {
			return nil, 0, false, fmt.Errorf("new messages: scan: %w", err)
		}
		if !seq.Valid {
			continue
		}
		msgs = append(msgs, conversation.Message{
			ID: msgID.UUID, ConversationID: id, Seq: seq.Int64, Role: conversation.Role(role.Int16),
			Content: content.String, TurnID: turnID.String, CreatedAt: created.Time,
		})
	}
	if err := rows.Err(); err != nil {
		return nil, 0, false, fmt.Errorf("new messages: %w", err)
	}
	return msgs, lastSeq, exists, nil
}

// LastSeqs returns the last_seq of each of ids that still exists.
func (s *ConversationStore) LastSeqs(ctx context.Context, ids []uuid.UUID) (_ map[uuid.UUID]int64, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, LastSeqsSQL, ids)
	if err != nil {
		return nil, fmt.Errorf("last seqs: %w", err)
	}
	defer rows.Close()
	out := make(map[uuid.UUID]int64, len(ids))
	for rows.Next() {
		var (
			id   uuid.UUID
			last int64
		)
		if err := rows.Scan(&id, &last); err != nil {
			return nil, fmt.Errorf("last seqs: scan: %w", err)
		}
		out[id] = last
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("last seqs: %w", err)
	}
	return out, nil
}

// CreateConversation implements conversation.Store.
func (s *ConversationStore) CreateConversation(ctx context.Context, c conversation.Conversation) (_ conversation.Conversation, err error) {
	defer markUnavailable(&err)
	q, args, err := createConversationStatement(c)
	if err != nil {
		return conversation.Conversation{}, err
	}
	err = s.db.QueryRowContext(ctx, q, args...).Scan(&c.CreatedAt, &c.UpdatedAt)
	if isForeignKeyViolation(err) {
		if pgConstraint(err) == conversationsRoomKey {
			// Deleted since the service checked it.
			return conversation.Conversation{}, conversation.ErrRoomNotFound
		}
		// The owner's row is gone: its tokens no longer name anyone.
		return conversation.Conversation{}, auth.ErrUnauthenticated
	}
	if err != nil {
		return conversation.Conversation{}, fmt.Errorf("create conversation: %w", err)
	}
	return c, nil
}

// conversationRow scans a row of conversationColumns.
type conversationRow struct {
	ID           uuid.UUID
	UserID       uuid.UUID
	RoomID       uuid.NullUUID
	Title        string
	MessageCount int64
	LastSeq      int64
	CreatedAt    time.Time
	UpdatedAt    time.Time
	Metadata     metadataColumn
	ItemCount    int64
	LastItemSeq  int64
}

func (r *conversationRow) dest() []any {
	return []any{&r.ID, &r.UserID, &r.RoomID, &r.Title, &r.MessageCount, &r.LastSeq, &r.CreatedAt, &r.UpdatedAt, &r.Metadata, &r.ItemCount, &r.LastItemSeq}
}

func (r *conversationRow) conversation() conversation.Conversation {
	return conversation.Conversation{
		ID: r.ID, UserID: r.UserID, RoomID: r.RoomID.UUID, Title: r.Title,
		MessageCount: r.MessageCount, LastSeq: r.LastSeq, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		Metadata: r.Metadata, ItemCount: r.ItemCount, LastItemSeq: r.LastItemSeq,
	}
}

// GetConversation implements conversation.Store.
func (s *ConversationStore) GetConversation(ctx context.Context, id uuid.UUID, scope conversation.Scope) (_ conversation.Conversation, err error) {
	defer markUnavailable(&err)
	var r conversationRow
	err = s.db.QueryRowContext(ctx, getConversationSQL, id, scopeArg(scope)).Scan(r.dest()...)
	if errors.Is(err, sql.ErrNoRows) {
		return conversation.Conversation{}, conversation.ErrNotFound
	}
	if err != nil {
		return conversation.Conversation{}, fmt.Errorf("get conversation: %w", err)
	}
	return r.conversation(), nil
}

// ListConversations implements conversation.Store.
func (s *ConversationStore) ListConversations(ctx context.Context, userID uuid.UUID, after *conversation.ConversationCursor, limit int) (_ []conversation.Conversation, err error) {
	defer markUnavailable(&err)
	return listPage(ctx, s.db, "list conversations", s.pages, userID, after, limit,
		func(rows *sql.Rows) (conversation.Conversation, error) {
			var r conversationRow
			err := rows.Scan(r.dest()...)
			return r.conversation(), err
		})
}

// DeleteConversation implements conversation.Store. Messages and turn ids
// go with the row (ON DELETE CASCADE).
func (s *ConversationStore) DeleteConversation(ctx context.Context, id uuid.UUID, scope conversation.Scope) (err error) {
	defer markUnavailable(&err)
	res, err := s.db.ExecContext(ctx, deleteConversationSQL, id, scopeArg(scope))
	if err != nil {
		return fmt.Errorf("delete conversation: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete conversation: %w", err)
	}
	if n == 0 {
		return conversation.ErrNotFound
	}
	return nil
}
