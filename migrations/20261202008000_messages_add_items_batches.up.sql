-- Rolling update: a binary of the previous release saves turns into
-- messages only, and the items migration's trigger gives them their items.
-- It did not open or extend the conversation's pending
-- conversation.items_appended batch, so while both binaries ran, events
-- skipped those seqs. It now upserts the batch as AppendItemsSQL does: only
-- when the owner has an endpoint taking the type, seqs contiguous under the
-- conversation row lock the statement already holds, due once the window
-- (webhook.ItemsWindow, 5 s) passes or at once when it holds
-- webhook.MaxItemsPerEvent (100) items. This release's messages carry an
-- item_seq, so for them the trigger adds nothing, and their batch is
-- AppendItemsSQL's alone.
CREATE OR REPLACE FUNCTION messages_add_items() RETURNS trigger LANGUAGE plpgsql AS $$
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
     RETURNING c.id, c.user_id, c.last_item_seq - a.total AS base, a.total
    ), batch AS (
        INSERT INTO webhook_item_batches AS b (conversation_id, user_id, first_seq, last_seq, opened_at, due_at)
        SELECT conv.id, conv.user_id, conv.base + 1, conv.base + conv.total, now(),
               now() + CASE WHEN conv.total >= 100 THEN interval '0' ELSE interval '5 seconds' END
          FROM conv
         WHERE EXISTS (SELECT 1 FROM webhook_endpoints e
                        WHERE e.user_id = conv.user_id AND 'conversation.items_appended' = ANY (e.event_types))
            ON CONFLICT (conversation_id) DO UPDATE
           SET last_seq = EXCLUDED.last_seq,
               due_at = b.opened_at + CASE WHEN EXCLUDED.last_seq - b.first_seq + 1 >= 100 THEN interval '0' ELSE interval '5 seconds' END
    )
    INSERT INTO items (conversation_id, seq, id, kind, message_id, role, payload, message_seq, created_at)
    SELECT a.conversation_id, conv.base + a.n, a.item_id, 1, coalesce(a.turn_id, ''), a.role,
           parley_message_item(a.item_id, a.role, a.content, a.created_at), a.seq, a.created_at
      FROM added a
      JOIN conv ON conv.id = a.conversation_id;
    RETURN NULL;
END
$$;
