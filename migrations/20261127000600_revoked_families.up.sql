-- Access tokens name the refresh family they were issued from (the sid
-- claim), so that revoking a family (refresh token reuse, Logout with a
-- refresh token) revokes its access tokens too. access_expires_at is when
-- the family's latest access token expires at the latest, and so how long
-- its revocation must last. Replicas of the previous release leave it NULL.
ALTER TABLE refresh_families ADD COLUMN access_expires_at timestamptz;

-- Revoked families, by id, until their access tokens have expired. This is
-- the record of truth; Valkey holds a copy for the per-request check, as
-- for revoked_tokens.
CREATE TABLE revoked_families (
    family_id  uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_families_expires_at_idx ON revoked_families (expires_at);
