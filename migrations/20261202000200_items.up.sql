-- Items are a conversation's chat items of every kind (LiveKit's
-- ChatContext.ChatItem: messages, function calls and their outputs, agent
-- handoffs, agent config updates), numbered 1, 2, 3, ... by seq in commit
-- order. Writers allocate seqs by bumping conversations.last_item_seq under
-- the row lock, as SaveTurn does last_seq, so they are gap-free.
ALTER TABLE conversations
    ADD COLUMN item_count    bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_item_seq bigint NOT NULL DEFAULT 0;

-- id is the client's item id (LiveKit's), the exactly-once key. payload is
-- the item as the protobuf JSON of parley.v1.ChatContext.ChatItem. A user,
-- assistant or system text message also has a row in messages, message_seq;
-- role is set on messages only and call_id on function calls and outputs.
CREATE TABLE items (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint      NOT NULL,
    id              text        NOT NULL,
    kind            smallint    NOT NULL,
    agent           text        NOT NULL DEFAULT '',
    message_id      text        NOT NULL DEFAULT '',
    role            smallint,
    payload         jsonb       NOT NULL,
    message_seq     bigint,
    call_id         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq),
    CONSTRAINT items_conversation_id_id_key UNIQUE (conversation_id, id)
);

-- ListItems filtered by agent: keyset on seq within one agent's items.
CREATE INDEX items_agent_seq_idx ON items (conversation_id, agent, seq);

-- item_seq is the seq of a message's item, set by writers that write the
-- item themselves. It is NULL where the trigger below or the backfill made
-- the item: that item has the message's seq as its message_seq.
ALTER TABLE messages ADD COLUMN item_seq bigint;

-- parley_message_item is the payload of a plain text message, as
-- protojson writes a ChatItem (lowerCamelCase names, enum value names,
-- RFC 3339 UTC time). SaveTurn's items, the trigger's and the backfill's
-- are all made by it, so they are the same whichever binary wrote them.
CREATE FUNCTION parley_message_item(id text, role smallint, content text, created_at timestamptz)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT jsonb_build_object('message', jsonb_build_object(
    'id', id,
    'role', CASE role WHEN 1 THEN 'CHAT_ROLE_USER' WHEN 2 THEN 'CHAT_ROLE_ASSISTANT' WHEN 3 THEN 'CHAT_ROLE_SYSTEM' ELSE 'CHAT_ROLE_UNSPECIFIED' END,
    'content', jsonb_build_array(jsonb_build_object('text', content)),
    'createdAt', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
$$;

-- parley_turn_item_id is the item id of a message SaveTurn saved: derived
-- from the turn id and role when there is a turn id, else from the
-- message's own id. AppendItems refuses client ids with this prefix.
CREATE FUNCTION parley_turn_item_id(turn_id text, role smallint, message_id uuid)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT 'saveturn:' || CASE
    WHEN turn_id IS NULL THEN message_id::text
    ELSE turn_id || ':' || CASE role WHEN 1 THEN 'user' WHEN 2 THEN 'assistant' ELSE 'system' END
END
$$;

-- Rolling update: a binary of the previous release saves turns into
-- messages (and turns) only. This trigger gives each message inserted
-- without an item_seq its item, after the statement, in the same
-- transaction and under the conversation row lock that binary's statement
-- already holds, so items stay complete and gap-free while both run. It
-- runs once per statement, so a bulk insert bumps each conversation once.
CREATE FUNCTION messages_add_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH added AS (
        SELECT m.*, parley_turn_item_id(m.turn_id, m.role, m.id) AS item_id,
               row_number() OVER (PARTITION BY m.conversation_id ORDER BY m.seq) AS n
          FROM new_messages m
         WHERE m.item_seq IS NULL
    ), conv AS (
        UPDATE conversations c
           SET last_item_seq = c.last_item_seq + a.total, item_count = c.item_count + a.total
          FROM (SELECT conversation_id, count(*) AS total FROM added GROUP BY conversation_id) a
         WHERE c.id = a.conversation_id
     RETURNING c.id, c.last_item_seq - a.total AS base
    )
    INSERT INTO items (conversation_id, seq, id, kind, message_id, role, payload, message_seq, created_at)
    SELECT a.conversation_id, conv.base + a.n, a.item_id, 1, coalesce(a.turn_id, ''), a.role,
           parley_message_item(a.item_id, a.role, a.content, a.created_at), a.seq, a.created_at
      FROM added a
      JOIN conv ON conv.id = a.conversation_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_add_items AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION messages_add_items();

-- Backfill: every message so far is an item, in the same order, so its
-- item seq is its seq. The ALTER TABLE above holds writers off until this
-- commits.
INSERT INTO items (conversation_id, seq, id, kind, message_id, role, payload, message_seq, created_at)
SELECT m.conversation_id, m.seq, parley_turn_item_id(m.turn_id, m.role, m.id), 1, coalesce(m.turn_id, ''), m.role,
       parley_message_item(parley_turn_item_id(m.turn_id, m.role, m.id), m.role, m.content, m.created_at),
       m.seq, m.created_at
  FROM messages m;

UPDATE conversations SET last_item_seq = last_seq, item_count = message_count WHERE last_seq > 0;
