package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/webhook"
)

// The room store's statements are plain SQL on the *sql.DB, like the
// conversation store's: CreateRoom reuses its insert inside one transaction.
const (
	roomColumns = `id, name, conversation_id, livekit_room, livekit_sid, status, created_by, created_at, ended_at,
 COALESCE(agent_name, ''), COALESCE(agent_metadata, ''), COALESCE(resume_seq, 0)`

	// $6 agent name, $7 agent metadata ("" stored as NULL), $8 resume seq (NULL for a new conversation).
	insertRoomSQL = `INSERT INTO rooms (id, name, conversation_id, livekit_room, created_by, agent_name, agent_metadata, resume_seq)
VALUES ($1::uuid, $2::text, $3::uuid, $4::text, $5::uuid, NULLIF($6::text, ''), NULLIF($7::text, ''), $8::bigint)
RETURNING ` + roomColumns

	// lockResumedSQL locks the conversation a room resumes, so that two
	// resumes (and appends, which bump its seqs under the same lock) take
	// turns; its last item seq is where the agent restores up to.
	lockResumedSQL = `SELECT last_item_seq FROM conversations WHERE id = $1::uuid AND user_id = $2::uuid FOR UPDATE`

	// conversationLiveSQL runs after lockResumedSQL, as a statement of its
	// own: its snapshot then sees the room of a resume that held the lock
	// before.
	conversationLiveSQL = `SELECT EXISTS (SELECT 1 FROM rooms WHERE conversation_id = $1::uuid AND status = 1)`

	// resumeConversationSQL makes the new room the conversation's room.
	resumeConversationSQL = `UPDATE conversations SET room_id = $2::uuid, updated_at = now() WHERE id = $1::uuid`

	getRoomSQL = `SELECT ` + roomColumns + ` FROM rooms WHERE id = $1::uuid AND created_by = $2::uuid`

	// endRoomSQL ends an active room; no row means it was ended already (or
	// is not the owner's), which getRoomSQL then tells apart.
	endRoomSQL = `UPDATE rooms SET status = 2, ended_at = $3::timestamptz
 WHERE id = $1::uuid AND created_by = $2::uuid AND status = 1
RETURNING ` + roomColumns

	displayNameSQL = `SELECT display_name FROM users WHERE id = $1::uuid`

	roomOwnedBySQL = `SELECT EXISTS (SELECT 1 FROM rooms WHERE id = $1::uuid AND created_by = $2::uuid)`

	// recordEventSQL claims an event id; no row affected means another
	// delivery (on any replica) has applied it. A concurrent claim waits
	// for the first transaction and then does nothing.
	recordEventSQL = `INSERT INTO livekit_events (id, kind) VALUES ($1::text, $2::text) ON CONFLICT (id) DO NOTHING`

	setLiveKitSIDSQL = `UPDATE rooms SET livekit_sid = $2::text WHERE id = $1::uuid`

	// roomForEventSQL locks the room an event names, so that its sid
	// cannot change between the check and the effect.
	roomForEventSQL = `SELECT ` + roomColumns + ` FROM rooms WHERE livekit_room = $1::text FOR UPDATE`

	// $1 room id, $2 event time, $3 sid (kept if the room has one).
	roomStartedSQL = `UPDATE rooms SET started_at = COALESCE(started_at, $2::timestamptz), livekit_sid = COALESCE(livekit_sid, $3::text)
 WHERE id = $1::uuid`

	// Ends the room once: a finished event for an ended room changes nothing.
	roomFinishedSQL = `UPDATE rooms SET status = 2, ended_at = $2::timestamptz WHERE id = $1::uuid AND status = 1`

	// $1 room id, $2 session id, $3 identity, $4 name, $5 event time,
	// $6 kind (0: none). The join time is the earliest join's; a leave
	// recorded earlier stays, so a late join never makes a departed session
	// present again. The join's identity and name win over others'.
	participantJoinedSQL = `INSERT INTO room_participants (room_id, session_id, identity, name, joined_at, kind)
VALUES ($1::uuid, $2::text, $3::text, $4::text, $5::timestamptz, NULLIF($6::smallint, 0))
ON CONFLICT (room_id, session_id) DO UPDATE
   SET joined_at = LEAST(room_participants.joined_at, EXCLUDED.joined_at),
       identity = EXCLUDED.identity,
       name = EXCLUDED.name,
       kind = GREATEST(room_participants.kind, EXCLUDED.kind)`

	// The leave time is the latest leave's.
	participantLeftSQL = `INSERT INTO room_participants (room_id, session_id, identity, name, left_at, kind)
VALUES ($1::uuid, $2::text, $3::text, $4::text, $5::timestamptz, NULLIF($6::smallint, 0))
ON CONFLICT (room_id, session_id) DO UPDATE
   SET left_at = GREATEST(room_participants.left_at, EXCLUDED.left_at),
       kind = GREATEST(room_participants.kind, EXCLUDED.kind)`

	// importRecordingSQL queues an egress file for import as a file of the
	// room's conversation (see recording_imports); egress's name is
	// unique, so a redelivered egress adds nothing.
	// $1 file id, $2 conversation, $3 egress's blob name, $4 filename, $5 content type, $6 size.
	importRecordingSQL = `INSERT INTO recording_imports (file_id, conversation_id, source_name, filename, content_type, size_bytes)
VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::bigint)
ON CONFLICT (source_name) DO NOTHING`

	// dropRecordingSQL queues the deletion of an egress file of a room
	// whose conversation, and with it the room's files, was deleted.
	dropRecordingSQL = `INSERT INTO blob_deletions (blob_name) VALUES ($1::text)`

	roomByIDSQL = `SELECT ` + roomColumns + ` FROM rooms WHERE id = $1::uuid`

	sessionsSQL = `SELECT session_id, identity, name, joined_at, left_at
  FROM room_participants WHERE room_id = $1::uuid ORDER BY session_id`

	recordingsSQL = `SELECT f.blob_name, f.filename, f.content_type, f.size_bytes
  FROM files f JOIN rooms r ON r.conversation_id = f.conversation_id
 WHERE r.id = $1::uuid AND f.kind = 2
 ORDER BY f.created_at, f.blob_name`

	pruneEventsSQL = `DELETE FROM livekit_events WHERE received_at < $1::timestamptz`
)

// RoomStore keeps rooms and their webhook-recorded participants, and queues
// egress recordings for import as files of their conversations. It implements room.Store and conversation.Rooms.
type RoomStore struct {
	db    *sql.DB // for $n statements: bun.DB's own methods would format them
	bun   *bun.DB // for inTx
	pages newestFirst
}

var (
	_ room.Store         = (*RoomStore)(nil)
	_ conversation.Rooms = (*RoomStore)(nil)
)

// NewRoomStore returns a RoomStore over db.
func NewRoomStore(db *bun.DB) *RoomStore {
	return &RoomStore{db: db.DB, bun: db, pages: newestFirstPages(roomColumns, "rooms", "", "created_by")}
}

// roomRow scans a row of roomColumns.
type roomRow struct {
	ID             uuid.UUID
	Name           string
	ConversationID uuid.NullUUID
	LiveKitRoom    string
	LiveKitSID     sql.NullString
	Status         int16
	CreatedBy      uuid.UUID
	CreatedAt      time.Time
	EndedAt        sql.NullTime
	AgentName      string
	AgentMetadata  string
	ResumeSeq      int64
}

func (r *roomRow) dest() []any {
	return []any{&r.ID, &r.Name, &r.ConversationID, &r.LiveKitRoom, &r.LiveKitSID, &r.Status, &r.CreatedBy, &r.CreatedAt, &r.EndedAt,
		&r.AgentName, &r.AgentMetadata, &r.ResumeSeq}
}

func (r *roomRow) room() room.Room {
	return room.Room{
		ID: r.ID, Name: r.Name, ConversationID: r.ConversationID.UUID, LiveKitRoom: r.LiveKitRoom, LiveKitSID: r.LiveKitSID.String,
		Status: room.Status(r.Status), CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt, EndedAt: r.EndedAt.Time,
		AgentName: r.AgentName, AgentMetadata: r.AgentMetadata, ResumeSeq: r.ResumeSeq,
	}
}

// rowQuerier is a *sql.DB or *sql.Tx.
type rowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// CreateRoom implements room.Store: the room and its conversation in one
// transaction. The room's key to the conversation is checked at commit.
func (s *RoomStore) CreateRoom(ctx context.Context, nr room.NewRoom) (_ room.Room, err error) {
	defer markUnavailable(&err)
	var r roomRow
	err = inTx(ctx, s.bun, "create room", func(ctx context.Context, tx bun.Tx) error {
		if nr.Resume {
			return resumeInRoom(ctx, tx.Tx, nr, &r)
		}
		err := tx.Tx.QueryRowContext(ctx, insertRoomSQL, nr.ID, nr.Name, nr.ConversationID, nr.LiveKitRoom, nr.CreatedBy,
			nr.AgentName, nr.AgentMetadata, nil).Scan(r.dest()...)
		if err != nil {
			return fmt.Errorf("create room: insert room: %w", err)
		}
		var created, updated time.Time
		err = tx.Tx.QueryRowContext(ctx, createConversationSQL, nr.ConversationID, nr.CreatedBy, nr.ID, nr.Name).Scan(&created, &updated)
		if err != nil {
			return fmt.Errorf("create room: insert conversation: %w", err)
		}
		return nil
	})
	if isForeignKeyViolation(err) {
		// The owner's row is gone: its tokens no longer name anyone.
		return room.Room{}, auth.ErrUnauthenticated
	}
	if err != nil {
		return room.Room{}, err
	}
	return r.room(), nil
}

// resumeInRoom is CreateRoom's part for a room that resumes nr's
// conversation, in tx: the conversation is locked, must be the owner's and
// in no active room, and gets the new room as its room.
func resumeInRoom(ctx context.Context, tx *sql.Tx, nr room.NewRoom, r *roomRow) error {
	var lastItemSeq int64
	err := tx.QueryRowContext(ctx, lockResumedSQL, nr.ConversationID, nr.CreatedBy).Scan(&lastItemSeq)
	if errors.Is(err, sql.ErrNoRows) {
		return conversation.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("create room: lock conversation: %w", err)
	}
	var live bool
	if err := tx.QueryRowContext(ctx, conversationLiveSQL, nr.ConversationID).Scan(&live); err != nil {
		return fmt.Errorf("create room: conversation's rooms: %w", err)
	}
	if live {
		return room.ErrConversationLive
	}
	err = tx.QueryRowContext(ctx, insertRoomSQL, nr.ID, nr.Name, nr.ConversationID, nr.LiveKitRoom, nr.CreatedBy,
		nr.AgentName, nr.AgentMetadata, lastItemSeq).Scan(r.dest()...)
	if err != nil {
		return fmt.Errorf("create room: insert room: %w", err)
	}
	if _, err := tx.ExecContext(ctx, resumeConversationSQL, nr.ConversationID, nr.ID); err != nil {
		return fmt.Errorf("create room: link conversation: %w", err)
	}
	return nil
}

// Room implements room.Store.
func (s *RoomStore) Room(ctx context.Context, id, owner uuid.UUID) (_ room.Room, err error) {
	defer markUnavailable(&err)
	return getRoom(ctx, s.db, "get room", getRoomSQL, id, owner)
}

func getRoom(ctx context.Context, q rowQuerier, op, query string, args ...any) (room.Room, error) {
	var r roomRow
	err := q.QueryRowContext(ctx, query, args...).Scan(r.dest()...)
	if errors.Is(err, sql.ErrNoRows) {
		return room.Room{}, room.ErrNotFound
	}
	if err != nil {
		return room.Room{}, fmt.Errorf("%s: %w", op, err)
	}
	return r.room(), nil
}

// ListRooms implements room.Store.
func (s *RoomStore) ListRooms(ctx context.Context, owner uuid.UUID, after *room.Cursor, limit int) (_ []room.Room, err error) {
	defer markUnavailable(&err)
	return listPage(ctx, s.db, "list rooms", s.pages, owner, after, limit,
		func(rows *sql.Rows) (room.Room, error) {
			var r roomRow
			err := rows.Scan(r.dest()...)
			return r.room(), err
		})
}

// EndRoom implements room.Store: the room and its call.ended event in one
// transaction.
func (s *RoomStore) EndRoom(ctx context.Context, id, owner uuid.UUID, now time.Time) (_ room.Room, _ bool, err error) {
	defer markUnavailable(&err)
	var r room.Room
	err = inTx(ctx, s.bun, "end room", func(ctx context.Context, tx bun.Tx) error {
		var err error
		if r, err = getRoom(ctx, tx.Tx, "end room", endRoomSQL, id, owner, now); err != nil {
			return err
		}
		// The room was active; its call may still have ended before (a
		// reason recorded), and then had its call.ended already.
		_, endedBefore, err := callState(ctx, tx.Tx, room.Room{ID: id})
		if err != nil {
			return fmt.Errorf("end room: call: %w", err)
		}
		if endedBefore {
			return nil
		}
		return enqueueCallEvent(ctx, tx.Tx, id, webhook.CallEnded, now)
	})
	if err == nil {
		return r, true, nil
	}
	if !errors.Is(err, room.ErrNotFound) {
		return room.Room{}, false, err
	}
	// Not updated: already ended or not the owner's. A new statement sees
	// a concurrent EndRoom's commit.
	r, err = s.Room(ctx, id, owner)
	return r, false, err
}

// DisplayName implements room.Store.
func (s *RoomStore) DisplayName(ctx context.Context, userID uuid.UUID) (_ string, err error) {
	defer markUnavailable(&err)
	var name string
	err = s.db.QueryRowContext(ctx, displayNameSQL, userID).Scan(&name)
	if errors.Is(err, sql.ErrNoRows) {
		return "", auth.ErrUnauthenticated
	}
	if err != nil {
		return "", fmt.Errorf("display name: %w", err)
	}
	return name, nil
}

// RoomOwnedBy implements conversation.Rooms.
func (s *RoomStore) RoomOwnedBy(ctx context.Context, roomID, userID uuid.UUID) (_ bool, err error) {
	defer markUnavailable(&err)
	var ok bool
	if err := s.db.QueryRowContext(ctx, roomOwnedBySQL, roomID, userID).Scan(&ok); err != nil {
		return false, fmt.Errorf("room owned by: %w", err)
	}
	return ok, nil
}

// SetLiveKitSID implements room.Store. LiveKit's answer to CreateRoom wins
// over a sid an earlier room_started brought.
func (s *RoomStore) SetLiveKitSID(ctx context.Context, id uuid.UUID, sid string) (err error) {
	defer markUnavailable(&err)
	if _, err := s.db.ExecContext(ctx, setLiveKitSIDSQL, id, sid); err != nil {
		return fmt.Errorf("set livekit sid: %w", err)
	}
	return nil
}

// ApplyEvent implements room.Store: the event id is claimed and the effect
// written in one transaction, so an event is applied once however many
// replicas receive it, and a failed effect leaves the id free for LiveKit's
// retry. The room is locked while its sid is compared with the event's.
func (s *RoomStore) ApplyEvent(ctx context.Context, e room.Event) (_ room.EventResult, err error) {
	defer markUnavailable(&err)
	var res room.EventResult
	err = inTx(ctx, s.bun, "apply event", func(ctx context.Context, tx bun.Tx) error {
		if e.ID != "" {
			n, err := rowsAffected(tx.Tx.ExecContext(ctx, recordEventSQL, e.ID, e.Kind.String()))
			if err != nil {
				return fmt.Errorf("apply event: record id: %w", err)
			}
			if n == 0 {
				return nil
			}
		}
		r, err := getRoom(ctx, tx.Tx, "apply event: read room", roomForEventSQL, e.LiveKitRoom)
		if err != nil && !errors.Is(err, room.ErrNotFound) {
			return err
		}
		matched := r.ID != uuid.Nil && e.RoomSID != "" &&
			(r.LiveKitSID == e.RoomSID || (r.LiveKitSID == "" && e.Kind == room.EventRoomStarted))
		var change room.CallChange
		if matched {
			startedBefore, endedBefore, err := callState(ctx, tx.Tx, r)
			if err != nil {
				return fmt.Errorf("apply event: call before: %w", err)
			}
			if err := applyEffect(ctx, tx.Tx, r, e); err != nil {
				return fmt.Errorf("apply event: %s: %w", e.Kind, err)
			}
			if r, err = getRoom(ctx, tx.Tx, "apply event: reread room", roomByIDSQL, r.ID); err != nil {
				return err
			}
			started, ended, err := callState(ctx, tx.Tx, r)
			if err != nil {
				return fmt.Errorf("apply event: call after: %w", err)
			}
			// Written from the transition, not the event: a duplicate or
			// late event changes nothing and so emits nothing.
			change = room.CallChange{Started: started && !startedBefore, Ended: ended && !endedBefore}
			now := time.Now()
			if change.Started {
				if err := enqueueCallEvent(ctx, tx.Tx, r.ID, webhook.CallStarted, now); err != nil {
					return fmt.Errorf("apply event: %w", err)
				}
			}
			if change.Ended {
				if err := enqueueCallEvent(ctx, tx.Tx, r.ID, webhook.CallEnded, now); err != nil {
					return fmt.Errorf("apply event: %w", err)
				}
			}
		}
		res = room.EventResult{Applied: true, Matched: matched, Room: r, Call: change}
		return nil
	})
	if err != nil {
		return room.EventResult{}, err
	}
	return res, nil
}

// applyEffect writes what event e does to room r, whose name and sid it has.
func applyEffect(ctx context.Context, tx *sql.Tx, r room.Room, e room.Event) error {
	at := sql.NullTime{Time: e.At, Valid: !e.At.IsZero()}
	if !at.Valid {
		at = sql.NullTime{Time: time.Now(), Valid: true}
	}
	var err error
	switch e.Kind {
	case room.EventRoomStarted:
		_, err = tx.ExecContext(ctx, roomStartedSQL, r.ID, at, e.RoomSID)
	case room.EventRoomFinished:
		_, err = tx.ExecContext(ctx, roomFinishedSQL, r.ID, at)
	case room.EventParticipantJoined, room.EventParticipantLeft:
		if e.Participant.SessionID == "" {
			break
		}
		q := participantJoinedSQL
		if e.Kind == room.EventParticipantLeft {
			q = participantLeftSQL
		}
		p := e.Participant
		_, err = tx.ExecContext(ctx, q, r.ID, p.SessionID, p.Identity, p.Name, at, p.Kind)
	case room.EventEgressEnded:
		for _, rec := range e.Recordings {
			if r.ConversationID == uuid.Nil {
				if _, err = tx.ExecContext(ctx, dropRecordingSQL, rec.BlobName); err != nil {
					break
				}
				continue
			}
			id, idErr := uuid.NewV7()
			if idErr != nil {
				return idErr
			}
			if _, err = tx.ExecContext(ctx, importRecordingSQL, id, r.ConversationID, rec.BlobName,
				rec.Filename, rec.ContentType, rec.SizeBytes); err != nil {
				break
			}
		}
	}
	if err != nil {
		return err
	}
	// After the import is queued: the call's recordings name its file.
	return applyCallEffect(ctx, tx, r, e, at.Time)
}

// Sessions returns the participant sessions recorded for a room.
func (s *RoomStore) Sessions(ctx context.Context, roomID uuid.UUID) (_ []room.Session, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, sessionsSQL, roomID)
	if err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	defer rows.Close()
	var out []room.Session
	for rows.Next() {
		var (
			ss           room.Session
			joined, left sql.NullTime
		)
		if err := rows.Scan(&ss.SessionID, &ss.Identity, &ss.Name, &joined, &left); err != nil {
			return nil, fmt.Errorf("sessions: scan: %w", err)
		}
		ss.JoinedAt, ss.LeftAt = joined.Time, left.Time
		out = append(out, ss)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	return out, nil
}

// Recordings returns the recording files of a room's conversation (imported
// ones: BlobName is the file's own).
func (s *RoomStore) Recordings(ctx context.Context, roomID uuid.UUID) (_ []room.Recording, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, recordingsSQL, roomID)
	if err != nil {
		return nil, fmt.Errorf("recordings: %w", err)
	}
	defer rows.Close()
	var out []room.Recording
	for rows.Next() {
		var rec room.Recording
		if err := rows.Scan(&rec.BlobName, &rec.Filename, &rec.ContentType, &rec.SizeBytes); err != nil {
			return nil, fmt.Errorf("recordings: scan: %w", err)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recordings: %w", err)
	}
	return out, nil
}

// PruneEvents forgets applied webhook event ids received before before.
// LiveKit stops retrying a delivery within minutes, so ids older than a
// day or so will never be seen again.
func (s *RoomStore) PruneEvents(ctx context.Context, before time.Time) (_ int64, err error) {
	defer markUnavailable(&err)
	res, err := s.db.ExecContext(ctx, pruneEventsSQL, before)
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return res.RowsAffected()
}
