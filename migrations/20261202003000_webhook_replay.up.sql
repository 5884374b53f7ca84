-- ListEvents replays a user's webhook events from a cursor, and parked
-- deliveries can be redelivered (issue 16).
--   webhook_events.xid: the writing transaction's id. Events are listed in
--     (xid, id) order and only below the oldest transaction still running
--     (pg_snapshot_xmin), so an event committed late never lands behind a
--     cursor a client already holds.
--   webhook_deliveries.retry_since / retry_base: a redelivery restarts the
--     retry window at retry_since (NULL: the event's creation) and the
--     backoff at the attempt count retry_base (0: the first claim).
-- Expand only: older replicas neither read nor write these columns, and the
-- defaults fill them for rows those write.
ALTER TABLE webhook_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE INDEX webhook_events_user_id_xid_idx ON webhook_events (user_id, xid, id);

ALTER TABLE webhook_deliveries
    ADD COLUMN retry_since timestamptz,
    ADD COLUMN retry_base integer NOT NULL DEFAULT 0;
