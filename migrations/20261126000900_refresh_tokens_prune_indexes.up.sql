-- Expired refresh tokens are deleted in batches by expiry
-- (postgres.AccountStore.PruneRefreshTokens), and every deleted token sets
-- its children's parent_id to NULL: without an index on parent_id that is
-- a scan of the whole table per deleted row.
--
-- CONCURRENTLY, so replicas of the previous release keep rotating refresh
-- tokens while the indexes build; that needs one statement at a time
-- outside a transaction (this is not a .tx.up.sql file). A build that fails
-- leaves an invalid index behind, so each is dropped first and the retry
-- starts clean.
DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_expires_at_idx;
--bun:split
CREATE INDEX CONCURRENTLY refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);
--bun:split
DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_parent_id_idx;
--bun:split
CREATE INDEX CONCURRENTLY refresh_tokens_parent_id_idx ON refresh_tokens (parent_id);
