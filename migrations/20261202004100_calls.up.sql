-- Calls (issue 16): a room's life on LiveKit, built from its webhooks. LiveKit
-- delivers them at most once each, in no promised order, so every column is
-- a join of the events' own values: started_at the least time of an event
-- showing the room running, ended_at the greatest room_finished time,
-- last_seen_at the greatest time of any event or sighting by the
-- reconciliation job, end_reason the greatest reason (0 open, 1 stale,
-- 2 LiveKit no longer lists the room, 4 room_finished). The row appears with
-- the room's first event. report is the agent's session report, NULL until
-- it reports. Expand only: older replicas neither read nor write these.
CREATE TABLE IF NOT EXISTS calls (
    room_id      uuid        PRIMARY KEY REFERENCES rooms (id) ON DELETE CASCADE,
    started_at   timestamptz,
    ended_at     timestamptz,
    end_reason   smallint    NOT NULL DEFAULT 0,
    last_seen_at timestamptz NOT NULL,
    report       jsonb,
    reported_at  timestamptz
);

-- The reconciliation job walks the open calls in id order.
CREATE INDEX IF NOT EXISTS calls_open_idx ON calls (room_id) WHERE end_reason = 0 AND started_at IS NOT NULL;

-- A participant's kind: 1 user, 2 LiveKit's egress or ingress, 3 agent;
-- the greatest an event named (NULL: none did, rows older than this).
ALTER TABLE room_participants ADD COLUMN IF NOT EXISTS kind smallint;

-- Tracks participants published (track_published), keyed by track sid.
CREATE TABLE IF NOT EXISTS call_tracks (
    room_id      uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    track_sid    text        NOT NULL,
    session_id   text        NOT NULL,
    type         text        NOT NULL,
    source       text        NOT NULL DEFAULT '',
    published_at timestamptz NOT NULL,
    PRIMARY KEY (room_id, track_sid)
);

-- Egresses of a room (egress_started, egress_updated, egress_ended): the
-- state kept is the greatest by (rank, LiveKit's updated_at, status), where
-- every terminal status (4 and up) ranks alike.
CREATE TABLE IF NOT EXISTS call_egresses (
    room_id    uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    egress_id  text        NOT NULL,
    status     smallint    NOT NULL,
    started_at timestamptz,
    ended_at   timestamptz,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (room_id, egress_id)
);

-- The files an egress_ended's egress wrote, as LiveKit's API confirmed them,
-- and the file each becomes (recording_imports.file_id; NULL when the
-- conversation was gone).
CREATE TABLE IF NOT EXISTS call_recordings (
    source_name  text   PRIMARY KEY,
    room_id      uuid   NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    egress_id    text   NOT NULL,
    file_id      uuid,
    filename     text   NOT NULL,
    content_type text   NOT NULL,
    size_bytes   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS call_recordings_room_idx ON call_recordings (room_id, egress_id);

-- ListCalls for agents reads everyone's rooms newest first. CONCURRENTLY,
-- so the previous release keeps creating rooms while it builds (hence the
-- splits, and no transaction); a failed build leaves an invalid index, so
-- it is dropped first and the retry starts clean.
--bun:split
DROP INDEX CONCURRENTLY IF EXISTS rooms_created_idx;
--bun:split
CREATE INDEX CONCURRENTLY rooms_created_idx ON rooms (created_at DESC, id DESC);
