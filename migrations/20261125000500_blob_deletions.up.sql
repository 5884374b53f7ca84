-- blob_deletions is the outbox of blobs to delete after a commit. Entries
-- come from two places: the trigger below, in the same transaction as any
-- deletion of a file row (DeleteFile, a conversation's or a user's cascade,
-- the expiry of pending uploads); and reservations written before an upload
-- or export stores its blob, due after a grace period and claimed (deleted)
-- by the transaction that inserts the file row, which must come before any
-- worker has touched the entry.
--
-- Every replica's worker takes due entries with FOR UPDATE SKIP LOCKED and
-- leases them (locked_until) rather than holding a transaction open while
-- it calls storage; a worker that dies mid-way lets its lease run out.
-- Failures are retried with backoff (attempts, due_at).
CREATE TABLE blob_deletions (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    blob_name    text        NOT NULL,
    due_at       timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX blob_deletions_due_idx ON blob_deletions (due_at);

-- A PENDING file's upload URL (at most 15 minutes, PARLEY_FILE_URL_TTL) may
-- still create the blob after the row is gone, so its blob is deleted once
-- more after the URL has certainly expired.
CREATE FUNCTION files_queue_blob_deletion() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO blob_deletions (blob_name) VALUES (OLD.blob_name);
    IF OLD.status = 1 AND OLD.created_at + interval '16 minutes' > now() THEN
        INSERT INTO blob_deletions (blob_name, due_at) VALUES (OLD.blob_name, OLD.created_at + interval '16 minutes');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER files_queue_blob_deletion
    AFTER DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION files_queue_blob_deletion();
