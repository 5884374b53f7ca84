// Package file holds the files attached to conversations: uploads through
// the API or straight to blob storage, agents' and LiveKit egress's
// recordings, and conversation exports. Blobs are named only by server-made ids; a user's filename is
// display metadata. Blobs are removed after the database commit through a
// durable outbox, so neither a crash nor a failing store leaves a row
// pointing at nothing or a blob nobody owns. The package knows nothing of
// SQL, protos or storage SDKs; the adapters implement the interfaces here.
package file

import (
	"context"
	"io"
	"path"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/keyset"
)

// Kind says where a file came from.
type Kind int16

// The kinds a file may have. The values are stored in the database.
const (
	KindUpload    Kind = 1
	KindRecording Kind = 2
	KindExport    Kind = 3
)

// Status says whether a file's bytes are in place.
type Status int16

// The statuses a file may have. The values are stored in the database.
const (
	// StatusPending is a reserved file whose bytes have not been checked yet
	// (CreateUpload before CompleteUpload).
	StatusPending Status = 1
	// StatusReady is a file whose stored bytes match its size and SHA-256.
	StatusReady Status = 2
)

// File is one stored file of a conversation.
type File struct {
	ID             uuid.UUID
	ConversationID uuid.UUID
	// Filename is the sanitised display name; it never names storage.
	Filename    string
	ContentType string
	SizeBytes   int64
	// SHA256 is the lower-case hex digest of the bytes, "" while pending.
	SHA256    string
	Kind      Kind
	Status    Status
	CreatedAt time.Time
}

// BlobName is the storage name of f's bytes: server-made ids only.
func (f File) BlobName() string { return BlobName(f.ConversationID, f.ID) }

// BlobName returns the storage name of file id of conversation conv.
func BlobName(conv, id uuid.UUID) string { return conv.String() + "/" + id.String() }

// InNamespace reports whether name lies in Parley's own file namespace:
// under a conversation id, where BlobName and StagingBlobName put every
// file's bytes. Any spelling that storage could resolve there counts.
func InNamespace(name string) bool {
	name = strings.TrimLeft(path.Clean("/"+strings.ReplaceAll(name, `\`, "/")), "/")
	first, _, _ := strings.Cut(name, "/")
	_, err := uuid.Parse(first)
	return err == nil
}

// StagingSuffix ends the name of a direct upload's staging blob. The
// files_queue_blob_deletion trigger appends it too.
const StagingSuffix = ".upload"

// StagingBlobName is where the client of a direct upload writes f's bytes.
// Its upload URL can write nothing else: CompleteUpload copies the bytes it
// checked to BlobName, which no URL can write.
func (f File) StagingBlobName() string { return BlobName(f.ConversationID, f.ID) + StagingSuffix }

// Page is one page of ListFiles.
type Page struct {
	Files []File
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// Cursor is where a ListFiles page continues: strictly older than
// (CreatedAt, ID) in (created_at DESC, id DESC) order.
type Cursor = keyset.Position

// Reservation is an outbox entry that deletes a blob unless the file row
// naming it is committed first. It makes "blob first, then row" crash-safe:
// a blob whose row never came is removed once the reservation falls due.
type Reservation int64

// Store is the persistence of files and of the blob-deletion outbox. Calls
// that take a conversation.Scope answer ErrNotFound for files of
// conversations outside it.
type Store interface {
	// Reserve records that blobName is to be deleted at due unless
	// CreateFile claims the reservation first.
	Reserve(ctx context.Context, blobName string, due time.Time) (Reservation, error)
	// CreateFile stores f (every field but CreatedAt set by the caller) and,
	// in the same transaction, claims r (0 for none). A reservation the
	// outbox has already taken fails with ErrReservationLost and stores
	// nothing. A conversation that is gone is conversation.ErrNotFound.
	CreateFile(ctx context.Context, f File, r Reservation) (File, error)
	GetFile(ctx context.Context, id uuid.UUID, s conversation.Scope) (File, error)
	// ListFiles returns up to limit files of conversation conv, newest
	// first, strictly after cursor (nil for the first page). The caller has
	// checked access to conv.
	ListFiles(ctx context.Context, conv uuid.UUID, after *Cursor, limit int) ([]File, error)
	// MarkReady turns pending file id READY with the checked size and
	// digest, claims r (0 for none; one already taken is no error: the
	// row now names the blob) and queues the file's staging blob for
	// deletion once its upload URL has expired, in one transaction. A file
	// that is gone is ErrNotFound; one that is READY already is returned
	// unchanged.
	MarkReady(ctx context.Context, id uuid.UUID, size int64, sha256 string, r Reservation) (File, error)
	// DeleteFile deletes the file row; its blob is queued for deletion in
	// the same transaction (so is every file row deleted any other way).
	DeleteFile(ctx context.Context, id uuid.UUID, s conversation.Scope) error
	// ExpirePending deletes up to limit PENDING files created before
	// olderThan, queueing their blobs, and returns how many it deleted.
	ExpirePending(ctx context.Context, olderThan time.Time, limit int) (int, error)
	// DeleteDueBlobs takes up to limit due outbox entries that no other
	// replica holds, calls del for each, then removes the entries del
	// succeeded on and postpones or parks the others as the Retry del
	// returned says. It returns how many entries it took.
	DeleteDueBlobs(ctx context.Context, limit int, del func(ctx context.Context, d Deletion) (Retry, error)) (int, error)
	// ImportDueRecordings takes up to limit due recording imports that no
	// other replica holds and calls imp for each. When imp succeeds, one
	// transaction stores the file it returns (READY, under its BlobName),
	// removes the import and queues its source blob for deletion; a
	// conversation that is gone by then gets no file, and both blobs are
	// queued instead. A failed import is postponed or parked as the Retry
	// says. It returns how many imports it took.
	ImportDueRecordings(ctx context.Context, limit int, imp func(ctx context.Context, ri RecordingImport) (File, Retry, error)) (int, error)
}

// RecordingImport is a recording LiveKit egress wrote under a name of its
// own choosing, queued to become a file under the file's BlobName.
type RecordingImport struct {
	ID int64
	// File is the file to be, READY and of kind RECORDING; its size is what
	// egress reported.
	File File
	// Source is the name egress wrote the blob under.
	Source string
	// Attempts counts the failed attempts so far.
	Attempts int
}

// Retry is what becomes of an outbox entry whose attempt failed.
type Retry struct {
	// After is the delay before the next attempt.
	After time.Duration
	// Park, when set, stops all further attempts: the entry stays, with its
	// error, for an operator to see. It is for failures no retry can mend.
	Park bool
}

// Deletion is a due outbox entry: a blob to delete.
type Deletion struct {
	ID       int64
	BlobName string
	// Attempts counts the failed attempts so far.
	Attempts int
}

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Size int64
}

// UploadSpec is what an upload URL is signed for.
type UploadSpec struct {
	ContentType string
	Size        int64
	Expires     time.Time
}

// UploadTarget is where and how a client uploads a blob itself.
type UploadTarget struct {
	URL string
	// Headers must accompany the PUT.
	Headers map[string]string
}

// DownloadSpec is what a download URL is signed for: the response headers
// storage answers with, and the expiry.
type DownloadSpec struct {
	ContentType        string
	ContentDisposition string
	Expires            time.Time
}

// CopyMode says what Blobs.Copy does when its destination exists.
type CopyMode int

const (
	// CopyReplace replaces the destination.
	CopyReplace CopyMode = iota
	// CopyCreate leaves the destination alone and fails with ErrBlobExists:
	// the copy creates a blob at most once.
	CopyCreate
)

// Blobs is blob storage. Names are those BlobName and StagingBlobName
// make; implementations refuse any other name (ErrInvalidBlobName), so
// nothing is written outside their container.
type Blobs interface {
	// Put stores r under name, replacing nothing the caller cares about
	// (names are fresh ids).
	Put(ctx context.Context, name string, r io.Reader, contentType string) error
	// Stat describes the blob, ErrBlobNotFound if there is none.
	Stat(ctx context.Context, name string) (BlobInfo, error)
	// Open streams the blob, ErrBlobNotFound if there is none.
	Open(ctx context.Context, name string) (io.ReadCloser, error)
	// Copy copies blob src to dst inside the store, without the bytes
	// passing through Parley, and returns once dst is whole. A missing src
	// is ErrBlobNotFound.
	Copy(ctx context.Context, src, dst string, mode CopyMode) error
	// Delete removes the blob; a missing blob is no error.
	Delete(ctx context.Context, name string) error
	// UploadURL returns a write-only URL for exactly the blob name.
	UploadURL(ctx context.Context, name string, spec UploadSpec) (UploadTarget, error)
	// DownloadURL returns a read-only URL for exactly the blob name.
	DownloadURL(ctx context.Context, name string, spec DownloadSpec) (string, error)
}

// Conversations is what files need of conversations: access checks and the
// messages and items an export walks. The conversation store implements it.
type Conversations interface {
	GetConversation(ctx context.Context, id uuid.UUID, s conversation.Scope) (conversation.Conversation, error)
	ListMessages(ctx context.Context, r conversation.MessageRange) ([]conversation.Message, error)
	// ItemHead returns the conversation's last item seq.
	ItemHead(ctx context.Context, id uuid.UUID, s conversation.Scope) (int64, error)
	ListItems(ctx context.Context, r conversation.ItemRange) ([]conversation.Item, error)
}

// Exporter writes a conversation in one file format, message by message, so
// an export streams.
type Exporter interface {
	// ContentType is the export's media type; Extension its filename suffix
	// (".json").
	ContentType() string
	Extension() string
	Begin(w io.Writer, c conversation.Conversation) error
	Message(w io.Writer, m conversation.Message) error
	End(w io.Writer) error
}

// ItemExporter is an Exporter that writes the conversation's chat items of
// every kind too: Item is called for each, in seq order, after the
// messages and before End.
type ItemExporter interface {
	Exporter
	Item(w io.Writer, it conversation.Item) error
	// Messages reports whether Message is called at all: a transcript of
	// the items has the messages among them already.
	Messages() bool
}
