-- Access tokens revoked by Logout, by jti, until they expire. This is the
-- record of truth; Valkey holds a copy for the per-request check.
CREATE TABLE revoked_tokens (
    jti        text        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);
