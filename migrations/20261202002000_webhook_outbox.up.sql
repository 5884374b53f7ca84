-- The outbound webhooks' transactional outbox (issue 16). An event is
-- written in the transaction of the change that causes it, with one
-- delivery per endpoint of its user subscribed to its type. Dispatchers on
-- every replica lease due deliveries (locked_until) with FOR UPDATE SKIP
-- LOCKED; an endpoint's deliveries go one at a time in id order. state:
-- 1 pending, 2 delivered, 3 parked (retried for 24 hours, then kept for
-- the customer to see). New tables only: older replicas never touch them.
CREATE TABLE webhook_events (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type text NOT NULL,
    -- The exact JSON body signed and sent.
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX webhook_events_user_id_idx ON webhook_events (user_id, created_at, id);

CREATE TABLE webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    state smallint NOT NULL DEFAULT 1,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    locked_until timestamptz,
    last_status integer,
    last_error text,
    finished_at timestamptz
);

-- The head of each endpoint's line: its oldest pending delivery.
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, id) WHERE state = 1;
CREATE INDEX webhook_deliveries_event_id_idx ON webhook_deliveries (event_id);
