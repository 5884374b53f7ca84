-- livekit_events makes webhook delivery idempotent across replicas: an
-- event's id is inserted in the same transaction as its effect, and a
-- second delivery finds it there and does nothing. Old rows may be pruned
-- once LiveKit has stopped retrying (minutes), e.g. after a week.
CREATE TABLE livekit_events (
    id          text        PRIMARY KEY,
    kind        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX livekit_events_received_at_idx ON livekit_events (received_at);

-- room_participants records participant sessions (LiveKit's participant sid
-- is new for every session). Joins and leaves may arrive in any order: each
-- fills in its own column, so a leave before its join never makes the
-- session present, and presence is joined_at IS NOT NULL AND left_at IS NULL.
CREATE TABLE room_participants (
    room_id    uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    session_id text        NOT NULL,
    identity   text        NOT NULL,
    name       text        NOT NULL DEFAULT '',
    joined_at  timestamptz,
    left_at    timestamptz,
    PRIMARY KEY (room_id, session_id)
);

-- room_recordings are files LiveKit egress wrote for a room, referenced by
-- their location (the blob is not copied), recorded on the room's
-- conversation. Its columns mirror the public File message (kind RECORDING,
-- status READY) so the files table can take them over.
CREATE TABLE room_recordings (
    id              uuid        PRIMARY KEY,
    room_id         uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    conversation_id uuid        REFERENCES conversations (id) ON DELETE CASCADE,
    egress_id       text        NOT NULL,
    location        text        NOT NULL,
    filename        text        NOT NULL,
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX room_recordings_egress_location_key ON room_recordings (egress_id, location);
CREATE INDEX room_recordings_conversation_id_idx ON room_recordings (conversation_id);
