-- Outbound webhook endpoints (issue 16): a user's receiver of events and
-- the event types it takes, and the endpoint's signing secrets. A rotation
-- adds a secret and gives the older ones an expiry; until it passes, every
-- delivery carries a signature by each. New tables only: older replicas
-- never touch them.
CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url text NOT NULL,
    event_types text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_user_id_idx ON webhook_endpoints (user_id, created_at, id);

CREATE TABLE webhook_secrets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    secret bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- NULL: signs until a rotation retires it.
    expires_at timestamptz
);

CREATE INDEX webhook_secrets_endpoint_id_idx ON webhook_secrets (endpoint_id, id);
