package postgres_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

type fileFixture struct {
	db    *bun.DB
	files *postgres.FileStore
	convs *postgres.ConversationStore
	user  uuid.UUID
	conv  conversation.Conversation
}

func newFileFixture(t *testing.T) *fileFixture {
	t.Helper()
	db := testenv.DB(t)
	f := &fileFixture{db: db, files: postgres.NewFileStore(db), convs: postgres.NewConversationStore(db)}
	f.user = f.newUser(t)
	f.conv = f.newConversation(t, f.user)
	return f
}

func (f *fileFixture) newUser(t *testing.T) uuid.UUID {
	t.Helper()
	id := uuid.New()
	if _, err := f.db.ExecContext(t.Context(),
		"INSERT INTO users (id, email, display_name, password_hash) VALUES (?, ?, 'x', 'x')", id, id.String()+"@example.com"); err != nil {
		t.Fatal(err)
	}
	return id
}

func (f *fileFixture) newConversation(t *testing.T, user uuid.UUID) conversation.Conversation {
	t.Helper()
	c, err := f.convs.CreateConversation(t.Context(), conversation.Conversation{ID: uuid.New(), UserID: user})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fileFixture) newFile(conv uuid.UUID, status file.Status) file.File {
	return file.File{ID: uuid.New(), ConversationID: conv, Filename: "a.txt", ContentType: "text/plain",
		SizeBytes: 3, Kind: file.KindUpload, Status: status}
}

// outbox returns the blob names queued for deletion.
func (f *fileFixture) outbox(t *testing.T) []string {
	t.Helper()
	var names []string
	if err := f.db.NewSelect().Table("blob_deletions").Column("blob_name").Order("blob_name").Scan(t.Context(), &names); err != nil {
		t.Fatal(err)
	}
	return names
}

// drain runs DeleteDueBlobs with del until nothing is due.
func (f *fileFixture) drain(t *testing.T, del func(context.Context, file.Deletion) (file.Retry, error)) {
	t.Helper()
	for {
		n, err := f.files.DeleteDueBlobs(t.Context(), 10, del)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

func TestFileStoreCRUDAndScope(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()
	stranger := fx.newUser(t)
	created, err := fx.files.CreateFile(ctx, fx.newFile(fx.conv.ID, file.StatusPending), 0)
	if err != nil {
		t.Fatal(err)
	}
	if created.CreatedAt.IsZero() {
		t.Error("CreateFile left CreatedAt zero")
	}
	if _, err := fx.files.GetFile(ctx, created.ID, conversation.Scope{UserID: stranger}); !errors.Is(err, file.ErrNotFound) {
		t.Errorf("stranger GetFile = %v", err)
	}
	got, err := fx.files.GetFile(ctx, created.ID, conversation.Scope{UserID: fx.user})
	if err != nil || got.Status != file.StatusPending || got.Filename != "a.txt" || got.Kind != file.KindUpload {
		t.Fatalf("GetFile = %+v, %v", got, err)
	}
	r, err := fx.files.Reserve(ctx, created.BlobName(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ready, err := fx.files.MarkReady(ctx, created.ID, 3, "abc", r)
	if err != nil || ready.Status != file.StatusReady || ready.SHA256 != "abc" {
		t.Fatalf("MarkReady = %+v, %v", ready, err)
	}
	// The reservation is claimed; the staging blob is queued for when its
	// upload URL can no longer write it.
	staging := created.StagingBlobName()
	if got := fx.outbox(t); !slices.Equal(got, []string{staging}) {
		t.Errorf("outbox after MarkReady = %v, want %s", got, staging)
	}
	var due time.Time
	if err := fx.db.QueryRowContext(ctx, "SELECT due_at FROM blob_deletions").Scan(&due); err != nil {
		t.Fatal(err)
	}
	if want := created.CreatedAt.Add(file.MaxURLTTL); due.Before(want) {
		t.Errorf("staging blob due %v, before the upload URL's expiry %v", due, want)
	}
	// A READY file is returned unchanged.
	if again, err := fx.files.MarkReady(ctx, created.ID, 99, "zzz", 0); err != nil || again.SHA256 != "abc" || again.SizeBytes != 3 {
		t.Errorf("MarkReady again = %+v, %v", again, err)
	}
	if _, err := fx.files.CreateFile(ctx, fx.newFile(uuid.New(), file.StatusReady), 0); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("CreateFile in a missing conversation = %v", err)
	}
	if err := fx.files.DeleteFile(ctx, created.ID, conversation.Scope{UserID: stranger}); !errors.Is(err, file.ErrNotFound) {
		t.Errorf("stranger DeleteFile = %v", err)
	}
	if got := fx.outbox(t); len(got) != 1 {
		t.Errorf("outbox after a refused delete = %v", got)
	}
	if err := fx.files.DeleteFile(ctx, created.ID, conversation.Scope{UserID: fx.user}); err != nil {
		t.Fatal(err)
	}
	if got := fx.outbox(t); !slices.Equal(got, []string{created.BlobName(), staging}) {
		t.Errorf("outbox after DeleteFile = %v", got)
	}
}

func TestEveryWayAFileRowGoesQueuesItsBlob(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()
	other := fx.newConversation(t, fx.user)
	var want []string
	for _, conv := range []uuid.UUID{fx.conv.ID, fx.conv.ID, other.ID} {
		f, err := fx.files.CreateFile(ctx, fx.newFile(conv, file.StatusReady), 0)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, f.BlobName())
	}
	// A conversation's cascade, then a user's.
	if err := fx.convs.DeleteConversation(ctx, fx.conv.ID, conversation.Scope{UserID: fx.user}); err != nil {
		t.Fatal(err)
	}
	if got := fx.outbox(t); len(got) != 2 {
		t.Errorf("outbox after DeleteConversation = %v", got)
	}
	if _, err := fx.db.ExecContext(ctx, "DELETE FROM users WHERE id = ?", fx.user); err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	if got := fx.outbox(t); !slices.Equal(got, want) {
		t.Errorf("outbox after deleting the user = %v, want %v", got, want)
	}
}

func TestReservations(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()

	// Claimed in time: the row is stored and nothing is left to delete.
	f := fx.newFile(fx.conv.ID, file.StatusReady)
	r, err := fx.files.Reserve(ctx, f.BlobName(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.files.CreateFile(ctx, f, r); err != nil {
		t.Fatal(err)
	}
	if got := fx.outbox(t); len(got) != 0 {
		t.Errorf("outbox after a claimed reservation = %v", got)
	}

	// Fallen due: the row is refused, and the blob is the outbox's.
	late := fx.newFile(fx.conv.ID, file.StatusReady)
	r, err = fx.files.Reserve(ctx, late.BlobName(), time.Now().Add(-time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.files.CreateFile(ctx, late, r); !errors.Is(err, file.ErrReservationLost) {
		t.Fatalf("CreateFile with a due reservation = %v", err)
	}
	if _, err := fx.files.GetFile(ctx, late.ID, conversation.Scope{}); !errors.Is(err, file.ErrNotFound) {
		t.Errorf("a row was stored despite the lost reservation: %v", err)
	}

	// A worker that tried once (and failed) owns it even before it is due
	// again: the blob may be gone.
	tried := fx.newFile(fx.conv.ID, file.StatusReady)
	r, err = fx.files.Reserve(ctx, tried.BlobName(), time.Now().Add(-time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	fx.drain(t, func(_ context.Context, d file.Deletion) (file.Retry, error) {
		seen = append(seen, d.BlobName)
		if d.BlobName == tried.BlobName() {
			return file.Retry{After: time.Hour}, errors.New("storage timed out")
		}
		return file.Retry{}, nil
	})
	if !slices.Contains(seen, late.BlobName()) || !slices.Contains(seen, tried.BlobName()) {
		t.Errorf("the worker saw %v", seen)
	}
	if _, err := fx.files.CreateFile(ctx, tried, r); !errors.Is(err, file.ErrReservationLost) {
		t.Errorf("CreateFile after a worker's attempt = %v", err)
	}
	if got := fx.outbox(t); !slices.Equal(got, []string{tried.BlobName()}) {
		t.Errorf("outbox = %v, want only the postponed entry", got)
	}
}

func TestDeleteDueBlobsRetriesAndHandsEachEntryToOneWorker(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()
	const n = 40
	for range n {
		if _, err := fx.files.CreateFile(ctx, fx.newFile(fx.conv.ID, file.StatusReady), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := fx.convs.DeleteConversation(ctx, fx.conv.ID, conversation.Scope{}); err != nil {
		t.Fatal(err)
	}

	// Four workers at once, each failing every first attempt.
	var (
		mu       sync.Mutex
		attempts = map[string]int{}
		wg       sync.WaitGroup
	)
	del := func(_ context.Context, d file.Deletion) (file.Retry, error) {
		mu.Lock()
		defer mu.Unlock()
		attempts[d.BlobName]++
		if d.Attempts != attempts[d.BlobName]-1 {
			t.Errorf("%s: Attempts = %d on call %d", d.BlobName, d.Attempts, attempts[d.BlobName])
		}
		if attempts[d.BlobName] == 1 {
			return file.Retry{After: 50 * time.Millisecond}, errors.New("injected")
		}
		return file.Retry{}, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && len(fx.outbox(t)) > 0 {
				if _, err := fx.files.DeleteDueBlobs(ctx, 3, del); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if got := fx.outbox(t); len(got) != 0 {
		t.Fatalf("%d entries left", len(got))
	}
	if len(attempts) != n {
		t.Errorf("%d blobs deleted, want %d", len(attempts), n)
	}
	for name, a := range attempts {
		if a != 2 {
			t.Errorf("%s: %d attempts, want exactly 2 (one failure, one retry, no double delivery)", name, a)
		}
	}
}

func TestOutboxNeverDeletesABlobARowNames(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()
	live, err := fx.files.CreateFile(ctx, fx.newFile(fx.conv.ID, file.StatusReady), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.db.ExecContext(ctx, "INSERT INTO blob_deletions (blob_name) VALUES (?)", live.BlobName()); err != nil {
		t.Fatal(err)
	}
	fx.drain(t, func(_ context.Context, d file.Deletion) (file.Retry, error) {
		t.Errorf("asked to delete %s, which a file row names", d.BlobName)
		return file.Retry{}, nil
	})
	if got := fx.outbox(t); len(got) != 0 {
		t.Errorf("the stray entry stayed: %v", got)
	}
}

func TestExpirePending(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()
	pending, err := fx.files.CreateFile(ctx, fx.newFile(fx.conv.ID, file.StatusPending), 0)
	if err != nil {
		t.Fatal(err)
	}
	ready, err := fx.files.CreateFile(ctx, fx.newFile(fx.conv.ID, file.StatusReady), 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := fx.files.ExpirePending(ctx, time.Now().Add(-time.Hour), 10); err != nil || n != 0 {
		t.Fatalf("ExpirePending of fresh files = %d, %v", n, err)
	}
	if n, err := fx.files.ExpirePending(ctx, time.Now().Add(time.Second), 10); err != nil || n != 1 {
		t.Fatalf("ExpirePending = %d, %v", n, err)
	}
	if _, err := fx.files.GetFile(ctx, pending.ID, conversation.Scope{}); !errors.Is(err, file.ErrNotFound) {
		t.Errorf("pending file still there: %v", err)
	}
	if _, err := fx.files.GetFile(ctx, ready.ID, conversation.Scope{}); err != nil {
		t.Errorf("ready file gone: %v", err)
	}
	// Deleted at once, and again once its upload URL has certainly expired;
	// its staging blob too.
	if got := fx.outbox(t); !slices.Equal(got, []string{pending.BlobName(), pending.BlobName(), pending.StagingBlobName(), pending.StagingBlobName()}) {
		t.Errorf("outbox = %v", got)
	}
	var later time.Time
	if err := fx.db.QueryRowContext(ctx, "SELECT max(due_at) FROM blob_deletions").Scan(&later); err != nil {
		t.Fatal(err)
	}
	if want := pending.CreatedAt.Add(file.MaxURLTTL); later.Before(want) {
		t.Errorf("second deletion due %v, before the upload URL's expiry %v", later, want)
	}
}

func TestDeleteDueBlobsParks(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	ctx := t.Context()
	for _, name := range []string{"refused", "transient"} {
		if _, err := fx.db.ExecContext(ctx, "INSERT INTO blob_deletions (blob_name) VALUES (?)", name); err != nil {
			t.Fatal(err)
		}
	}
	calls := map[string]int{}
	del := func(_ context.Context, d file.Deletion) (file.Retry, error) {
		calls[d.BlobName]++
		if d.BlobName == "refused" {
			return file.Retry{Park: true}, errors.New("refused name")
		}
		return file.Retry{After: time.Millisecond}, errors.New("storage down")
	}
	for range 3 {
		if _, err := fx.files.DeleteDueBlobs(ctx, 10, del); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if calls["refused"] != 1 || calls["transient"] != 3 {
		t.Errorf("calls = %v, want the parked entry tried once and the other every pass", calls)
	}
	var (
		parked  bool
		lastErr string
	)
	if err := fx.db.QueryRowContext(ctx, "SELECT parked_at IS NOT NULL, last_error FROM blob_deletions WHERE blob_name = 'refused'").Scan(&parked, &lastErr); err != nil {
		t.Fatal(err)
	}
	if !parked || lastErr != "refused name" {
		t.Errorf("parked %v, last_error %q", parked, lastErr)
	}
}
