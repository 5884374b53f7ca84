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

-- Recordings (egress_ended) are rows of the files table, kind RECORDING,
-- status READY, whose blob_name is the name egress wrote.
