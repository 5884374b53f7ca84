package file

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
)

const (
	// exportPageSize is how many messages an export holds at once: with
	// messages of at most 64 KiB, at most 8 MiB, whatever the history's
	// length.
	exportPageSize = 128
	// exportItemPageSize is smaller: with items of at most 256 KiB, a
	// page holds at most 16 MiB.
	exportItemPageSize = 64
	// exportBufferSize batches small writes into the blob stream.
	exportBufferSize = 64 << 10
)

// errPutEnded stops an export's writer when the blob upload has returned.
var errPutEnded = errors.New("blob upload ended")

// Export writes one of p's conversations with every message, in seq order,
// to a new EXPORT file in exp's format and returns it with a download URL;
// an ItemExporter gets every chat item too. Messages and items stream from
// the store in keyset pages through a pipe into the blob, so memory does
// not grow with the conversation. The export is a snapshot of the messages
// up to the conversation's last_seq when it began, and of the items up to
// its last item seq when the items began.
func (s *Service) Export(ctx context.Context, p auth.Principal, convID uuid.UUID, exp Exporter) (File, string, error) {
	scope, err := userScope(p)
	if err != nil {
		return File{}, "", err
	}
	conv, err := s.convs.GetConversation(ctx, convID, scope)
	if err != nil {
		return File{}, "", err
	}
	f, err := s.newFile(conv.ID, exportFilename(conv, exp.Extension()), exp.ContentType(), KindExport)
	if err != nil {
		return File{}, "", err
	}
	f.Status = StatusReady
	f, err = s.storeBlobThenRow(ctx, f, func(ctx context.Context, f *File) error {
		size, digest, err := s.streamExport(ctx, f.BlobName(), conv, scope, exp)
		f.SizeBytes, f.SHA256 = size, digest
		return err
	})
	if err != nil {
		return File{}, "", err
	}
	u, err := s.downloadURL(ctx, f)
	if err != nil {
		return File{}, "", err
	}
	return f, u, nil
}

// streamExport pipes the export written by one goroutine into Blobs.Put,
// counting and hashing on the way.
func (s *Service) streamExport(ctx context.Context, name string, conv conversation.Conversation, scope conversation.Scope, exp Exporter) (int64, string, error) {
	pr, pw := io.Pipe()
	h := sha256.New()
	var n countWriter
	done := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(io.MultiWriter(pw, h, &n), exportBufferSize)
		err := s.writeExport(ctx, bw, conv, scope, exp)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err) // nil: the reader sees EOF
		done <- err
	}()
	perr := s.blobs.Put(ctx, name, pr, exp.ContentType())
	pr.CloseWithError(errPutEnded)
	werr := <-done
	switch {
	case werr != nil && !errors.Is(werr, errPutEnded):
		return 0, "", fmt.Errorf("write export: %w", werr)
	case perr != nil:
		return 0, "", perr
	case werr != nil:
		return 0, "", fmt.Errorf("write export: %w", werr)
	}
	return int64(n), hex.EncodeToString(h.Sum(nil)), nil
}

func (s *Service) writeExport(ctx context.Context, w io.Writer, conv conversation.Conversation, scope conversation.Scope, exp Exporter) error {
	if err := exp.Begin(w, conv); err != nil {
		return err
	}
	ie, items := exp.(ItemExporter)
	if !items || ie.Messages() {
		if err := s.writeMessages(ctx, w, conv, exp); err != nil {
			return err
		}
	}
	if items {
		if err := s.writeItems(ctx, w, conv.ID, scope, ie); err != nil {
			return err
		}
	}
	return exp.End(w)
}

func (s *Service) writeMessages(ctx context.Context, w io.Writer, conv conversation.Conversation, exp Exporter) error {
	r := conversation.MessageRange{
		ConversationID: conv.ID,
		Order:          conversation.OrderOldestFirst,
		Before:         conv.LastSeq + 1,
		Limit:          exportPageSize,
	}
	for r.After < conv.LastSeq {
		msgs, err := s.convs.ListMessages(ctx, r)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if err := exp.Message(w, m); err != nil {
				return err
			}
		}
		if len(msgs) < exportPageSize {
			break
		}
		r.After = msgs[len(msgs)-1].Seq
	}
	return nil
}

// writeItems pages through the items up to the last one stored when it
// begins.
func (s *Service) writeItems(ctx context.Context, w io.Writer, id uuid.UUID, scope conversation.Scope, exp ItemExporter) error {
	last, err := s.convs.ItemHead(ctx, id, scope)
	if err != nil {
		return err
	}
	r := conversation.ItemRange{
		ConversationID: id,
		Scope:          scope,
		Order:          conversation.OrderOldestFirst,
		Before:         last + 1,
		Limit:          exportItemPageSize,
	}
	for r.After < last {
		items, err := s.convs.ListItems(ctx, r)
		if err != nil {
			return err
		}
		for _, it := range items {
			if err := exp.Item(w, it); err != nil {
				return err
			}
		}
		if len(items) < exportItemPageSize {
			break
		}
		r.After = items[len(items)-1].Seq
	}
	return nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// exportFilename names an export after the conversation's title, or its id.
func exportFilename(c conversation.Conversation, ext string) string {
	base := strings.TrimSpace(c.Title)
	if base == "" {
		base = "conversation-" + c.ID.String()
	}
	return SanitizeFilename(truncateKeepingExt(base, MaxFilenameBytes-len(ext)) + ext)
}

// Markdown writes a readable transcript: a title, the conversation's
// details, then each message under its role and time.
type Markdown struct{}

var _ Exporter = Markdown{}

// ContentType implements Exporter.
func (Markdown) ContentType() string { return "text/markdown; charset=utf-8" }

// Extension implements Exporter.
func (Markdown) Extension() string { return ".md" }

// Begin implements Exporter.
func (Markdown) Begin(w io.Writer, c conversation.Conversation) error {
	title := strings.Join(strings.Fields(c.Title), " ")
	if title == "" {
		title = "Conversation"
	}
	_, err := fmt.Fprintf(w, "# %s\n\n- Conversation: `%s`\n- Created: %s\n- Messages: %d\n",
		title, c.ID, c.CreatedAt.UTC().Format(time.RFC3339), c.MessageCount)
	return err
}

// Message implements Exporter.
func (Markdown) Message(w io.Writer, m conversation.Message) error {
	_, err := fmt.Fprintf(w, "\n---\n\n**%s** · %s · #%d\n\n%s\n",
		roleName(m.Role), m.CreatedAt.UTC().Format(time.RFC3339), m.Seq, m.Content)
	return err
}

// End implements Exporter.
func (Markdown) End(io.Writer) error { return nil }

func roleName(r conversation.Role) string {
	switch r {
	case conversation.RoleUser:
		return "User"
	case conversation.RoleAssistant:
		return "Assistant"
	case conversation.RoleSystem:
		return "System"
	default:
		return "Unknown"
	}
}
