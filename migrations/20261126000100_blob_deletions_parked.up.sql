-- An outbox entry that can never succeed (a name the blob store refuses, or
-- attempts exhausted) is parked rather than retried forever: due at
-- infinity, so no worker takes it again, and kept with its last error for
-- an operator to inspect.
ALTER TABLE blob_deletions ADD COLUMN parked_at timestamptz;
