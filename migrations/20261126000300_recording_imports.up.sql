-- recording_imports is the outbox that turns a LiveKit egress recording into
-- a file. Egress writes under a name of its own choosing; a file's bytes
-- live under {conversation_id}/{file_id}. The egress_ended webhook queues an
-- import in the transaction that records the event; a worker copies the
-- blob to the file's name (server-side, idempotently), then, in one
-- transaction, inserts the READY file row, removes the import and queues the
-- original for deletion. Workers lease entries as they lease blob_deletions.
--
-- conversation_id has no foreign key on purpose: a conversation deleted
-- before the import must not take the import, and with it the knowledge of
-- egress's blob, along; the worker then deletes the blob instead.
CREATE TABLE recording_imports (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_id         uuid        NOT NULL UNIQUE,
    conversation_id uuid        NOT NULL,
    source_name     text        NOT NULL UNIQUE,
    filename        text        NOT NULL,
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL CHECK (size_bytes >= 0),
    -- existing marks a recording an earlier release filed under egress's
    -- name: its row is moved to the file's own blob, not created.
    existing        boolean     NOT NULL DEFAULT false,
    due_at          timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    parked_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX recording_imports_due_idx ON recording_imports (due_at);

-- Recordings filed before this release name egress's blob, which GetFile
-- never signs and the outbox could not delete: move them.
INSERT INTO recording_imports (file_id, conversation_id, source_name, filename, content_type, size_bytes, existing)
SELECT id, conversation_id, blob_name, filename, content_type, size_bytes, true
  FROM files
 WHERE kind = 2 AND blob_name <> conversation_id::text || '/' || id::text
ON CONFLICT DO NOTHING;
