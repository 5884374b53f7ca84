-- Conversations are owned by a user. last_seq is the seq of the newest
-- message: SaveTurn allocates seqs by bumping it under the row lock, so seqs
-- are gap-free and in commit order, and readers key caches by it.
-- room_id gets its foreign key when rooms land.
CREATE TABLE conversations (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id       uuid,
    title         text        NOT NULL DEFAULT '',
    message_count bigint      NOT NULL DEFAULT 0,
    last_seq      bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- ListConversations: a user's own, newest first, keyset on (created_at, id).
CREATE INDEX conversations_user_created_idx ON conversations (user_id, created_at DESC, id DESC);

-- Messages are immutable; the primary key serves keyset paging on seq in
-- both directions.
CREATE TABLE messages (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint      NOT NULL,
    id              uuid        NOT NULL,
    role            smallint    NOT NULL,
    content         text        NOT NULL,
    turn_id         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq)
);

-- turns makes SaveTurn idempotent: a turn id is stored once per conversation,
-- with where its messages are.
CREATE TABLE turns (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    turn_id         text        NOT NULL,
    first_seq       bigint      NOT NULL,
    message_count   smallint    NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, turn_id)
);
