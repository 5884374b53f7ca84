package rpc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/parley-dev/parley/internal/file"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// fileEnv is the whole API on one blob store, with FileService clients
// and a ConversationService client (whose ExportConversation is routed to
// the FileServer, as in production).
type fileEnv struct {
	*testAPI
	files map[string]parleyv1connect.FileServiceClient
	convs parleyv1connect.ConversationServiceClient
}

var blobKinds = []string{"azure", "dir"}

func newFileEnv(t *testing.T, kind string, o fileEnvOptions) *fileEnv {
	t.Helper()
	a := newTestAPI(t, apiOptions{blobs: kind, files: o})
	files := clients(a, parleyv1connect.NewFileServiceClient)
	delete(files, "grpcweb")
	return &fileEnv{testAPI: a, files: files, convs: parleyv1connect.NewConversationServiceClient(a.hc, a.url)}
}

func (e *fileEnv) conversation(t *testing.T, owner caller) string {
	t.Helper()
	resp, err := e.convs.CreateConversation(t.Context(), as(owner, &parleyv1.CreateConversationRequest{Title: "files"}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetConversation().GetId()
}

// httpDo sends one plain HTTP request, as a client of a signed URL would.
func httpDo(t *testing.T, method, url string, headers map[string]string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestFileUploadListGetDownload(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{})
			for proto, c := range env.files {
				t.Run(proto, func(t *testing.T) {
					ctx := t.Context()
					owner := env.user(t)
					conv := env.conversation(t, owner)
					data := []byte("# notes\nplain text, nothing more\n")
					up, err := c.UploadFile(ctx, as(owner, &parleyv1.UploadFileRequest{
						ConversationId: conv, Filename: "../../etc/passwd", Data: data,
					}))
					if err != nil {
						t.Fatal(err)
					}
					f := up.Msg.GetFile()
					if f.GetFilename() != "passwd" || f.GetConversationId() != conv || f.GetSizeBytes() != int64(len(data)) ||
						f.GetSha256() != hexSHA256(data) || f.GetContentType() != "text/plain; charset=utf-8" ||
						f.GetKind() != parleyv1.FileKind_FILE_KIND_UPLOAD || f.GetStatus() != parleyv1.FileStatus_FILE_STATUS_READY || f.GetCreatedAt() == nil {
						t.Errorf("uploaded %v", f)
					}

					list, err := c.ListFiles(ctx, as(owner, &parleyv1.ListFilesRequest{ConversationId: conv}))
					if err != nil {
						t.Fatal(err)
					}
					if got := list.Msg.GetFiles(); len(got) != 1 || got[0].GetId() != f.GetId() || list.Msg.GetNextPageToken() != "" {
						t.Errorf("ListFiles = %v", list.Msg)
					}

					got, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: f.GetId()}))
					if err != nil {
						t.Fatal(err)
					}
					if got.Msg.GetFile().GetId() != f.GetId() || got.Msg.GetDownloadUrl() == "" {
						t.Fatalf("GetFile = %v", got.Msg)
					}
					resp, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil)
					if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
						t.Fatalf("download = %d %q", resp.StatusCode, body)
					}
					if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename=passwd` {
						t.Errorf("Content-Disposition = %q", cd)
					}
					if u, err := url.Parse(got.Msg.GetDownloadUrl()); err != nil || !strings.HasSuffix(u.Path, conv+"/"+f.GetId()) {
						t.Errorf("download URL %s does not name the blob {conversation}/{file}: %v", got.Msg.GetDownloadUrl(), err)
					}
				})
			}
			if env.dirRoot != "" {
				assertOnlyBlobNames(t, env.dirRoot)
			}
		})
	}
}

// assertOnlyBlobNames checks that the directory store's root holds nothing
// but its key and {uuid}/{uuid} blobs (or their staging blobs), and nothing
// beside the root.
func assertOnlyBlobNames(t *testing.T, root string) {
	t.Helper()
	if entries, err := os.ReadDir(filepath.Dir(root)); err != nil || len(entries) != 1 {
		t.Errorf("beside the blob root: %v %v", entries, err)
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if rel == ".signing-key" {
			return nil
		}
		for _, part := range parts {
			if _, err := uuid.Parse(strings.TrimSuffix(part, file.StagingSuffix)); err != nil || len(parts) > 2 {
				t.Errorf("unexpected path in the blob root: %s", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUploadFileLimitsAndContentTypes(t *testing.T) {
	t.Parallel()
	env := newFileEnv(t, "dir", fileEnvOptions{})
	owner := env.user(t)
	conv := env.conversation(t, owner)
	png := append([]byte("\x89PNG\r\n\x1a\n"), make([]byte, 64)...)
	tests := []struct {
		name        string
		data        []byte
		contentType string
		want        connect.Code
		wantType    string
	}{
		{name: "exactly 10 MiB", data: bytes.Repeat([]byte("a"), 10<<20), wantType: "text/plain; charset=utf-8"},
		{name: "10 MiB and one byte", data: bytes.Repeat([]byte("a"), 10<<20+1), want: connect.CodeInvalidArgument},
		{name: "sniffed png", data: png, wantType: "image/png"},
		{name: "declared matches", data: png, contentType: "image/png", wantType: "image/png"},
		{name: "declared json refines text", data: []byte(`{"a":1}`), contentType: "application/json", wantType: "application/json"},
		{name: "declared disagrees with bytes", data: png, contentType: "application/pdf", want: connect.CodeInvalidArgument},
		{name: "html is not allowed", data: []byte("<html><script>alert(1)</script></html>"), want: connect.CodeInvalidArgument},
		{name: "unknown binary is not allowed", data: []byte{0, 1, 2, 3, 0xff}, want: connect.CodeInvalidArgument},
		{name: "declared audio refines unknown binary", data: []byte("fLaC\x00\x00\x00\x22"), contentType: "audio/flac", wantType: "audio/flac"},
	}
	c := env.files["connect"]
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.UploadFile(t.Context(), as(owner, &parleyv1.UploadFileRequest{
				ConversationId: conv, Filename: "f", ContentType: tt.contentType, Data: tt.data,
			}))
			if codeOf(err) != tt.want {
				t.Fatalf("UploadFile = %v, want code %v", err, tt.want)
			}
			if err == nil && resp.Msg.GetFile().GetContentType() != tt.wantType {
				t.Errorf("content type = %q, want %q", resp.Msg.GetFile().GetContentType(), tt.wantType)
			}
		})
	}
}

// createUpload reserves a text/plain direct upload of size bytes.
func createUpload(t *testing.T, c parleyv1connect.FileServiceClient, owner caller, conv, filename string, size int) *connect.Response[parleyv1.CreateUploadResponse] {
	t.Helper()
	created, err := c.CreateUpload(t.Context(), as(owner, &parleyv1.CreateUploadRequest{
		ConversationId: conv, Filename: filename, ContentType: "text/plain", SizeBytes: int64(size),
	}))
	if err != nil {
		t.Fatal(err)
	}
	return created
}

func TestDirectUpload(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{})
			ctx := t.Context()
			owner := env.user(t)
			conv := env.conversation(t, owner)
			c := env.files["grpc"]
			data := bytes.Repeat([]byte("direct upload bytes\n"), 1000)

			created := createUpload(t, c, owner, conv, "big\x1b notes.txt", len(data))
			f := created.Msg.GetFile()
			if f.GetStatus() != parleyv1.FileStatus_FILE_STATUS_PENDING || f.GetFilename() != "big notes.txt" || f.GetSha256() != "" {
				t.Errorf("created %v", f)
			}
			if exp := created.Msg.GetExpiresAt().AsTime(); exp.After(time.Now().Add(15*time.Minute)) || exp.Before(time.Now()) {
				t.Errorf("expires_at %v", exp)
			}
			// Completing before any upload is refused.
			if _, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: f.GetId()})); codeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("CompleteUpload before the PUT = %v", err)
			}
			put := func(b []byte) {
				t.Helper()
				resp, body := httpDo(t, http.MethodPut, created.Msg.GetUploadUrl(), created.Msg.GetUploadHeaders(), b)
				if resp.StatusCode != http.StatusCreated {
					t.Fatalf("PUT = %d %s", resp.StatusCode, body)
				}
			}
			// Fewer bytes than declared: refused, still pending, and the
			// client may upload again.
			put(data[:100])
			if _, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: f.GetId()})); codeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("CompleteUpload with a wrong size = %v", err)
			}
			// Right size, wrong declared digest.
			put(data)
			if _, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: f.GetId(), Sha256: strings.Repeat("0", 64)})); codeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("CompleteUpload with a wrong sha256 = %v", err)
			}
			got, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: f.GetId()}))
			if err != nil || got.Msg.GetFile().GetStatus() != parleyv1.FileStatus_FILE_STATUS_PENDING || got.Msg.GetDownloadUrl() != "" {
				t.Fatalf("GetFile of a refused upload = %v, %v", got, err)
			}

			done, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: f.GetId(), Sha256: hexSHA256(data)}))
			if err != nil {
				t.Fatal(err)
			}
			if df := done.Msg.GetFile(); df.GetStatus() != parleyv1.FileStatus_FILE_STATUS_READY || df.GetSha256() != hexSHA256(data) || df.GetSizeBytes() != int64(len(data)) {
				t.Errorf("completed %v", df)
			}
			// Completed, the upload URL can no longer change the bytes
			// (TestCompletedUploadCannotChange tries harder).
			httpDo(t, http.MethodPut, created.Msg.GetUploadUrl(), created.Msg.GetUploadHeaders(), bytes.Repeat([]byte("x"), len(data)))
			// Completing again answers the same file.
			if again, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: f.GetId()})); err != nil || again.Msg.GetFile().GetSha256() != hexSHA256(data) {
				t.Errorf("second CompleteUpload = %v, %v", again, err)
			}
			got, err = c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: f.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			resp, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("download = %d (%d bytes)", resp.StatusCode, len(body))
			}

			// A declared content type off the allow-list is refused up front.
			if _, err := c.CreateUpload(ctx, as(owner, &parleyv1.CreateUploadRequest{
				ConversationId: conv, Filename: "x.html", ContentType: "text/html", SizeBytes: 10,
			})); codeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("CreateUpload of text/html = %v", err)
			}
		})
	}
}

func TestFileAccess(t *testing.T) {
	t.Parallel()
	env := newFileEnv(t, "dir", fileEnvOptions{})
	ctx := t.Context()
	owner, stranger, agent := env.user(t), env.user(t), env.agent(t)
	conv := env.conversation(t, owner)
	c := env.files["connect"]
	up, err := c.UploadFile(ctx, as(owner, &parleyv1.UploadFileRequest{ConversationId: conv, Filename: "a.txt", Data: []byte("mine")}))
	if err != nil {
		t.Fatal(err)
	}
	id := up.Msg.GetFile().GetId()

	// An agent may upload to any conversation; audio becomes a recording.
	wav := append([]byte("RIFF\x24\x00\x00\x00WAVEfmt "), make([]byte, 32)...)
	rec, err := c.UploadFile(ctx, as(agent, &parleyv1.UploadFileRequest{ConversationId: conv, Filename: "call.wav", Data: wav}))
	if err != nil {
		t.Fatal(err)
	}
	if f := rec.Msg.GetFile(); f.GetKind() != parleyv1.FileKind_FILE_KIND_RECORDING || f.GetContentType() != "audio/wave" {
		t.Errorf("agent upload = %v", f)
	}

	tests := []struct {
		name string
		call func() error
		want connect.Code
	}{
		{"stranger GetFile", func() error {
			_, err := c.GetFile(ctx, as(stranger, &parleyv1.GetFileRequest{FileId: id}))
			return err
		}, connect.CodeNotFound},
		{"stranger ListFiles", func() error {
			_, err := c.ListFiles(ctx, as(stranger, &parleyv1.ListFilesRequest{ConversationId: conv}))
			return err
		}, connect.CodeNotFound},
		{"stranger UploadFile", func() error {
			_, err := c.UploadFile(ctx, as(stranger, &parleyv1.UploadFileRequest{ConversationId: conv, Filename: "x", Data: []byte("x")}))
			return err
		}, connect.CodeNotFound},
		{"stranger CreateUpload", func() error {
			_, err := c.CreateUpload(ctx, as(stranger, &parleyv1.CreateUploadRequest{ConversationId: conv, Filename: "x", ContentType: "text/plain", SizeBytes: 1}))
			return err
		}, connect.CodeNotFound},
		{"stranger CompleteUpload", func() error {
			_, err := c.CompleteUpload(ctx, as(stranger, &parleyv1.CompleteUploadRequest{FileId: id}))
			return err
		}, connect.CodeNotFound},
		{"stranger DeleteFile", func() error {
			_, err := c.DeleteFile(ctx, as(stranger, &parleyv1.DeleteFileRequest{FileId: id}))
			return err
		}, connect.CodeNotFound},
		{"stranger ExportConversation", func() error {
			_, err := env.convs.ExportConversation(ctx, as(stranger, &parleyv1.ExportConversationRequest{ConversationId: conv}))
			return err
		}, connect.CodeNotFound},
		{"upload to a missing conversation", func() error {
			_, err := c.UploadFile(ctx, as(owner, &parleyv1.UploadFileRequest{ConversationId: uuid.NewString(), Filename: "x", Data: []byte("x")}))
			return err
		}, connect.CodeNotFound},
		{"agent GetFile", func() error {
			_, err := c.GetFile(ctx, as(agent, &parleyv1.GetFileRequest{FileId: id}))
			return err
		}, connect.CodePermissionDenied},
		{"agent ListFiles", func() error {
			_, err := c.ListFiles(ctx, as(agent, &parleyv1.ListFilesRequest{ConversationId: conv}))
			return err
		}, connect.CodePermissionDenied},
		{"agent DeleteFile", func() error {
			_, err := c.DeleteFile(ctx, as(agent, &parleyv1.DeleteFileRequest{FileId: id}))
			return err
		}, connect.CodePermissionDenied},
		{"agent ExportConversation", func() error {
			_, err := env.convs.ExportConversation(ctx, as(agent, &parleyv1.ExportConversationRequest{ConversationId: conv}))
			return err
		}, connect.CodePermissionDenied},
		{"malformed id", func() error {
			_, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: "../x"}))
			return err
		}, connect.CodeInvalidArgument},
		{"bad page token", func() error {
			_, err := c.ListFiles(ctx, as(owner, &parleyv1.ListFilesRequest{ConversationId: conv, PageToken: "nope"}))
			return err
		}, connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); codeOf(err) != tt.want {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	// The owner still has the file.
	if _, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: id})); err != nil {
		t.Fatal(err)
	}
}

func TestListFilesPages(t *testing.T) {
	t.Parallel()
	env := newFileEnv(t, "dir", fileEnvOptions{})
	owner := env.user(t)
	conv := env.conversation(t, owner)
	c := env.files["connect"]
	var want []string
	for i := range 5 {
		up, err := c.UploadFile(t.Context(), as(owner, &parleyv1.UploadFileRequest{ConversationId: conv, Filename: "f", Data: []byte{'a' + byte(i)}}))
		if err != nil {
			t.Fatal(err)
		}
		want = append([]string{up.Msg.GetFile().GetId()}, want...) // newest first
	}
	var got []string
	token := ""
	for range 10 {
		page, err := c.ListFiles(t.Context(), as(owner, &parleyv1.ListFilesRequest{ConversationId: conv, PageSize: 2, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range page.Msg.GetFiles() {
			got = append(got, f.GetId())
		}
		if token = page.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("pages = %v, want %v", got, want)
	}
}

func TestDownloadURLExpires(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{urlTTL: 2 * time.Second})
			owner := env.user(t)
			conv := env.conversation(t, owner)
			c := env.files["connect"]
			up, err := c.UploadFile(t.Context(), as(owner, &parleyv1.UploadFileRequest{ConversationId: conv, Filename: "a.txt", Data: []byte("soon gone")}))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.GetFile(t.Context(), as(owner, &parleyv1.GetFileRequest{FileId: up.Msg.GetFile().GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			if resp, _ := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("download before expiry = %d", resp.StatusCode)
			}
			time.Sleep(3500 * time.Millisecond)
			if resp, _ := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("download after expiry = %d, want 403", resp.StatusCode)
			}
		})
	}
}

// flakyBlobs fails the first delete of each blob, as a storage outage would.
type flakyBlobs struct {
	file.Blobs
	mu       sync.Mutex
	failed   map[string]int
	attempts map[string]int
}

func (f *flakyBlobs) Delete(ctx context.Context, name string) error {
	f.mu.Lock()
	f.attempts[name]++
	first := f.failed[name] == 0
	if first {
		f.failed[name]++
	}
	f.mu.Unlock()
	if first {
		return errors.New("injected storage outage")
	}
	return f.Blobs.Delete(ctx, name)
}

func (f *flakyBlobs) counts(name string) (failed, attempts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed[name], f.attempts[name]
}

func TestDeletingRemovesBlobsThroughTheOutbox(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			flaky := &flakyBlobs{failed: map[string]int{}, attempts: map[string]int{}}
			env := newFileEnv(t, kind, fileEnvOptions{wrap: func(b file.Blobs) file.Blobs { flaky.Blobs = b; return flaky }})
			ctx := t.Context()
			owner := env.user(t)
			conv := env.conversation(t, owner)
			other := env.conversation(t, owner)
			c := env.files["connect"]
			upload := func(conv string) file.File {
				t.Helper()
				up, err := c.UploadFile(ctx, as(owner, &parleyv1.UploadFileRequest{ConversationId: conv, Filename: "a.txt", Data: []byte("bytes of " + conv)}))
				if err != nil {
					t.Fatal(err)
				}
				f := up.Msg.GetFile()
				return file.File{ID: uuid.MustParse(f.GetId()), ConversationID: uuid.MustParse(conv)}
			}
			inConv := []file.File{upload(conv), upload(conv)}
			single := upload(other)
			exported, err := env.convs.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv}))
			if err != nil {
				t.Fatal(err)
			}
			inConv = append(inConv, file.File{ID: uuid.MustParse(exported.Msg.GetFile().GetId()), ConversationID: uuid.MustParse(conv)})

			if _, err := env.convs.DeleteConversation(ctx, as(owner, &parleyv1.DeleteConversationRequest{ConversationId: conv})); err != nil {
				t.Fatal(err)
			}
			if _, err := c.DeleteFile(ctx, as(owner, &parleyv1.DeleteFileRequest{FileId: single.ID.String()})); err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: single.ID.String()})); codeOf(err) != connect.CodeNotFound {
				t.Errorf("GetFile of a deleted file = %v", err)
			}
			for _, f := range append(inConv, single) {
				waitBlobGone(t, env.blobs, f.BlobName())
				if failed, attempts := flaky.counts(f.BlobName()); failed != 1 || attempts < 2 {
					t.Errorf("%s: %d failed of %d attempts; want the first to fail and a retry", f.BlobName(), failed, attempts)
				}
			}
			waitOutboxEmpty(t, env.db)
		})
	}
}

func waitBlobGone(t *testing.T, b file.Blobs, name string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := b.Stat(t.Context(), name)
		if errors.Is(err, file.ErrBlobNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("blob %s still there (%v)", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitOutboxEmpty(t *testing.T, db *bun.DB) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var n int
		if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM blob_deletions").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d outbox entries left", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestExportConversation(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{})
			ctx := t.Context()
			owner := env.user(t)
			conv := env.conversation(t, owner)
			for i, turn := range [][2]string{{"hello", "hi there"}, {"how are you?", ""}, {"", "system-ish \"quoted\" reply\nwith lines"}} {
				if _, err := env.convs.SaveTurn(ctx, as(owner, &parleyv1.SaveTurnRequest{
					ConversationId: conv, TurnId: "t" + string(rune('0'+i)), UserMessage: turn[0], AssistantMessage: turn[1],
				})); err != nil {
					t.Fatal(err)
				}
			}
			// JSON: proto JSON of the conversation and every message in seq order.
			exp, err := env.convs.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv}))
			if err != nil {
				t.Fatal(err)
			}
			f := exp.Msg.GetFile()
			if f.GetKind() != parleyv1.FileKind_FILE_KIND_EXPORT || f.GetContentType() != "application/json" || f.GetFilename() != "files.json" ||
				f.GetStatus() != parleyv1.FileStatus_FILE_STATUS_READY {
				t.Errorf("export file = %v", f)
			}
			resp, body := httpDo(t, http.MethodGet, exp.Msg.GetDownloadUrl(), nil, nil)
			if resp.StatusCode != http.StatusOK || int64(len(body)) != f.GetSizeBytes() || hexSHA256(body) != f.GetSha256() {
				t.Fatalf("download = %d, %d bytes, file %v", resp.StatusCode, len(body), f)
			}
			var envelope struct {
				Conversation json.RawMessage   `json:"conversation"`
				Messages     []json.RawMessage `json:"messages"`
			}
			if err := json.Unmarshal(body, &envelope); err != nil {
				t.Fatalf("export is not JSON: %v\n%s", err, body)
			}
			var pc parleyv1.Conversation
			if err := protojson.Unmarshal(envelope.Conversation, &pc); err != nil || pc.GetId() != conv || pc.GetMessageCount() != 4 {
				t.Errorf("conversation = %v, %v", &pc, err)
			}
			if len(envelope.Messages) != 4 {
				t.Fatalf("%d messages", len(envelope.Messages))
			}
			for i, raw := range envelope.Messages {
				var m parleyv1.Message
				if err := protojson.Unmarshal(raw, &m); err != nil || m.GetSeq() != int64(i+1) {
					t.Errorf("message %d = %v, %v", i, &m, err)
				}
			}

			// Markdown: a readable transcript.
			md, err := env.convs.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv, Format: parleyv1.ExportFormat_EXPORT_FORMAT_MARKDOWN}))
			if err != nil {
				t.Fatal(err)
			}
			resp, body = httpDo(t, http.MethodGet, md.Msg.GetDownloadUrl(), nil, nil)
			text := string(body)
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(text, "# files\n") || strings.Count(text, "**User**") != 2 ||
				strings.Count(text, "**Assistant**") != 2 || !strings.Contains(text, "how are you?") || md.Msg.GetFile().GetFilename() != "files.md" {
				t.Errorf("markdown = %d %q", resp.StatusCode, text)
			}
			list, err := env.files["connect"].ListFiles(ctx, as(owner, &parleyv1.ListFilesRequest{ConversationId: conv}))
			if err != nil || len(list.Msg.GetFiles()) != 2 {
				t.Errorf("ListFiles after two exports = %v, %v", list, err)
			}
		})
	}
}

// countingBlobs counts the deletions the worker asks the store for.
type countingBlobs struct {
	file.Blobs
	mu      sync.Mutex
	deletes map[string]int
}

func (c *countingBlobs) Delete(ctx context.Context, name string) error {
	c.mu.Lock()
	c.deletes[name]++
	c.mu.Unlock()
	return c.Blobs.Delete(ctx, name)
}

func (c *countingBlobs) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deletes[name]
}

func TestOutboxParksAnEntryItCanNeverDelete(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			counting := &countingBlobs{deletes: map[string]int{}}
			env := newFileEnv(t, kind, fileEnvOptions{wrap: func(b file.Blobs) file.Blobs { counting.Blobs = b; return counting }})
			ctx := t.Context()
			// A name no blob store accepts: retrying can never help.
			const bad = "../outside/the/container"
			if _, err := env.db.ExecContext(ctx, "INSERT INTO blob_deletions (blob_name) VALUES (?)", bad); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				var parked bool
				if err := env.db.QueryRowContext(ctx, "SELECT parked_at IS NOT NULL FROM blob_deletions WHERE blob_name = ?", bad).Scan(&parked); err != nil {
					t.Fatal(err)
				}
				if parked {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the entry was not parked; %d delete attempts", counting.count(bad))
				}
				time.Sleep(50 * time.Millisecond)
			}
			// The worker polls every 100ms and retries after at most 200ms:
			// a parked entry is never taken again.
			time.Sleep(time.Second)
			if n := counting.count(bad); n != 1 {
				t.Errorf("%d delete attempts, want 1", n)
			}
			var lastError string
			if err := env.db.QueryRowContext(ctx, "SELECT last_error FROM blob_deletions WHERE blob_name = ?", bad).Scan(&lastError); err != nil || lastError == "" {
				t.Errorf("last_error = %q, %v; want the refusal", lastError, err)
			}
		})
	}
}

// TestCompletedUploadCannotChange plays a client that keeps its upload URL
// after CompleteUpload and uses every right the URL grants (on Azure, create
// and write: breaking a lease, then a PUT) to change the completed file.
func TestCompletedUploadCannotChange(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{})
			ctx := t.Context()
			owner := env.user(t)
			c := env.files["connect"]
			data := bytes.Repeat([]byte("the checked bytes\n"), 100)
			created := createUpload(t, c, owner, env.conversation(t, owner), "a.txt", len(data))
			upURL, upHeaders := created.Msg.GetUploadUrl(), created.Msg.GetUploadHeaders()
			if resp, body := httpDo(t, http.MethodPut, upURL, upHeaders, data); resp.StatusCode != http.StatusCreated {
				t.Fatalf("PUT = %d %s", resp.StatusCode, body)
			}
			id := created.Msg.GetFile().GetId()
			if _, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: id, Sha256: hexSHA256(data)})); err != nil {
				t.Fatal(err)
			}

			evil := bytes.Repeat([]byte("swapped after the check\n"), 75)[:len(data)]
			if kind == "azure" {
				u, err := url.Parse(upURL)
				if err != nil {
					t.Fatal(err)
				}
				q := u.Query()
				q.Set("comp", "lease")
				u.RawQuery = q.Encode()
				httpDo(t, http.MethodPut, u.String(), map[string]string{
					"x-ms-version": q.Get("sv"), "x-ms-lease-action": "break", "x-ms-lease-break-period": "0",
				}, nil)
			}
			httpDo(t, http.MethodPut, upURL, upHeaders, evil)

			got, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: id}))
			if err != nil {
				t.Fatal(err)
			}
			if f := got.Msg.GetFile(); f.GetStatus() != parleyv1.FileStatus_FILE_STATUS_READY || f.GetSha256() != hexSHA256(data) {
				t.Fatalf("file after the PUT = %v", f)
			}
			resp, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("download after a PUT with the old upload URL = %d %q, want the checked bytes", resp.StatusCode, body[:min(len(body), 40)])
			}
			// Completing again cannot pick up the new bytes either.
			if again, err := c.CompleteUpload(ctx, as(owner, &parleyv1.CompleteUploadRequest{FileId: id, Sha256: hexSHA256(evil)})); codeOf(err) != connect.CodeFailedPrecondition {
				t.Errorf("CompleteUpload with the new bytes' sha256 = %v, %v; want failed_precondition", again, err)
			}
			resp, body = httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("download after another CompleteUpload = %d, want the checked bytes", resp.StatusCode)
			}
		})
	}
}
