package rpc

import (
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/parley-dev/parley/internal/agentsjson"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

func fileToProto(f file.File) *parleyv1.File {
	return &parleyv1.File{
		Id:             f.ID.String(),
		ConversationId: f.ConversationID.String(),
		Filename:       f.Filename,
		ContentType:    f.ContentType,
		SizeBytes:      f.SizeBytes,
		Sha256:         f.SHA256,
		Kind:           fileKindToProto(f.Kind),
		Status:         fileStatusToProto(f.Status),
		CreatedAt:      timestamp(f.CreatedAt),
	}
}

func filesToProto(fs []file.File) []*parleyv1.File {
	out := make([]*parleyv1.File, len(fs))
	for i, f := range fs {
		out[i] = fileToProto(f)
	}
	return out
}

func fileKindToProto(k file.Kind) parleyv1.FileKind {
	switch k {
	case file.KindUpload:
		return parleyv1.FileKind_FILE_KIND_UPLOAD
	case file.KindRecording:
		return parleyv1.FileKind_FILE_KIND_RECORDING
	case file.KindExport:
		return parleyv1.FileKind_FILE_KIND_EXPORT
	default:
		return parleyv1.FileKind_FILE_KIND_UNSPECIFIED
	}
}

func fileStatusToProto(s file.Status) parleyv1.FileStatus {
	switch s {
	case file.StatusPending:
		return parleyv1.FileStatus_FILE_STATUS_PENDING
	case file.StatusReady:
		return parleyv1.FileStatus_FILE_STATUS_READY
	default:
		return parleyv1.FileStatus_FILE_STATUS_UNSPECIFIED
	}
}

// exporterFor picks the export format; unspecified means JSON.
func exporterFor(f parleyv1.ExportFormat) (file.Exporter, error) {
	switch f {
	case parleyv1.ExportFormat_EXPORT_FORMAT_UNSPECIFIED, parleyv1.ExportFormat_EXPORT_FORMAT_JSON:
		return &jsonExport{}, nil
	case parleyv1.ExportFormat_EXPORT_FORMAT_MARKDOWN:
		return markdownExport{}, nil
	default:
		return nil, rule.Broken("unknown export format")
	}
}

// jsonExport writes {"conversation": Conversation, "messages": [Message...],
// "chat_context": {"items": [...]}}: the conversation and its messages in
// proto JSON, then every chat item as the JSON ChatContext.from_dict() of
// livekit-agents loads. The envelope is written by hand and each element
// marshalled on its own into a reused buffer, so the export streams instead
// of building one giant message. A value serves one export.
type jsonExport struct {
	buf      []byte
	messages int
	items    int
	// inItems is set once the messages are closed and the items opened.
	inItems bool
}

var _ file.ItemExporter = (*jsonExport)(nil)

func (*jsonExport) ContentType() string { return "application/json" }
func (*jsonExport) Extension() string   { return ".json" }
func (*jsonExport) Messages() bool      { return true }

func (e *jsonExport) Begin(w io.Writer, c conversation.Conversation) error {
	if _, err := io.WriteString(w, `{"conversation":`); err != nil {
		return err
	}
	if err := e.write(w, conversationToProto(c)); err != nil {
		return err
	}
	_, err := io.WriteString(w, `,"messages":[`)
	return err
}

func (e *jsonExport) Message(w io.Writer, m conversation.Message) error {
	if e.messages > 0 {
		if _, err := io.WriteString(w, ","); err != nil {
			return err
		}
	}
	e.messages++
	return e.write(w, messageToProto(m))
}

func (e *jsonExport) Item(w io.Writer, it conversation.Item) error {
	if err := e.openItems(w); err != nil {
		return err
	}
	ci, err := chatItemFromPayload(it)
	if err != nil {
		return err
	}
	b, err := agentsjson.EncodeItem(ci)
	if err != nil {
		return fmt.Errorf("export item %d: %w", it.Seq, err)
	}
	if e.items > 0 {
		if _, err := io.WriteString(w, ","); err != nil {
			return err
		}
	}
	e.items++
	_, err = w.Write(b)
	return err
}

// openItems closes the messages and opens the chat context, once.
func (e *jsonExport) openItems(w io.Writer) error {
	if e.inItems {
		return nil
	}
	e.inItems = true
	_, err := io.WriteString(w, `],"chat_context":{"items":[`)
	return err
}

func (e *jsonExport) End(w io.Writer) error {
	if err := e.openItems(w); err != nil {
		return err
	}
	_, err := io.WriteString(w, "]}}\n")
	return err
}

func (e *jsonExport) write(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{}.MarshalAppend(e.buf[:0], m)
	if err != nil {
		return err
	}
	e.buf = b
	_, err = w.Write(b)
	return err
}
