-- conversation.items_appended is batched (issue 16): an append whose
-- conversation's owner has an endpoint taking that type extends the
-- conversation's pending batch, seqs first_seq to last_seq, in its own
-- statement and under the conversation row lock, so a batch's seqs are
-- contiguous. Flushers on every replica take batches due (due_at: the
-- window after opened_at, or opened_at once the batch is full) with FOR
-- UPDATE SKIP LOCKED and, in one transaction, write the event and delete
-- the batch (or keep the rest of a long one). A deleted conversation's
-- batch goes with it. New table only: older replicas never touch it.
CREATE TABLE webhook_item_batches (
    conversation_id uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    due_at timestamptz NOT NULL
);

CREATE INDEX webhook_item_batches_due_at_idx ON webhook_item_batches (due_at);
