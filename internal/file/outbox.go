package file

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
)

// WorkerOptions tune a Worker. Zero fields take the defaults.
type WorkerOptions struct {
	// Poll is the pause between passes when nothing woke the worker
	// (default 10s): other replicas' deletions and falling-due retries are
	// found this way.
	Poll time.Duration
	// Batch is how many outbox entries one transaction takes (default 50).
	Batch int
	// MinBackoff and MaxBackoff bound the retry delay after a failed
	// deletion, which doubles per attempt (defaults 2s and 15m).
	MinBackoff, MaxBackoff time.Duration
	// PendingTTL is how long a PENDING file may wait for CompleteUpload
	// before it is deleted with its blob (default 24h).
	PendingTTL time.Duration
	// DeleteTimeout bounds one blob deletion (default 30s).
	DeleteTimeout time.Duration
	// ImportTimeout bounds one recording's copy (default 5m). It must stay
	// well under the store's lease of an entry, so that no other replica
	// takes the import while this one still copies.
	ImportTimeout time.Duration
	// MaxAttempts is how many failed attempts park an entry (default 200,
	// about two days at MaxBackoff's default): a blob storage keeps
	// refusing that long needs an operator, not another retry.
	MaxAttempts int
	// SourceRefused is called for each recording import refused because
	// its source is in Parley's own file namespace (ErrSourceRefused), to
	// count it; nil for none.
	SourceRefused func()
	Log           *slog.Logger
}

// Worker drains the outboxes of blobs: recordings to import and blobs to
// delete. Every replica runs one, and FOR UPDATE SKIP LOCKED in the store
// hands each entry to one of them. A failed entry is retried with
// exponential backoff, so a blob outlives its row only while storage is
// failing. An entry that cannot succeed (a name the store refuses, a
// recording that is not there) or has failed MaxAttempts times is parked:
// kept, never taken again, and logged as an error.
type Worker struct {
	store Store
	blobs Blobs
	opts  WorkerOptions
	wake  chan struct{}
}

// NewWorker returns a Worker deleting blobs from blobs as store's outbox
// lists them.
func NewWorker(store Store, blobs Blobs, opts WorkerOptions) *Worker {
	if opts.Poll <= 0 {
		opts.Poll = 10 * time.Second
	}
	if opts.Batch <= 0 {
		opts.Batch = 50
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 2 * time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(15*time.Minute, opts.MinBackoff)
	}
	if opts.PendingTTL <= 0 {
		opts.PendingTTL = 24 * time.Hour
	}
	if opts.DeleteTimeout <= 0 {
		opts.DeleteTimeout = 30 * time.Second
	}
	if opts.ImportTimeout <= 0 {
		opts.ImportTimeout = 5 * time.Minute
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 200
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.SourceRefused == nil {
		opts.SourceRefused = func() {}
	}
	return &Worker{store: store, blobs: blobs, opts: opts, wake: make(chan struct{}, 1)}
}

// Wake makes a running worker start a pass now; it never blocks.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run drains the outbox until ctx ends, then returns nil. Errors of a pass
// are logged and the pass retried at the next poll.
func (w *Worker) Run(ctx context.Context) error {
	for {
		if _, err := w.RunOnce(ctx); err != nil && ctx.Err() == nil {
			w.opts.Log.WarnContext(ctx, "blob outbox pass failed", slog.String("error", err.Error()))
		}
		// Jitter keeps replicas that started together from polling in step.
		t := time.NewTimer(w.opts.Poll/2 + rand.N(w.opts.Poll))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-w.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// RunOnce deletes expired PENDING files, imports due recordings, then
// takes due deletions in batches until none is left, and returns how many
// entries it took.
func (w *Worker) RunOnce(ctx context.Context) (int, error) {
	for {
		n, err := w.store.ExpirePending(ctx, time.Now().Add(-w.opts.PendingTTL), w.opts.Batch)
		if err != nil {
			return 0, fmt.Errorf("expire pending files: %w", err)
		}
		if n < w.opts.Batch {
			break
		}
	}
	total := 0
	// One import at a time: each is leased only for its own copy, which
	// ImportTimeout keeps within the lease.
	for {
		n, err := w.store.ImportDueRecordings(ctx, 1, w.importRecording)
		total += n
		if err != nil {
			return total, fmt.Errorf("import recordings: %w", err)
		}
		if n == 0 {
			break
		}
	}
	for {
		n, err := w.store.DeleteDueBlobs(ctx, w.opts.Batch, w.deleteBlob)
		total += n
		if err != nil {
			return total, fmt.Errorf("delete due blobs: %w", err)
		}
		if n < w.opts.Batch {
			return total, nil
		}
	}
}

func (w *Worker) deleteBlob(ctx context.Context, d Deletion) (Retry, error) {
	dctx, cancel := context.WithTimeout(ctx, w.opts.DeleteTimeout)
	defer cancel()
	err := w.blobs.Delete(dctx, d.BlobName)
	if err == nil {
		return Retry{}, nil
	}
	return w.retry(ctx, "delete blob", d.BlobName, d.Attempts, err, errors.Is(err, ErrInvalidBlobName)), err
}

// importRecording copies a recording to its file's blob name, replacing
// whatever an earlier attempt that died left there, and returns the file
// with the size storage reports.
func (w *Worker) importRecording(ctx context.Context, ri RecordingImport) (File, Retry, error) {
	f := ri.File
	// Nothing Parley queues names its own files, but an import queued by
	// a forged event (before events were confirmed with LiveKit, or on an
	// older replica) may: it is parked with both blobs left alone.
	if InNamespace(ri.Source) {
		w.opts.SourceRefused()
		err := fmt.Errorf("import recording to %s from %s: %w", f.BlobName(), ri.Source, ErrSourceRefused)
		return File{}, w.retry(ctx, "import recording", ri.Source, ri.Attempts, err, true), err
	}
	ictx, cancel := context.WithTimeout(ctx, w.opts.ImportTimeout)
	defer cancel()
	err := w.blobs.Copy(ictx, ri.Source, f.BlobName(), CopyReplace)
	if err == nil {
		var info BlobInfo
		if info, err = w.blobs.Stat(ictx, f.BlobName()); err == nil {
			f.SizeBytes = info.Size
			return f, Retry{}, nil
		}
	}
	err = fmt.Errorf("import recording to %s: %w", f.BlobName(), err)
	permanent := errors.Is(err, ErrInvalidBlobName) || errors.Is(err, ErrBlobNotFound)
	return File{}, w.retry(ctx, "import recording", ri.Source, ri.Attempts, err, permanent), err
}

// retry decides what becomes of an outbox entry that failed its attempt
// after attempts earlier failures, and logs it.
func (w *Worker) retry(ctx context.Context, op, blob string, attempts int, err error, permanent bool) Retry {
	if permanent || attempts+1 >= w.opts.MaxAttempts {
		w.opts.Log.ErrorContext(ctx, op+" failed; parked, will not retry",
			slog.String("blob", blob), slog.Int("attempt", attempts+1), slog.String("error", err.Error()))
		return Retry{Park: true}
	}
	r := Retry{After: w.backoff(attempts)}
	w.opts.Log.WarnContext(ctx, op+" failed; will retry",
		slog.String("blob", blob), slog.Int("attempt", attempts+1),
		slog.Duration("retry_in", r.After), slog.String("error", err.Error()))
	return r
}

// backoff is the delay before attempt attempts+2: MinBackoff doubled per
// failure, capped at MaxBackoff, with ±25% jitter.
func (w *Worker) backoff(attempts int) time.Duration {
	d := w.opts.MinBackoff << min(attempts, 30)
	if d <= 0 || d > w.opts.MaxBackoff {
		d = w.opts.MaxBackoff
	}
	return d*3/4 + rand.N(d/2+1)
}

// EventData is the data of the recording.ready and export.ready outbound
// webhook events, written in the transaction that makes the file READY.
// Its JSON is a contract with customers' receivers (see the README):
// fields may be added, never renamed.
type EventData struct {
	FileID         uuid.UUID `json:"file_id"`
	ConversationID uuid.UUID `json:"conversation_id"`
	// CallID is the call (room) whose egress wrote a recording, and
	// EgressID that egress; absent for exports and when unknown.
	CallID      string `json:"call_id,omitempty"`
	EgressID    string `json:"egress_id,omitempty"`
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	SizeBytes   int64  `json:"size_bytes"`
	// SHA256 is the content's lower-case hex digest; absent for a
	// recording, whose bytes Parley copies without reading.
	SHA256    string    `json:"sha256,omitempty"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
}
