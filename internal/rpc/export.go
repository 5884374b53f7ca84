package rpc

import (
	"context"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// conversationWithExport is the conversation handler with
// ExportConversation served by the files feature, which owns blob storage.
type conversationWithExport struct {
	*ConversationServer
	files *FileServer
}

// WithExports returns conv serving ExportConversation through files.
func WithExports(conv *ConversationServer, files *FileServer) parleyv1connect.ConversationServiceHandler {
	return conversationWithExport{ConversationServer: conv, files: files}
}

func (c conversationWithExport) ExportConversation(ctx context.Context, req *connect.Request[parleyv1.ExportConversationRequest]) (*connect.Response[parleyv1.ExportConversationResponse], error) {
	return c.files.ExportConversation(ctx, req)
}
