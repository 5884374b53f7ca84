-- Files of conversations. blob_name is made from server ids only
-- ({conversation_id}/{id}); filename is sanitised display metadata. A file is
-- PENDING from CreateUpload until CompleteUpload has checked its bytes.
CREATE TABLE files (
    id              uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    blob_name       text        NOT NULL,
    filename        text        NOT NULL,
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256          text        NOT NULL DEFAULT '',
    kind            smallint    NOT NULL,
    status          smallint    NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT files_blob_name_key UNIQUE (blob_name)
);

-- ListFiles: a conversation's files, newest first, keyset on (created_at, id).
CREATE INDEX files_conversation_created_idx ON files (conversation_id, created_at DESC, id DESC);

-- The outbox worker's sweep of uploads that were never completed.
CREATE INDEX files_pending_created_idx ON files (created_at) WHERE status = 1;
