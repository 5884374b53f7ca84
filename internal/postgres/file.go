package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/webhook"
)

// The file store runs plain SQL with $n parameters on the *sql.DB under Bun,
// like the conversation store. Scoped statements take $2 as the owner the
// file's conversation must have, or NULL for any owner.
const (
	fileColumns = `f.id, f.conversation_id, f.filename, f.content_type, f.size_bytes, f.sha256, f.kind, f.status, f.created_at`

	reserveBlobSQL = `INSERT INTO blob_deletions (blob_name, due_at) VALUES ($1::text, $2::timestamptz) RETURNING id`

	// claimReservationSQL takes back a reservation before its blob's row is
	// inserted. Only an entry no worker has touched qualifies: once one has
	// leased or tried it, the blob may be gone. clock_timestamp(), not now(),
	// because the row may have been waited for.
	claimReservationSQL = `DELETE FROM blob_deletions
 WHERE id = $1::bigint AND attempts = 0 AND locked_until IS NULL AND due_at > clock_timestamp()`

	insertFileSQL = `INSERT INTO files (id, conversation_id, blob_name, filename, content_type, size_bytes, sha256, kind, status)
VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::bigint, $7::text, $8::smallint, $9::smallint)
RETURNING created_at`

	getFileSQL = `SELECT ` + fileColumns + `
  FROM files f JOIN conversations c ON c.id = f.conversation_id
 WHERE f.id = $1::uuid AND ($2::uuid IS NULL OR c.user_id = $2::uuid)`

	// markReadySQL turns a pending file READY, claims the reservation $5 of
	// its blob, and queues its staging blob ($4 is file.StagingSuffix) for
	// deletion once no upload URL can create it again: 16 minutes after the
	// file, as the files_queue_blob_deletion trigger reckons.
	markReadySQL = `WITH ready AS (
    UPDATE files f
       SET status = 2, size_bytes = $2::bigint, sha256 = $3::text, updated_at = now()
     WHERE f.id = $1::uuid AND f.status = 1
    RETURNING ` + fileColumns + `, f.blob_name
), claimed AS (
    DELETE FROM blob_deletions WHERE id = $5::bigint AND EXISTS (SELECT 1 FROM ready)
), staged AS (
    INSERT INTO blob_deletions (blob_name, due_at)
    SELECT blob_name || $4::text, GREATEST(now(), created_at + interval '16 minutes') FROM ready
)
SELECT ` + fileColumns + ` FROM ready f`

	// deleteFileSQL deletes the row; the files_queue_blob_deletion trigger
	// queues its blob in the same transaction.
	deleteFileSQL = `DELETE FROM files f USING conversations c
 WHERE f.id = $1::uuid AND c.id = f.conversation_id AND ($2::uuid IS NULL OR c.user_id = $2::uuid)`

	expirePendingSQL = `DELETE FROM files
 WHERE id IN (SELECT id FROM files
               WHERE status = 1 AND created_at < $1::timestamptz
               ORDER BY created_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)`

	// leaseDeletionsSQL takes up to $1 due entries no live worker holds and
	// leases them for $2 seconds. live says a file row still names the blob,
	// which only a bug could cause: such an entry is dropped, never acted on.
	leaseDeletionsSQL = `UPDATE blob_deletions d
   SET locked_until = now() + make_interval(secs => $2::float8)
  FROM (SELECT id FROM blob_deletions
         WHERE due_at <= now() AND (locked_until IS NULL OR locked_until < now())
         ORDER BY due_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED) due
 WHERE d.id = due.id
RETURNING d.id, d.blob_name, d.attempts, EXISTS (SELECT 1 FROM files f WHERE f.blob_name = d.blob_name)`

	finishDeletionsSQL = `DELETE FROM blob_deletions WHERE id = ANY($1::bigint[])`

	// retryDeletionsSQL postpones failed entries, or parks them: due at
	// infinity, never leased again.
	retryDeletionsSQL = `UPDATE blob_deletions d
   SET attempts = d.attempts + 1,
       due_at = CASE WHEN v.park THEN 'infinity'::timestamptz ELSE now() + make_interval(secs => v.secs) END,
       parked_at = CASE WHEN v.park THEN now() END,
       locked_until = NULL,
       last_error = v.err
  FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::boolean[]) AS v (id, secs, err, park)
 WHERE d.id = v.id`
)

// The recording import outbox, leased like blob_deletions.
const (
	leaseImportsSQL = `UPDATE recording_imports i
   SET locked_until = now() + make_interval(secs => $2::float8)
  FROM (SELECT id FROM recording_imports
         WHERE due_at <= now() AND (locked_until IS NULL OR locked_until < now())
         ORDER BY due_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED) due
 WHERE i.id = due.id
RETURNING i.id, i.file_id, i.conversation_id, i.source_name, i.filename, i.content_type, i.size_bytes, i.existing, i.attempts`

	// takeImportSQL removes the import in the transaction that files it; no
	// row means another worker, whose lease this one outlived, filed it.
	takeImportSQL = `DELETE FROM recording_imports WHERE id = $1::bigint`

	// fileRecordingSQL stores a READY RECORDING file (2 and 2 in file.Kind
	// and file.Status), unless its conversation is gone.
	fileRecordingSQL = `INSERT INTO files (id, conversation_id, blob_name, filename, content_type, size_bytes, sha256, kind, status)
SELECT $1::uuid, c.id, $3::text, $4::text, $5::text, $6::bigint, '', 2, 2
  FROM conversations c WHERE c.id = $2::uuid
ON CONFLICT (id) DO NOTHING`

	// moveRecordingSQL points a recording filed by an earlier release at
	// its own blob, unless it was deleted meanwhile.
	moveRecordingSQL = `UPDATE files SET blob_name = $2::text, size_bytes = $3::bigint, updated_at = now() WHERE id = $1::uuid`

	queueBlobSQL = `INSERT INTO blob_deletions (blob_name) VALUES ($1::text)`

	// fileEventSQL reads what a file's event tells of file $1: its owner,
	// and the call and egress whose recording it is, if one.
	fileEventSQL = `SELECT c.user_id, f.id, f.conversation_id, f.filename, f.content_type, f.size_bytes, f.sha256, f.created_at,
       COALESCE(cr.room_id::text, ''), COALESCE(cr.egress_id, '')
  FROM files f JOIN conversations c ON c.id = f.conversation_id
  LEFT JOIN LATERAL (SELECT room_id, egress_id FROM call_recordings WHERE file_id = f.id ORDER BY source_name LIMIT 1) cr ON true
 WHERE f.id = $1::uuid`

	retryImportSQL = `UPDATE recording_imports
   SET attempts = attempts + 1,
       due_at = CASE WHEN $4::boolean THEN 'infinity'::timestamptz ELSE now() + make_interval(secs => $2::float8) END,
       parked_at = CASE WHEN $4::boolean THEN now() END,
       locked_until = NULL,
       last_error = $3::text
 WHERE id = $1::bigint`
)

// deletionLease is how long a worker holds outbox entries it took; it
// covers a batch of deletions with their timeouts.
const deletionLease = 10 * time.Minute

// maxErrorLen bounds the storage error kept with a failed deletion.
const maxErrorLen = 1000

// FileStore keeps files and the blob-deletion outbox. It implements
// file.Store.
type FileStore struct {
	db    *sql.DB // for $n statements: bun.DB's own methods would format them
	bun   *bun.DB // for inTx
	pages newestFirst
}

var _ file.Store = (*FileStore)(nil)

// NewFileStore returns a FileStore over db.
func NewFileStore(db *bun.DB) *FileStore {
	return &FileStore{db: db.DB, bun: db, pages: newestFirstPages(fileColumns, "files f", "f.", "conversation_id")}
}

// Reserve implements file.Store.
func (s *FileStore) Reserve(ctx context.Context, blobName string, due time.Time) (_ file.Reservation, err error) {
	defer markUnavailable(&err)
	var id int64
	if err := s.db.QueryRowContext(ctx, reserveBlobSQL, blobName, due).Scan(&id); err != nil {
		return 0, fmt.Errorf("reserve blob: %w", err)
	}
	return file.Reservation(id), nil
}

// CreateFile implements file.Store.
func (s *FileStore) CreateFile(ctx context.Context, f file.File, r file.Reservation) (_ file.File, err error) {
	defer markUnavailable(&err)
	err = inTx(ctx, s.bun, "create file", func(ctx context.Context, tx bun.Tx) error {
		if r != 0 {
			n, err := rowsAffected(tx.Tx.ExecContext(ctx, claimReservationSQL, int64(r)))
			if err != nil {
				return fmt.Errorf("create file: claim reservation: %w", err)
			}
			if n != 1 {
				return file.ErrReservationLost
			}
		}
		err := tx.Tx.QueryRowContext(ctx, insertFileSQL, f.ID, f.ConversationID, f.BlobName(), f.Filename, f.ContentType,
			f.SizeBytes, f.SHA256, int16(f.Kind), int16(f.Status)).Scan(&f.CreatedAt)
		if isForeignKeyViolation(err) {
			return conversation.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("create file: %w", err)
		}
		// An export is stored READY, its blob written: ready for the owner.
		if f.Kind == file.KindExport && f.Status == file.StatusReady {
			return enqueueFileReady(ctx, tx.Tx, webhook.ExportReady, f.ID)
		}
		return nil
	})
	if err != nil {
		return file.File{}, err
	}
	return f, nil
}

type fileRow struct {
	f            file.File
	kind, status int16
}

func (r *fileRow) dest() []any {
	return []any{&r.f.ID, &r.f.ConversationID, &r.f.Filename, &r.f.ContentType, &r.f.SizeBytes, &r.f.SHA256,
		&r.kind, &r.status, &r.f.CreatedAt}
}

func (r *fileRow) file() file.File {
	r.f.Kind, r.f.Status = file.Kind(r.kind), file.Status(r.status)
	return r.f
}

// GetFile implements file.Store.
func (s *FileStore) GetFile(ctx context.Context, id uuid.UUID, scope conversation.Scope) (_ file.File, err error) {
	defer markUnavailable(&err)
	var r fileRow
	err = s.db.QueryRowContext(ctx, getFileSQL, id, scopeArg(scope)).Scan(r.dest()...)
	if isNoRows(err) {
		return file.File{}, file.ErrNotFound
	}
	if err != nil {
		return file.File{}, fmt.Errorf("get file: %w", err)
	}
	return r.file(), nil
}

// ListFiles implements file.Store.
func (s *FileStore) ListFiles(ctx context.Context, conv uuid.UUID, after *file.Cursor, limit int) (_ []file.File, err error) {
	defer markUnavailable(&err)
	return listPage(ctx, s.db, "list files", s.pages, conv, after, limit,
		func(rows *sql.Rows) (file.File, error) {
			var r fileRow
			err := rows.Scan(r.dest()...)
			return r.file(), err
		})
}

// MarkReady implements file.Store.
func (s *FileStore) MarkReady(ctx context.Context, id uuid.UUID, size int64, sha256 string, res file.Reservation) (_ file.File, err error) {
	defer markUnavailable(&err)
	var r fileRow
	err = s.db.QueryRowContext(ctx, markReadySQL, id, size, sha256, file.StagingSuffix, int64(res)).Scan(r.dest()...)
	if isNoRows(err) {
		// Not pending: completed by a concurrent call, or gone.
		return s.GetFile(ctx, id, conversation.Scope{})
	}
	if err != nil {
		return file.File{}, fmt.Errorf("mark file ready: %w", err)
	}
	return r.file(), nil
}

// DeleteFile implements file.Store.
func (s *FileStore) DeleteFile(ctx context.Context, id uuid.UUID, scope conversation.Scope) (err error) {
	defer markUnavailable(&err)
	res, err := s.db.ExecContext(ctx, deleteFileSQL, id, scopeArg(scope))
	if err != nil {
		return fmt.Errorf("delete file: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete file: %w", err)
	}
	if n == 0 {
		return file.ErrNotFound
	}
	return nil
}

// ExpirePending implements file.Store.
func (s *FileStore) ExpirePending(ctx context.Context, olderThan time.Time, limit int) (_ int, err error) {
	defer markUnavailable(&err)
	res, err := s.db.ExecContext(ctx, expirePendingSQL, olderThan, limit)
	if err != nil {
		return 0, fmt.Errorf("expire pending files: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("expire pending files: %w", err)
	}
	return int(n), nil
}

// DeleteDueBlobs implements file.Store. Entries are leased in one short
// transaction, deleted from storage with no transaction open, then removed
// or postponed in another; a worker that dies between leaves them to be
// taken again when the lease runs out.
func (s *FileStore) DeleteDueBlobs(ctx context.Context, limit int, del func(context.Context, file.Deletion) (file.Retry, error)) (_ int, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, leaseDeletionsSQL, limit, deletionLease.Seconds())
	if err != nil {
		return 0, fmt.Errorf("lease blob deletions: %w", err)
	}
	var (
		due   []file.Deletion
		done  []int64
		taken int
	)
	for rows.Next() {
		taken++
		var (
			d    file.Deletion
			live bool
		)
		if err := rows.Scan(&d.ID, &d.BlobName, &d.Attempts, &live); err != nil {
			rows.Close()
			return 0, fmt.Errorf("lease blob deletions: scan: %w", err)
		}
		if live {
			done = append(done, d.ID)
			continue
		}
		due = append(due, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("lease blob deletions: %w", err)
	}

	var (
		retryIDs   []int64
		retrySecs  []float64
		retryErrs  []string
		retryParks []bool
	)
	for _, d := range due {
		retry, err := del(ctx, d)
		if err == nil {
			done = append(done, d.ID)
			continue
		}
		retryIDs, retrySecs = append(retryIDs, d.ID), append(retrySecs, retry.After.Seconds())
		retryErrs, retryParks = append(retryErrs, errorText(err)), append(retryParks, retry.Park)
	}

	// The outcome is recorded even when ctx ended during the deletions:
	// otherwise finished work would be redone after the lease.
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if len(done) > 0 {
		if _, err := s.db.ExecContext(octx, finishDeletionsSQL, done); err != nil {
			return 0, fmt.Errorf("finish blob deletions: %w", err)
		}
	}
	if len(retryIDs) > 0 {
		if _, err := s.db.ExecContext(octx, retryDeletionsSQL, retryIDs, retrySecs, retryErrs, retryParks); err != nil {
			return 0, fmt.Errorf("postpone blob deletions: %w", err)
		}
	}
	return taken, nil
}

// errorText is err's message as last_error keeps it: at most maxErrorLen
// bytes of valid UTF-8.
func errorText(err error) string {
	msg := err.Error()
	if len(msg) > maxErrorLen {
		msg = strings.ToValidUTF8(msg[:maxErrorLen], "")
	}
	return msg
}

// recordingImport is a leased recording_imports row.
type recordingImport struct {
	file.RecordingImport
	existing bool
}

// ImportDueRecordings implements file.Store. Imports are leased in one
// short transaction, copied in storage with no transaction open, then each
// filed or postponed in its own; a worker that dies between leaves them to
// be taken again when the lease runs out, and the copy is redone.
func (s *FileStore) ImportDueRecordings(ctx context.Context, limit int, imp func(context.Context, file.RecordingImport) (file.File, file.Retry, error)) (_ int, err error) {
	defer markUnavailable(&err)
	due, err := s.leaseImports(ctx, limit)
	if err != nil {
		return 0, err
	}
	for _, ri := range due {
		f, retry, err := imp(ctx, ri.RecordingImport)
		// The outcome is recorded even when ctx ended meanwhile: otherwise
		// finished work would be redone after the lease.
		octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err == nil {
			err = s.fileRecording(octx, ri, f)
		} else {
			_, err = s.db.ExecContext(octx, retryImportSQL, ri.ID, retry.After.Seconds(), errorText(err), retry.Park)
			if err != nil {
				err = fmt.Errorf("postpone recording import: %w", err)
			}
		}
		cancel()
		if err != nil {
			return len(due), err
		}
	}
	return len(due), nil
}

func (s *FileStore) leaseImports(ctx context.Context, limit int) ([]recordingImport, error) {
	rows, err := s.db.QueryContext(ctx, leaseImportsSQL, limit, deletionLease.Seconds())
	if err != nil {
		return nil, fmt.Errorf("lease recording imports: %w", err)
	}
	defer rows.Close()
	var due []recordingImport
	for rows.Next() {
		var ri recordingImport
		f := &ri.File
		if err := rows.Scan(&ri.ID, &f.ID, &f.ConversationID, &ri.Source, &f.Filename, &f.ContentType, &f.SizeBytes,
			&ri.existing, &ri.Attempts); err != nil {
			return nil, fmt.Errorf("lease recording imports: scan: %w", err)
		}
		f.Kind, f.Status = file.KindRecording, file.StatusReady
		due = append(due, ri)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lease recording imports: %w", err)
	}
	return due, nil
}

// fileRecording stores the file of an import whose blob was copied, and
// queues the blobs no row names any longer.
func (s *FileStore) fileRecording(ctx context.Context, ri recordingImport, f file.File) error {
	return inTx(ctx, s.bun, "file recording", func(ctx context.Context, tx bun.Tx) error {
		if n, err := rowsAffected(tx.Tx.ExecContext(ctx, takeImportSQL, ri.ID)); err != nil {
			return fmt.Errorf("file recording: take import: %w", err)
		} else if n == 0 {
			// Filed by another worker; this transaction changed nothing.
			return nil
		}
		var (
			n   int64
			err error
		)
		if ri.existing {
			n, err = rowsAffected(tx.Tx.ExecContext(ctx, moveRecordingSQL, f.ID, f.BlobName(), f.SizeBytes))
		} else {
			n, err = rowsAffected(tx.Tx.ExecContext(ctx, fileRecordingSQL, f.ID, f.ConversationID, f.BlobName(), f.Filename,
				f.ContentType, f.SizeBytes))
		}
		if err != nil {
			return fmt.Errorf("file recording: %w", err)
		}
		// Only a new row is a file turning READY; a moved one was already.
		if !ri.existing && n == 1 {
			if err := enqueueFileReady(ctx, tx.Tx, webhook.RecordingReady, f.ID); err != nil {
				return fmt.Errorf("file recording: %w", err)
			}
		}
		unnamed := []string{ri.Source}
		if n == 0 {
			// The conversation, or the earlier release's row, is gone: so is
			// the recording.
			unnamed = append(unnamed, f.BlobName())
		}
		for _, name := range unnamed {
			if _, err := tx.Tx.ExecContext(ctx, queueBlobSQL, name); err != nil {
				return fmt.Errorf("file recording: queue blob deletion: %w", err)
			}
		}
		return nil
	})
}

// enqueueFileReady writes event t (recording.ready or export.ready) for
// file id, READY in tx.
func enqueueFileReady(ctx context.Context, tx *sql.Tx, t string, id uuid.UUID) error {
	var (
		owner uuid.UUID
		d     = file.EventData{Status: "ready"}
	)
	if err := tx.QueryRowContext(ctx, fileEventSQL, id).Scan(&owner, &d.FileID, &d.ConversationID, &d.Filename,
		&d.ContentType, &d.SizeBytes, &d.SHA256, &d.CreatedAt, &d.CallID, &d.EgressID); err != nil {
		return fmt.Errorf("%s event: %w", t, err)
	}
	d.CreatedAt = d.CreatedAt.UTC()
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("%s event: %w", t, err)
	}
	ev, err := webhook.NewEvent(owner, t, data, time.Now())
	if err != nil {
		return fmt.Errorf("%s event: %w", t, err)
	}
	return enqueueWebhookEvent(ctx, tx, ev)
}

func rowsAffected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
