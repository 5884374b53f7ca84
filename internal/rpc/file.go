package rpc

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/file"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// FileServer serves parley.v1.FileService, and ConversationService's
// ExportConversation, which the conversation handler routes here.
type FileServer struct {
	files *file.Service
	log   *slog.Logger
}

var _ parleyv1connect.FileServiceHandler = (*FileServer)(nil)

// NewFileServer returns a FileServer over files.
func NewFileServer(files *file.Service, log *slog.Logger) *FileServer {
	return &FileServer{files: files, log: log}
}

// UploadFile stores a small file sent in the request.
func (s *FileServer) UploadFile(ctx context.Context, req *connect.Request[parleyv1.UploadFileRequest]) (*connect.Response[parleyv1.UploadFileResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	conv, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	f, err := s.files.UploadFile(ctx, p, file.Upload{
		ConversationID: conv,
		Filename:       req.Msg.GetFilename(),
		ContentType:    req.Msg.GetContentType(),
		Data:           req.Msg.GetData(),
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.UploadFileResponse{File: fileToProto(f)}), nil
}

// CreateUpload reserves a file and returns a URL to PUT its bytes to.
func (s *FileServer) CreateUpload(ctx context.Context, req *connect.Request[parleyv1.CreateUploadRequest]) (*connect.Response[parleyv1.CreateUploadResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	conv, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	t, err := s.files.CreateUpload(ctx, p, file.DirectUpload{
		ConversationID: conv,
		Filename:       req.Msg.GetFilename(),
		ContentType:    req.Msg.GetContentType(),
		SizeBytes:      req.Msg.GetSizeBytes(),
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.CreateUploadResponse{
		File:          fileToProto(t.File),
		UploadUrl:     t.Target.URL,
		UploadHeaders: t.Target.Headers,
		ExpiresAt:     timestamp(t.Expires),
	}), nil
}

// CompleteUpload checks the uploaded bytes and marks the file READY.
func (s *FileServer) CompleteUpload(ctx context.Context, req *connect.Request[parleyv1.CompleteUploadRequest]) (*connect.Response[parleyv1.CompleteUploadResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("file_id", req.Msg.GetFileId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	f, err := s.files.CompleteUpload(ctx, p, id, req.Msg.GetSha256())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.CompleteUploadResponse{File: fileToProto(f)}), nil
}

// GetFile returns a file and a time-limited download URL.
func (s *FileServer) GetFile(ctx context.Context, req *connect.Request[parleyv1.GetFileRequest]) (*connect.Response[parleyv1.GetFileResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("file_id", req.Msg.GetFileId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	f, u, err := s.files.GetFile(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.GetFileResponse{File: fileToProto(f), DownloadUrl: u}), nil
}

// ListFiles lists a conversation's files, newest first.
func (s *FileServer) ListFiles(ctx context.Context, req *connect.Request[parleyv1.ListFilesRequest]) (*connect.Response[parleyv1.ListFilesResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	conv, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.files.ListFiles(ctx, p, conv, int(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListFilesResponse{Files: filesToProto(page.Files), NextPageToken: page.NextPageToken}), nil
}

// DeleteFile deletes a file; its blob follows after the commit.
func (s *FileServer) DeleteFile(ctx context.Context, req *connect.Request[parleyv1.DeleteFileRequest]) (*connect.Response[parleyv1.DeleteFileResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("file_id", req.Msg.GetFileId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	if err := s.files.DeleteFile(ctx, p, id); err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.DeleteFileResponse{}), nil
}

// ExportConversation writes a conversation to an EXPORT file and returns it
// with its download URL. It belongs to ConversationService; the
// conversation handler delegates to it.
func (s *FileServer) ExportConversation(ctx context.Context, req *connect.Request[parleyv1.ExportConversationRequest]) (*connect.Response[parleyv1.ExportConversationResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	conv, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	exp, err := exporterFor(req.Msg.GetFormat())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	f, u, err := s.files.Export(ctx, p, conv, exp)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ExportConversationResponse{File: fileToProto(f), DownloadUrl: u}), nil
}
