-- Agent API keys, made by `parley agent-key create`. Only the SHA-256 of the
-- key is stored; the key itself is printed once.
CREATE TABLE agent_keys (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    key_hash   bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE UNIQUE INDEX agent_keys_key_hash_key ON agent_keys (key_hash);
