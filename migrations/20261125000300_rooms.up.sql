-- Rooms are LiveKit rooms together with the conversation recorded in them.
-- livekit_room is derived from the id only ("parley-<id>"); webhooks find
-- rooms by it. status 1 is active, 2 ended; ended_at is set exactly when the
-- room is ended, and nothing turns an ended room active again.
--
-- rooms.conversation_id and conversations.room_id point at each other. The
-- room's key is checked at commit (DEFERRABLE INITIALLY DEFERRED) so that
-- CreateRoom can insert the room, then its conversation, in one transaction.
-- Deleting the conversation leaves the room, without a conversation.
CREATE TABLE rooms (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    conversation_id uuid        REFERENCES conversations (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
    livekit_room    text        NOT NULL,
    status          smallint    NOT NULL DEFAULT 1,
    created_by      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    ended_at        timestamptz,
    CONSTRAINT rooms_status_check CHECK (status IN (1, 2) AND (status = 2) = (ended_at IS NOT NULL))
);

CREATE UNIQUE INDEX rooms_livekit_room_key ON rooms (livekit_room);
-- ListRooms: a user's own, newest first, keyset on (created_at, id).
CREATE INDEX rooms_created_by_created_idx ON rooms (created_by, created_at DESC, id DESC);
-- Serves ON DELETE SET NULL when a conversation is deleted.
CREATE INDEX rooms_conversation_id_idx ON rooms (conversation_id) WHERE conversation_id IS NOT NULL;

-- conversations.room_id was left without a key until rooms existed. NOT
-- VALID then VALIDATE keeps the ACCESS EXCLUSIVE part short on a large table.
ALTER TABLE conversations
    ADD CONSTRAINT conversations_room_id_fkey FOREIGN KEY (room_id) REFERENCES rooms (id) ON DELETE SET NULL NOT VALID;
ALTER TABLE conversations VALIDATE CONSTRAINT conversations_room_id_fkey;
CREATE INDEX conversations_room_id_idx ON conversations (room_id) WHERE room_id IS NOT NULL;
