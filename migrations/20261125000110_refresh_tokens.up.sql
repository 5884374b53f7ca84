-- A refresh family is every refresh token descended from one sign-in. Reusing
-- a spent token revokes the family, which cuts off whoever stole one of them.
CREATE TABLE refresh_families (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX refresh_families_user_id_idx ON refresh_families (user_id);

-- Refresh tokens are stored only as the SHA-256 of the opaque token the
-- client holds. A token is spent once rotated; its child names it as parent.
CREATE TABLE refresh_tokens (
    id         uuid        PRIMARY KEY,
    token_hash bytea       NOT NULL,
    family_id  uuid        NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    parent_id  uuid        REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz
);

CREATE UNIQUE INDEX refresh_tokens_token_hash_key ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
