package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/webhook"
)

// A call's record is built by joins only (least, greatest, a forward-only
// rank), so that LiveKit's events give the same record in any order and any
// number of times; see the migration calls.
const (
	// callColumns are a room's (as roomColumns, qualified) and its call's,
	// with its report; listCallColumns the same but the report only where
	// its metrics are not stored.
	callColumns     = callFigureColumns + `, c.report`
	listCallColumns = callFigureColumns + `, CASE WHEN ` + metricsDue + ` THEN c.report END`

	callFigureColumns = `r.id, r.name, r.conversation_id, r.livekit_room, r.livekit_sid, r.status, r.created_by, r.created_at, r.ended_at,
 COALESCE(r.agent_name, ''), COALESCE(r.agent_metadata, ''), COALESCE(r.resume_seq, 0),
 c.started_at, c.ended_at, COALESCE(c.end_reason, 0), c.last_seen_at, c.reported_at,
 c.metrics_of IS NOT DISTINCT FROM c.reported_at AND c.turns IS NOT NULL, COALESCE(c.turns, 0), COALESCE(c.interruptions, 0)`

	// metricsDue is whether a call's report has no stored metrics: the
	// predicate of calls_metrics_due_idx.
	metricsDue = `c.report IS NOT NULL AND c.metrics_of IS DISTINCT FROM c.reported_at`

	callFrom = ` FROM rooms r LEFT JOIN calls c ON c.room_id = r.id`

	getCallSQL = `SELECT ` + callColumns + callFrom + `
 WHERE r.id = $1::uuid AND ($2::uuid IS NULL OR r.created_by = $2::uuid)`

	// callStateSQL is whether the call of room $1 has started and ended
	// (the room's own status aside).
	callStateSQL = `SELECT started_at IS NOT NULL, end_reason > 0 FROM calls WHERE room_id = $1::uuid`

	// $1 room, $2 started evidence (NULL if the event is none), $3 event time.
	touchCallSQL = `INSERT INTO calls (room_id, started_at, last_seen_at) VALUES ($1::uuid, $2::timestamptz, $3::timestamptz)
ON CONFLICT (room_id) DO UPDATE
   SET started_at = LEAST(calls.started_at, EXCLUDED.started_at),
       last_seen_at = GREATEST(calls.last_seen_at, EXCLUDED.last_seen_at)`

	callFinishedSQL = `UPDATE calls SET ended_at = GREATEST(ended_at, $2::timestamptz), end_reason = GREATEST(end_reason, $3::smallint)
 WHERE room_id = $1::uuid`

	// $1 room, $2 session, $3 identity, $4 name, $5 kind (0: none).
	trackParticipantSQL = `INSERT INTO room_participants (room_id, session_id, identity, name, kind)
VALUES ($1::uuid, $2::text, $3::text, $4::text, NULLIF($5::smallint, 0))
ON CONFLICT (room_id, session_id) DO UPDATE
   SET kind = GREATEST(room_participants.kind, EXCLUDED.kind)`

	// $1 room, $2 track sid, $3 session, $4 type, $5 source, $6 time.
	trackPublishedSQL = `INSERT INTO call_tracks (room_id, track_sid, session_id, type, source, published_at)
VALUES ($1::uuid, $2::text, $3::text, $4::text, $5::text, $6::timestamptz)
ON CONFLICT (room_id, track_sid) DO UPDATE
   SET published_at = LEAST(call_tracks.published_at, EXCLUDED.published_at)`

	// egressStateSQL keeps the greatest state by (rank, updated_at,
	// status), every terminal status ranking alike, and the widest times.
	// $1 room, $2 egress, $3 status, $4 started, $5 ended, $6 updated.
	egressStateSQL = `INSERT INTO call_egresses (room_id, egress_id, status, started_at, ended_at, updated_at)
VALUES ($1::uuid, $2::text, $3::smallint, $4::timestamptz, $5::timestamptz, $6::timestamptz)
ON CONFLICT (room_id, egress_id) DO UPDATE
   SET status = CASE WHEN ` + egressNewer + ` THEN EXCLUDED.status ELSE call_egresses.status END,
       updated_at = CASE WHEN ` + egressNewer + ` THEN EXCLUDED.updated_at ELSE call_egresses.updated_at END,
       started_at = LEAST(call_egresses.started_at, EXCLUDED.started_at),
       ended_at = GREATEST(call_egresses.ended_at, EXCLUDED.ended_at)`

	egressNewer = `(LEAST(EXCLUDED.status, 4), EXCLUDED.updated_at, EXCLUDED.status) >
 (LEAST(call_egresses.status, 4), call_egresses.updated_at, call_egresses.status)`

	// $1 egress's blob name, $2 room, $3 egress, $4 filename, $5 content type, $6 size.
	callRecordingSQL = `INSERT INTO call_recordings (source_name, room_id, egress_id, file_id, filename, content_type, size_bytes)
VALUES ($1::text, $2::uuid, $3::text, (SELECT file_id FROM recording_imports WHERE source_name = $1::text), $4::text, $5::text, $6::bigint)
ON CONFLICT (source_name) DO UPDATE SET file_id = COALESCE(call_recordings.file_id, EXCLUDED.file_id)`

	callParticipantsSQL = `SELECT room_id, session_id, identity, name, COALESCE(kind, 0), joined_at, left_at
  FROM room_participants WHERE room_id = ANY ($1::uuid[]) ORDER BY room_id, joined_at NULLS LAST, session_id`

	callTracksSQL = `SELECT room_id, session_id, track_sid, type, source, published_at
  FROM call_tracks WHERE room_id = ANY ($1::uuid[]) ORDER BY room_id, published_at, track_sid`

	callEgressesSQL = `SELECT room_id, egress_id, status, started_at, ended_at
  FROM call_egresses WHERE room_id = ANY ($1::uuid[]) ORDER BY room_id, started_at NULLS LAST, egress_id`

	callRecordingsSQL = `SELECT room_id, egress_id, file_id, filename, content_type, size_bytes
  FROM call_recordings WHERE room_id = ANY ($1::uuid[]) ORDER BY room_id, egress_id, source_name`

	// openCallsSQL pages the live calls by id: started, not ended, room
	// active.
	openCallsSQL = `SELECT r.id, r.livekit_room, COALESCE(r.livekit_sid, ''), c.last_seen_at
  FROM calls c JOIN rooms r ON r.id = c.room_id
 WHERE c.end_reason = 0 AND c.started_at IS NOT NULL AND r.status = 1 AND c.room_id > $1::uuid
 ORDER BY c.room_id
 LIMIT $2`

	seeCallsSQL = `UPDATE calls SET last_seen_at = GREATEST(last_seen_at, $2::timestamptz) WHERE room_id = ANY ($1::uuid[])`

	// closeCallsSQL closes the open calls of $1 not seen since $2, for
	// reason $3; closeCallRoomsSQL then ends their rooms at $2, as a
	// room_finished would have.
	closeCallsSQL = `UPDATE calls SET end_reason = GREATEST(end_reason, $3::smallint)
 WHERE room_id = ANY ($1::uuid[]) AND end_reason = 0 AND last_seen_at < $2::timestamptz
RETURNING room_id`

	closeCallRoomsSQL = `UPDATE rooms SET status = 2, ended_at = $2::timestamptz WHERE id = ANY ($1::uuid[]) AND status = 1
RETURNING id`
)

// startsCall reports whether an event of kind k shows the room running at
// its time. room_finished does not, and egress reports may come after the
// room is gone.
func startsCall(k room.EventKind) bool {
	switch k {
	case room.EventRoomStarted, room.EventParticipantJoined, room.EventParticipantLeft, room.EventTrackPublished, room.EventEgressStarted:
		return true
	}
	return false
}

// callState is whether the call of r has started and ended, read in tx.
func callState(ctx context.Context, tx *sql.Tx, r room.Room) (started, ended bool, err error) {
	err = tx.QueryRowContext(ctx, callStateSQL, r.ID).Scan(&started, &ended)
	if errors.Is(err, sql.ErrNoRows) {
		err = nil
	}
	return started, ended || r.Ended(), err
}

// enqueueCallEvent writes the outbound event t (call.started or
// call.ended) about room id's call as it stands in tx, for the room's
// owner.
func enqueueCallEvent(ctx context.Context, tx *sql.Tx, id uuid.UUID, t string, now time.Time) error {
	var c callRow
	if err := tx.QueryRowContext(ctx, getCallSQL, id, uuid.NullUUID{}).Scan(c.dest()...); err != nil {
		return fmt.Errorf("%s event: read call: %w", t, err)
	}
	call := c.call()
	data, err := json.Marshal(room.NewCallEventData(call))
	if err != nil {
		return fmt.Errorf("%s event: %w", t, err)
	}
	ev, err := webhook.NewEvent(call.CreatedBy, t, data, now)
	if err != nil {
		return fmt.Errorf("%s event: %w", t, err)
	}
	return enqueueWebhookEvent(ctx, tx, ev)
}

// applyCallEffect writes what event e, at at, does to r's call.
func applyCallEffect(ctx context.Context, tx *sql.Tx, r room.Room, e room.Event, at time.Time) error {
	started := sql.NullTime{Time: at, Valid: startsCall(e.Kind)}
	if _, err := tx.ExecContext(ctx, touchCallSQL, r.ID, started, at); err != nil {
		return fmt.Errorf("touch call: %w", err)
	}
	switch e.Kind {
	case room.EventRoomFinished:
		if _, err := tx.ExecContext(ctx, callFinishedSQL, r.ID, at, room.EndRoomFinished); err != nil {
			return fmt.Errorf("call finished: %w", err)
		}
	case room.EventTrackPublished:
		p := e.Participant
		if p.SessionID != "" {
			if _, err := tx.ExecContext(ctx, trackParticipantSQL, r.ID, p.SessionID, p.Identity, p.Name, p.Kind); err != nil {
				return fmt.Errorf("track's participant: %w", err)
			}
		}
		if e.Track.SID != "" {
			if _, err := tx.ExecContext(ctx, trackPublishedSQL, r.ID, e.Track.SID, p.SessionID, e.Track.Type, e.Track.Source, at); err != nil {
				return fmt.Errorf("track published: %w", err)
			}
		}
	case room.EventEgressStarted, room.EventEgressUpdated, room.EventEgressEnded:
		if e.EgressID == "" {
			return nil
		}
		st := e.Egress
		updated := st.UpdatedAt
		if updated.IsZero() {
			updated = at
		}
		_, err := tx.ExecContext(ctx, egressStateSQL, r.ID, e.EgressID, st.Status,
			sql.NullTime{Time: st.StartedAt, Valid: !st.StartedAt.IsZero()}, sql.NullTime{Time: st.EndedAt, Valid: !st.EndedAt.IsZero()}, updated)
		if err != nil {
			return fmt.Errorf("egress state: %w", err)
		}
		for _, rec := range e.Recordings {
			if _, err := tx.ExecContext(ctx, callRecordingSQL, rec.BlobName, r.ID, e.EgressID, rec.Filename, rec.ContentType, rec.SizeBytes); err != nil {
				return fmt.Errorf("call recording: %w", err)
			}
		}
	}
	return nil
}

// callRow scans a row of callColumns or listCallColumns.
type callRow struct {
	roomRow              roomRow
	started, ended       sql.NullTime
	reason               int16
	lastSeen, reported   sql.NullTime
	figured              bool
	turns, interruptions int
	report               []byte
}

func (c *callRow) dest() []any {
	return append(c.roomRow.dest(), &c.started, &c.ended, &c.reason, &c.lastSeen, &c.reported,
		&c.figured, &c.turns, &c.interruptions, &c.report)
}

// call is the row's call, its status derived: ended if anything ended it
// (the room's own end included), live once an event showed it running.
func (c *callRow) call() room.Call {
	r := c.roomRow.room()
	out := room.Call{
		ID: r.ID, RoomName: r.Name, ConversationID: r.ConversationID, LiveKitRoom: r.LiveKitRoom, LiveKitSID: r.LiveKitSID,
		CreatedBy: r.CreatedBy, AgentName: r.AgentName, CreatedAt: r.CreatedAt,
		StartedAt: c.started.Time, EndReason: room.EndReason(c.reason), LastSeenAt: c.lastSeen.Time,
		Report: c.report, ReportedAt: c.reported.Time, Status: room.CallPending,
	}
	if c.figured {
		// callDetails adds the latencies and usage.
		out.Metrics = &room.CallMetrics{Turns: c.turns, Interruptions: c.interruptions}
	}
	if c.started.Valid {
		out.Status = room.CallLive
	}
	if out.EndReason == room.EndNone && r.Ended() {
		out.EndReason = room.EndRoomEnded
	}
	switch {
	case c.ended.Valid:
		out.EndedAt = c.ended.Time
	case out.EndReason == room.EndRoomEnded:
		out.EndedAt = r.EndedAt
	case out.EndReason != room.EndNone:
		// Closed by the job: it ended after the last sign of life, which
		// a late event still moves.
		out.EndedAt = c.lastSeen.Time
	}
	if out.EndReason != room.EndNone {
		out.Status = room.CallEnded
	}
	return out
}

// Call implements room.Store.
func (s *RoomStore) Call(ctx context.Context, id, owner uuid.UUID) (_ room.Call, err error) {
	defer markUnavailable(&err)
	var c callRow
	err = s.db.QueryRowContext(ctx, getCallSQL, id, uuid.NullUUID{UUID: owner, Valid: owner != uuid.Nil}).Scan(c.dest()...)
	if errors.Is(err, sql.ErrNoRows) {
		return room.Call{}, room.ErrNotFound
	}
	if err != nil {
		return room.Call{}, fmt.Errorf("get call: %w", err)
	}
	calls := []room.Call{c.call()}
	if err := s.callDetails(ctx, calls); err != nil {
		return room.Call{}, err
	}
	return calls[0], nil
}

// ListCalls implements room.Store: a keyset page of rooms newest first,
// by the owner's index (rooms_created_by_created_idx) or, for everyone's,
// rooms_created_idx, the filters applied to the rows the scan passes.
func (s *RoomStore) ListCalls(ctx context.Context, owner uuid.UUID, f room.CallFilter, after *room.Cursor, limit int) (_ []room.Call, err error) {
	defer markUnavailable(&err)
	var q callQuery
	conds, err := q.filter(owner, f)
	if err != nil {
		return nil, err
	}
	if after != nil {
		conds = append(conds, "(r.created_at, r.id) < ("+q.arg(after.CreatedAt)+"::timestamptz, "+q.arg(after.ID)+"::uuid)")
	}
	sel := `SELECT ` + listCallColumns + callFrom
	if len(conds) > 0 {
		sel += "\n WHERE " + strings.Join(conds, "\n   AND ")
	}
	sel += "\n ORDER BY r.created_at DESC, r.id DESC\n LIMIT " + q.arg(limit)
	calls, err := readRows(ctx, s.db, "list calls", limit, func(rows *sql.Rows) (room.Call, error) {
		var c callRow
		err := rows.Scan(c.dest()...)
		return c.call(), err
	}, sel, q.args...)
	if err != nil {
		return nil, err
	}
	if err := s.callDetails(ctx, calls); err != nil {
		return nil, err
	}
	return calls, nil
}

// callQuery builds a statement over rooms r and calls c, numbering its
// parameters.
type callQuery struct{ args []any }

func (q *callQuery) arg(v any) string {
	q.args = append(q.args, v)
	return "$" + strconv.Itoa(len(q.args))
}

// filter returns the conditions that keep owner's calls (uuid.Nil:
// everyone's) matching f, for ListCalls and AggregateCalls alike.
func (q *callQuery) filter(owner uuid.UUID, f room.CallFilter) ([]string, error) {
	var conds []string
	arg := q.arg
	if owner != uuid.Nil {
		conds = append(conds, "r.created_by = "+arg(owner)+"::uuid")
	}
	if !f.CreatedAfter.IsZero() {
		conds = append(conds, "r.created_at >= "+arg(f.CreatedAfter)+"::timestamptz")
	}
	if !f.CreatedBefore.IsZero() {
		conds = append(conds, "r.created_at < "+arg(f.CreatedBefore)+"::timestamptz")
	}
	const ended = "(COALESCE(c.end_reason, 0) > 0 OR r.status = 2)"
	switch f.Status {
	case room.CallEnded:
		conds = append(conds, ended)
	case room.CallLive:
		conds = append(conds, "NOT "+ended+" AND c.started_at IS NOT NULL")
	case room.CallPending:
		conds = append(conds, "NOT "+ended+" AND c.started_at IS NULL")
	}
	if f.AgentName != "" {
		cond := "r.agent_name = " + arg(f.AgentName) + "::text"
		if f.DefaultAgent {
			cond = "(" + cond + " OR r.agent_name IS NULL)"
		}
		conds = append(conds, cond)
	}
	if len(f.Metadata) > 0 {
		md, err := metadataArg(f.Metadata)
		if err != nil {
			return nil, err
		}
		conds = append(conds, "EXISTS (SELECT 1 FROM conversations m WHERE m.id = r.conversation_id AND m.metadata @> "+arg(md)+"::jsonb)")
	}
	return conds, nil
}

// callDetails reads the participants, tracks and egresses of calls, four
// statements however many calls.
func (s *RoomStore) callDetails(ctx context.Context, calls []room.Call) error {
	if len(calls) == 0 {
		return nil
	}
	ids := make([]string, len(calls))
	index := make(map[uuid.UUID]int, len(calls))
	for i, c := range calls {
		ids[i], index[c.ID] = c.ID.String(), i
	}
	type sessionKey struct {
		room    uuid.UUID
		session string
	}
	where := map[sessionKey]int{}
	err := eachRow(ctx, s.db, "call participants", callParticipantsSQL, ids, func(rows *sql.Rows) error {
		var (
			id           uuid.UUID
			p            room.CallParticipant
			joined, left sql.NullTime
		)
		if err := rows.Scan(&id, &p.SessionID, &p.Identity, &p.Name, &p.Kind, &joined, &left); err != nil {
			return err
		}
		p.JoinedAt, p.LeftAt = joined.Time, left.Time
		c := &calls[index[id]]
		where[sessionKey{id, p.SessionID}] = len(c.Participants)
		c.Participants = append(c.Participants, p)
		return nil
	})
	if err != nil {
		return err
	}
	err = eachRow(ctx, s.db, "call tracks", callTracksSQL, ids, func(rows *sql.Rows) error {
		var (
			id      uuid.UUID
			session string
			t       room.Track
		)
		if err := rows.Scan(&id, &session, &t.SID, &t.Type, &t.Source, &t.PublishedAt); err != nil {
			return err
		}
		c := &calls[index[id]]
		if i, ok := where[sessionKey{id, session}]; ok {
			c.Participants[i].Tracks = append(c.Participants[i].Tracks, t)
		}
		return nil
	})
	if err != nil {
		return err
	}
	type egressKey struct {
		room   uuid.UUID
		egress string
	}
	egresses := map[egressKey]int{}
	err = eachRow(ctx, s.db, "call egresses", callEgressesSQL, ids, func(rows *sql.Rows) error {
		var (
			id             uuid.UUID
			eg             room.CallEgress
			started, ended sql.NullTime
		)
		if err := rows.Scan(&id, &eg.ID, &eg.Status, &started, &ended); err != nil {
			return err
		}
		eg.StartedAt, eg.EndedAt = started.Time, ended.Time
		c := &calls[index[id]]
		egresses[egressKey{id, eg.ID}] = len(c.Egresses)
		c.Egresses = append(c.Egresses, eg)
		return nil
	})
	if err != nil {
		return err
	}
	err = eachRow(ctx, s.db, "call recordings", callRecordingsSQL, ids, func(rows *sql.Rows) error {
		var (
			roomID uuid.UUID
			egress string
			file   uuid.NullUUID
			f      room.CallFile
		)
		if err := rows.Scan(&roomID, &egress, &file, &f.Filename, &f.ContentType, &f.SizeBytes); err != nil {
			return err
		}
		f.FileID = file.UUID
		c := &calls[index[roomID]]
		if i, ok := egresses[egressKey{roomID, egress}]; ok {
			c.Egresses[i].Files = append(c.Egresses[i].Files, f)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.callFigures(ctx, calls, index)
}

// eachRow runs query with its one argument and hands each row to scan.
func eachRow(ctx context.Context, db *sql.DB, op, query string, arg any, scan func(*sql.Rows) error) error {
	return eachRowOf(ctx, db, op, query, []any{arg}, scan)
}

// eachRowOf runs query on db (a pool or a transaction) and hands each row
// to scan.
func eachRowOf(ctx context.Context, db querier, op, query string, args []any, scan func(*sql.Rows) error) error {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("%s: scan: %w", op, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// OpenCalls implements room.Store.
func (s *RoomStore) OpenCalls(ctx context.Context, after uuid.UUID, limit int) (_ []room.OpenCall, err error) {
	defer markUnavailable(&err)
	return readRows(ctx, s.db, "open calls", limit, func(rows *sql.Rows) (room.OpenCall, error) {
		var c room.OpenCall
		err := rows.Scan(&c.ID, &c.LiveKitRoom, &c.LiveKitSID, &c.LastSeenAt)
		return c, err
	}, openCallsSQL, after, limit)
}

// SeeCalls implements room.Store.
func (s *RoomStore) SeeCalls(ctx context.Context, ids []uuid.UUID, at time.Time) (err error) {
	defer markUnavailable(&err)
	if _, err := s.db.ExecContext(ctx, seeCallsSQL, uuidStrings(ids), at); err != nil {
		return fmt.Errorf("see calls: %w", err)
	}
	return nil
}

// CloseCalls implements room.Store: the calls, their rooms and their
// call.ended events in one transaction. A call whose room was ended
// already (EndRoom raced the job) had its call.ended then.
func (s *RoomStore) CloseCalls(ctx context.Context, ids []uuid.UUID, reason room.EndReason, seenBefore, now time.Time) (_ []uuid.UUID, err error) {
	defer markUnavailable(&err)
	var closed []uuid.UUID
	err = inTx(ctx, s.bun, "close calls", func(ctx context.Context, tx bun.Tx) error {
		rows, err := tx.Tx.QueryContext(ctx, closeCallsSQL, uuidStrings(ids), seenBefore, reason)
		if err != nil {
			return fmt.Errorf("close calls: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var id uuid.UUID
			if err := rows.Scan(&id); err != nil {
				return fmt.Errorf("close calls: scan: %w", err)
			}
			closed = append(closed, id)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("close calls: %w", err)
		}
		if len(closed) == 0 {
			return nil
		}
		ended, err := readRows(ctx, tx.Tx, "close calls: end rooms", len(closed), func(rows *sql.Rows) (uuid.UUID, error) {
			var id uuid.UUID
			err := rows.Scan(&id)
			return id, err
		}, closeCallRoomsSQL, uuidStrings(closed), now)
		if err != nil {
			return err
		}
		for _, id := range ended {
			if err := enqueueCallEvent(ctx, tx.Tx, id, webhook.CallEnded, now); err != nil {
				return fmt.Errorf("close calls: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return closed, nil
}

func uuidStrings(ids []uuid.UUID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}
