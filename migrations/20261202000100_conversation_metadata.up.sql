-- Conversation metadata (issue 14): conversations.metadata is what readers
-- get back; conversation_metadata holds the same pairs one a row, with the
-- owner and created_at copied from the conversation (both immutable), so
-- that a ListConversations page filtered by key=value is one range scan of
-- its index in the page's own (created_at DESC, id DESC) order, whatever
-- share of the owner's conversations the pair matches. The writers of the
-- new binary keep both in the same statement or transaction; an older
-- binary writes no metadata, which leaves both empty for its rows.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}';

CREATE TABLE IF NOT EXISTS conversation_metadata (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    key             text        NOT NULL,
    value           text        NOT NULL,
    user_id         uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, key)
);

CREATE INDEX IF NOT EXISTS conversation_metadata_page_idx
    ON conversation_metadata (user_id, key, value, created_at DESC, conversation_id DESC);

-- The planner reads a pair's entries whole (a bitmap scan and a sort) only
-- where it expects few; owner and pair are correlated, so it needs their
-- joint statistics to expect many where a heavy user has many.
CREATE STATISTICS IF NOT EXISTS conversation_metadata_pair_stats (mcv, dependencies)
    ON user_id, key, value FROM conversation_metadata;
