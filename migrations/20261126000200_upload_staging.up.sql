-- A direct upload's client now writes a staging blob, {blob_name}.upload
-- (file.StagingSuffix); CompleteUpload copies the checked bytes to
-- blob_name, which no upload URL can write. A deleted PENDING file's
-- staging blob goes with it, and again once its upload URL (at most 15
-- minutes, PARLEY_FILE_URL_TTL) can no longer create it. blob_name itself
-- is still deleted again too: replicas of the previous release, during a
-- rolling update, hand out URLs for it.
CREATE OR REPLACE FUNCTION files_queue_blob_deletion() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO blob_deletions (blob_name) VALUES (OLD.blob_name);
    IF OLD.status = 1 THEN
        INSERT INTO blob_deletions (blob_name) VALUES (OLD.blob_name || '.upload');
        IF OLD.created_at + interval '16 minutes' > now() THEN
            INSERT INTO blob_deletions (blob_name, due_at) VALUES
                (OLD.blob_name, OLD.created_at + interval '16 minutes'),
                (OLD.blob_name || '.upload', OLD.created_at + interval '16 minutes');
        END IF;
    END IF;
    RETURN NULL;
END
$$;
