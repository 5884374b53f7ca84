package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/keyset"
)

// Limits and defaults of the rules the service enforces. The proto schema
// checks the same shape at the edge; the domain re-checks because it owns
// the rules.
const (
	// MaxUploadBytes bounds UploadFile, whose bytes pass through the API.
	MaxUploadBytes = 10 << 20
	// DefaultMaxDirectUploadBytes bounds CreateUpload when not configured.
	DefaultMaxDirectUploadBytes = 1 << 30
	// MaxURLTTL is the longest an upload or download URL lives. The
	// blob_deletions trigger and MarkReady rely on it: a file's staging
	// blob is deleted (again) 16 minutes after the file's creation, when no
	// upload URL for it can still write.
	MaxURLTTL = 15 * time.Minute
	// DefaultReserveGrace is how long an upload or export may take between
	// reserving its blob and committing its row, before the outbox deletes
	// the blob as an orphan.
	DefaultReserveGrace = 30 * time.Minute
	DefaultPageSize     = 50
	MaxPageSize         = 200
)

// Options are the optional settings of a Service.
type Options struct {
	// ContentTypes is the upload allow-list; the zero value means
	// DefaultContentTypes.
	ContentTypes ContentTypes
	// URLTTL is the lifetime of upload and download URLs: 0 or more than
	// MaxURLTTL means MaxURLTTL.
	URLTTL time.Duration
	// MaxDirectUploadBytes bounds CreateUpload; 0 means
	// DefaultMaxDirectUploadBytes.
	MaxDirectUploadBytes int64
	// ReserveGrace is 0 for DefaultReserveGrace.
	ReserveGrace time.Duration
	// Wake is called after a commit queued blob deletions, to start the
	// outbox worker early (Worker.Wake); nil leaves it to its poll.
	Wake func()
	Log  *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service is the file use cases. It is safe for concurrent use.
type Service struct {
	store        Store
	blobs        Blobs
	convs        Conversations
	types        ContentTypes
	urlTTL       time.Duration
	maxDirect    int64
	reserveGrace time.Duration
	wake         func()
	log          *slog.Logger
	now          func() time.Time
}

// NewService returns a Service keeping rows in store, bytes in blobs and
// checking access through convs.
func NewService(store Store, blobs Blobs, convs Conversations, opts Options) (*Service, error) {
	s := &Service{
		store: store, blobs: blobs, convs: convs,
		types: opts.ContentTypes, urlTTL: opts.URLTTL, maxDirect: opts.MaxDirectUploadBytes,
		reserveGrace: opts.ReserveGrace, wake: opts.Wake, log: opts.Log, now: opts.Now,
	}
	if s.types.exact == nil && s.types.prefix == nil {
		t, err := NewContentTypes(DefaultContentTypes)
		if err != nil {
			return nil, err
		}
		s.types = t
	}
	if s.urlTTL <= 0 || s.urlTTL > MaxURLTTL {
		s.urlTTL = MaxURLTTL
	}
	if s.maxDirect <= 0 {
		s.maxDirect = DefaultMaxDirectUploadBytes
	}
	if s.reserveGrace <= 0 {
		s.reserveGrace = DefaultReserveGrace
	}
	if s.wake == nil {
		s.wake = func() {}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// userScope refuses agents the user-scoped calls and returns p's scope.
func userScope(p auth.Principal) (conversation.Scope, error) {
	switch {
	case p.IsAgent():
		return conversation.Scope{}, auth.ErrPermissionDenied
	case !p.IsUser() || p.ID == uuid.Nil:
		return conversation.Scope{}, auth.ErrUnauthenticated
	}
	return conversation.Scope{UserID: p.ID}, nil
}

// Upload is a small file sent through the API.
type Upload struct {
	ConversationID uuid.UUID
	Filename       string
	// ContentType is the client's declaration, "" to go by the bytes.
	ContentType string
	Data        []byte
}

// UploadFile stores a file of at most MaxUploadBytes in a conversation p
// may reach (agents: any). The blob is written first, under a reservation
// that deletes it unless the row commits, so a crash between the two
// leaves neither a row without a blob nor a blob forever. An agent's audio
// or video is a recording; anything else an upload.
func (s *Service) UploadFile(ctx context.Context, p auth.Principal, u Upload) (File, error) {
	scope, err := conversation.ScopeOf(p)
	if err != nil {
		return File{}, err
	}
	if len(u.Data) > MaxUploadBytes {
		return File{}, invalid(fmt.Sprintf("data may have at most %d bytes; use CreateUpload for larger files", MaxUploadBytes))
	}
	ct, err := s.types.resolve(u.Data, u.ContentType, invalid)
	if err != nil {
		return File{}, err
	}
	if _, err := s.convs.GetConversation(ctx, u.ConversationID, scope); err != nil {
		return File{}, err
	}
	kind := KindUpload
	if p.IsAgent() && (strings.HasPrefix(ct, "audio/") || strings.HasPrefix(ct, "video/")) {
		kind = KindRecording
	}
	sum := sha256.Sum256(u.Data)
	f, err := s.newFile(u.ConversationID, u.Filename, ct, kind)
	if err != nil {
		return File{}, err
	}
	f.SizeBytes, f.SHA256, f.Status = int64(len(u.Data)), hex.EncodeToString(sum[:]), StatusReady
	return s.storeBlobThenRow(ctx, f, func(ctx context.Context, f *File) error {
		return s.blobs.Put(ctx, f.BlobName(), bytes.NewReader(u.Data), ct)
	})
}

func (s *Service) newFile(conv uuid.UUID, filename, ct string, kind Kind) (File, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return File{}, fmt.Errorf("new file id: %w", err)
	}
	return File{ID: id, ConversationID: conv, Filename: SanitizeFilename(filename), ContentType: ct, Kind: kind}, nil
}

// storeBlobThenRow reserves f's blob, writes it with put (which may fill in
// f's size and digest) and commits f's row, claiming the reservation. On
// failure the reservation stays and the outbox deletes whatever put left.
func (s *Service) storeBlobThenRow(ctx context.Context, f File, put func(context.Context, *File) error) (File, error) {
	r, err := s.store.Reserve(ctx, f.BlobName(), s.now().Add(s.reserveGrace))
	if err != nil {
		return File{}, err
	}
	if err := put(ctx, &f); err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	return s.store.CreateFile(ctx, f, r)
}

// DirectUpload is a reservation for a file the client uploads itself.
type DirectUpload struct {
	ConversationID uuid.UUID
	Filename       string
	ContentType    string
	SizeBytes      int64
}

// UploadTicket is CreateUpload's answer.
type UploadTicket struct {
	File    File
	Target  UploadTarget
	Expires time.Time
}

// CreateUpload reserves a PENDING file in one of p's conversations and
// returns a write-only URL for exactly its staging blob. Pending files that
// are never completed are deleted by the outbox worker (ExpirePending).
func (s *Service) CreateUpload(ctx context.Context, p auth.Principal, d DirectUpload) (UploadTicket, error) {
	scope, err := userScope(p)
	if err != nil {
		return UploadTicket{}, err
	}
	if d.SizeBytes <= 0 || d.SizeBytes > s.maxDirect {
		return UploadTicket{}, invalid(fmt.Sprintf("size_bytes must be between 1 and %d", s.maxDirect))
	}
	ct, err := s.types.checkDeclared(d.ContentType)
	if err != nil {
		return UploadTicket{}, err
	}
	if _, err := s.convs.GetConversation(ctx, d.ConversationID, scope); err != nil {
		return UploadTicket{}, err
	}
	f, err := s.newFile(d.ConversationID, d.Filename, ct, KindUpload)
	if err != nil {
		return UploadTicket{}, err
	}
	f.SizeBytes, f.Status = d.SizeBytes, StatusPending
	if f, err = s.store.CreateFile(ctx, f, 0); err != nil {
		return UploadTicket{}, err
	}
	expires := s.now().Add(s.urlTTL)
	target, err := s.blobs.UploadURL(ctx, f.StagingBlobName(), UploadSpec{ContentType: ct, Size: d.SizeBytes, Expires: expires})
	if err != nil {
		return UploadTicket{}, fmt.Errorf("sign upload url: %w", err)
	}
	return UploadTicket{File: f, Target: target, Expires: expires}, nil
}

// CompleteUpload checks a PENDING file's uploaded bytes against its declared
// size, content type and, if given, SHA-256 (lower-case hex), and turns it
// READY. The client wrote them to the staging blob, which its upload URL
// may rewrite until it expires; so the bytes are first copied to a blob no
// URL can write, checked there, and only then copied to the file's own
// blob, which is created once and never written again. On a mismatch the
// file stays PENDING for another PUT. Completing a READY file again
// returns it.
func (s *Service) CompleteUpload(ctx context.Context, p auth.Principal, id uuid.UUID, wantSHA256 string) (File, error) {
	scope, err := userScope(p)
	if err != nil {
		return File{}, err
	}
	f, err := s.store.GetFile(ctx, id, scope)
	if err != nil {
		return File{}, err
	}
	if f.Status == StatusReady {
		return f, checkWanted(f.SHA256, wantSHA256)
	}
	// A completion that copied the bytes but died before the row said so
	// left the final blob behind: it is checked, and it is the file.
	if _, err := s.blobs.Stat(ctx, f.BlobName()); err == nil {
		return s.adoptFinal(ctx, f, wantSHA256)
	} else if !errors.Is(err, ErrBlobNotFound) {
		return File{}, fmt.Errorf("stat blob: %w", err)
	}

	checkID, err := uuid.NewV7()
	if err != nil {
		return File{}, fmt.Errorf("new blob id: %w", err)
	}
	// The checked copy gets a fresh name of the conversation, reserved so
	// that the outbox removes it whatever happens to this call.
	checked := BlobName(f.ConversationID, checkID)
	if _, err := s.store.Reserve(ctx, checked, s.now().Add(s.reserveGrace)); err != nil {
		return File{}, err
	}
	defer s.deleteQuietly(ctx, checked)
	if err := s.blobs.Copy(ctx, f.StagingBlobName(), checked, CopyReplace); errors.Is(err, ErrBlobNotFound) {
		return File{}, mismatch("nothing has been uploaded yet")
	} else if err != nil {
		return File{}, fmt.Errorf("copy upload: %w", err)
	}
	size, digest, err := s.checkBlob(ctx, f, checked, wantSHA256)
	if err != nil {
		return File{}, err
	}
	// Reserved too: should the row be deleted before MarkReady, the outbox
	// still removes the final blob.
	r, err := s.store.Reserve(ctx, f.BlobName(), s.now().Add(s.reserveGrace))
	if err != nil {
		return File{}, err
	}
	if err := s.blobs.Copy(ctx, checked, f.BlobName(), CopyCreate); errors.Is(err, ErrBlobExists) {
		// A concurrent completion got there first, with checked bytes.
		return s.adoptFinal(ctx, f, wantSHA256)
	} else if err != nil {
		return File{}, fmt.Errorf("copy checked upload: %w", err)
	}
	f, err = s.store.MarkReady(ctx, f.ID, size, digest, r)
	if err != nil {
		return File{}, err
	}
	s.deleteQuietly(ctx, f.StagingBlobName())
	return f, nil
}

// adoptFinal makes pending f READY with the bytes already under its final
// name. They were checked before they were copied there, and no URL can
// change them, so only the caller's digest can disagree.
func (s *Service) adoptFinal(ctx context.Context, f File, wantSHA256 string) (File, error) {
	size, digest, err := s.checkBlob(ctx, f, f.BlobName(), "")
	if err != nil {
		return File{}, err
	}
	if f, err = s.store.MarkReady(ctx, f.ID, size, digest, 0); err != nil {
		return File{}, err
	}
	s.deleteQuietly(ctx, f.StagingBlobName())
	return f, checkWanted(f.SHA256, wantSHA256)
}

// checkWanted compares a READY file's digest with the one a caller of
// CompleteUpload expects ("" for any).
func checkWanted(have, want string) error {
	if want != "" && want != have {
		return mismatch("sha256 does not match the stored bytes")
	}
	return nil
}

// deleteQuietly deletes a blob the outbox would delete anyway, sooner.
func (s *Service) deleteQuietly(ctx context.Context, name string) {
	if err := s.blobs.Delete(context.WithoutCancel(ctx), name); err != nil {
		s.log.WarnContext(ctx, "delete blob; the outbox will", slog.String("blob", name), slog.String("error", err.Error()))
	}
}

// checkBlob streams blob name once, hashing it and sniffing its head, and
// checks it against f's declaration.
func (s *Service) checkBlob(ctx context.Context, f File, name, wantSHA256 string) (int64, string, error) {
	info, err := s.blobs.Stat(ctx, name)
	if errors.Is(err, ErrBlobNotFound) {
		return 0, "", mismatch("nothing has been uploaded yet")
	}
	if err != nil {
		return 0, "", fmt.Errorf("stat blob: %w", err)
	}
	if info.Size != f.SizeBytes {
		return 0, "", mismatch(fmt.Sprintf("uploaded %d bytes, declared %d", info.Size, f.SizeBytes))
	}
	rc, err := s.blobs.Open(ctx, name)
	if err != nil {
		return 0, "", fmt.Errorf("open blob: %w", err)
	}
	defer rc.Close()
	h := sha256.New()
	head := &headWriter{max: sniffLen}
	n, err := io.Copy(io.MultiWriter(h, head), rc)
	if err != nil {
		return 0, "", fmt.Errorf("read blob: %w", err)
	}
	if n != f.SizeBytes {
		return 0, "", mismatch(fmt.Sprintf("uploaded %d bytes, declared %d", n, f.SizeBytes))
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if wantSHA256 != "" && wantSHA256 != digest {
		return 0, "", mismatch("sha256 does not match the uploaded bytes")
	}
	if _, err := s.types.resolve(head.b, f.ContentType, mismatch); err != nil {
		return 0, "", err
	}
	return n, digest, nil
}

// headWriter keeps the first max bytes written to it.
type headWriter struct {
	b   []byte
	max int
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.max - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// GetFile returns one of p's files and, when it is READY, a read-only URL
// valid for the configured TTL whose responses carry the safe filename.
func (s *Service) GetFile(ctx context.Context, p auth.Principal, id uuid.UUID) (File, string, error) {
	scope, err := userScope(p)
	if err != nil {
		return File{}, "", err
	}
	f, err := s.store.GetFile(ctx, id, scope)
	if err != nil {
		return File{}, "", err
	}
	if f.Status != StatusReady {
		return f, "", nil
	}
	u, err := s.downloadURL(ctx, f)
	if err != nil {
		return File{}, "", err
	}
	return f, u, nil
}

func (s *Service) downloadURL(ctx context.Context, f File) (string, error) {
	u, err := s.blobs.DownloadURL(ctx, f.BlobName(), DownloadSpec{
		ContentType:        f.ContentType,
		ContentDisposition: ContentDisposition(f.Filename),
		Expires:            s.now().Add(s.urlTTL),
	})
	if err != nil {
		return "", fmt.Errorf("sign download url: %w", err)
	}
	return u, nil
}

// ListFiles lists the files of one of p's conversations, newest first.
func (s *Service) ListFiles(ctx context.Context, p auth.Principal, conv uuid.UUID, pageSize int, pageToken string) (Page, error) {
	scope, err := userScope(p)
	if err != nil {
		return Page{}, err
	}
	switch {
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize < 0 || pageSize > MaxPageSize:
		return Page{}, invalid(fmt.Sprintf("page_size must be between 0 and %d", MaxPageSize))
	}
	after, err := keyset.Decode(keyset.Files, pageToken)
	if err != nil {
		return Page{}, err
	}
	if _, err := s.convs.GetConversation(ctx, conv, scope); err != nil {
		return Page{}, err
	}
	fs, err := s.store.ListFiles(ctx, conv, after, pageSize+1)
	if err != nil {
		return Page{}, err
	}
	var page Page
	page.Files, page.NextPageToken = keyset.Page(keyset.Files, fs, pageSize, func(f File) Cursor {
		return Cursor{CreatedAt: f.CreatedAt, ID: f.ID}
	})
	return page, nil
}

// DeleteFile deletes one of p's files. Its blob goes after the commit,
// through the outbox.
func (s *Service) DeleteFile(ctx context.Context, p auth.Principal, id uuid.UUID) error {
	scope, err := userScope(p)
	if err != nil {
		return err
	}
	if err := s.store.DeleteFile(ctx, id, scope); err != nil {
		return err
	}
	s.wake()
	return nil
}
