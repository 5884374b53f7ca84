package blobstore_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/blobstore"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// stores returns each implementation, fresh for t: Azure on a private
// Azurite container, and a directory store served by a test server.
func stores(t *testing.T) map[string]file.Blobs {
	t.Helper()
	conn, container := testenv.AzuriteContainer(t)
	az, err := blobstore.NewAzure(t.Context(), conn, container)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]file.Blobs{"azure": az, "dir": newDir(t, t.TempDir())}
}

func newDir(t *testing.T, root string) *blobstore.Dir {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	d, err := blobstore.NewDir(root, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for pattern, h := range d.Routes() {
		mux.Handle(pattern, h)
	}
	return d
}

func newName() string { return file.BlobName(uuid.New(), uuid.New()) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func do(t *testing.T, method, url string, headers map[string]string, body []byte) (*http.Response, []byte) {
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

func readBlob(t *testing.T, b file.Blobs, name string) []byte {
	t.Helper()
	rc, err := b.Open(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestPutStatOpenDelete(t *testing.T) {
	t.Parallel()
	for kind, b := range stores(t) {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			name := newName()
			if _, err := b.Stat(ctx, name); !errors.Is(err, file.ErrBlobNotFound) {
				t.Fatalf("Stat of a missing blob = %v, want ErrBlobNotFound", err)
			}
			if _, err := b.Open(ctx, name); !errors.Is(err, file.ErrBlobNotFound) {
				t.Fatalf("Open of a missing blob = %v, want ErrBlobNotFound", err)
			}
			// Larger than a block, through a reader that hides its length,
			// as an export streams.
			data := randomBytes(3<<20 + 17)
			if err := b.Put(ctx, name, io.MultiReader(bytes.NewReader(data)), "application/octet-stream"); err != nil {
				t.Fatal(err)
			}
			info, err := b.Stat(ctx, name)
			if err != nil || info.Size != int64(len(data)) {
				t.Fatalf("Stat = %+v, %v; want size %d", info, err, len(data))
			}
			if got := readBlob(t, b, name); !bytes.Equal(got, data) {
				t.Fatal("read bytes differ from the written ones")
			}
			for range 2 { // deleting twice is fine
				if err := b.Delete(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := b.Stat(ctx, name); !errors.Is(err, file.ErrBlobNotFound) {
				t.Fatalf("Stat after Delete = %v, want ErrBlobNotFound", err)
			}
		})
	}
}

func TestNamesOtherThanServerIDsAreRefused(t *testing.T) {
	t.Parallel()
	id := uuid.New().String()
	bad := []string{
		"../../etc/passwd",
		id + "/../../" + id,
		"/" + id + "/" + id,
		id,
		id + "/" + id + "/x",
		strings.ToUpper(id) + "/" + id,
		"{" + id + "}/" + id,
		id + "/" + id + ".sealed",
		id + "/" + id + file.StagingSuffix + file.StagingSuffix,
		id + file.StagingSuffix + "/" + id,
	}
	for kind, b := range stores(t) {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			for _, name := range bad {
				if err := b.Put(ctx, name, strings.NewReader("x"), "text/plain"); err == nil {
					t.Errorf("Put(%q) succeeded", name)
				}
				if _, err := b.UploadURL(ctx, name, file.UploadSpec{ContentType: "text/plain", Size: 1, Expires: time.Now().Add(time.Minute)}); err == nil {
					t.Errorf("UploadURL(%q) succeeded", name)
				}
				if _, err := b.DownloadURL(ctx, name, file.DownloadSpec{Expires: time.Now().Add(time.Minute)}); err == nil {
					t.Errorf("DownloadURL(%q) succeeded", name)
				}
				if _, err := b.Stat(ctx, name); !errors.Is(err, file.ErrInvalidBlobName) {
					t.Errorf("Stat(%q) = %v, want ErrInvalidBlobName", name, err)
				}
			}
			// Copy's source and Delete also take the names egress chose,
			// but none that leaves the container or reaches a hidden file.
			for _, name := range []string{"../../etc/passwd", id + "/../../" + id, "/" + id + "/" + id, "a//b", "a/./b",
				".signing-key", "x/.upload-1", `a\b`, "a/b\x00", "a/" + strings.Repeat("b", 1024)} {
				if err := b.Delete(ctx, name); !errors.Is(err, file.ErrInvalidBlobName) {
					t.Errorf("Delete(%q) = %v, want ErrInvalidBlobName", name, err)
				}
				if err := b.Copy(ctx, name, newName(), file.CopyReplace); !errors.Is(err, file.ErrInvalidBlobName) {
					t.Errorf("Copy(%q, ...) = %v, want ErrInvalidBlobName", name, err)
				}
			}
		})
	}
}

// TestCopyFromEgressNames moves a recording written the way LiveKit egress
// writes it, under a name of its own, to a file's blob name.
func TestCopyFromEgressNames(t *testing.T) {
	t.Parallel()
	conn, containerName := testenv.AzuriteContainer(t)
	az, err := blobstore.NewAzure(t.Context(), conn, containerName)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	egressWrite := map[string]func(name string, data []byte){
		"azure": func(name string, data []byte) {
			c, err := container.NewClientFromConnectionString(conn, containerName, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.NewBlockBlobClient(name).UploadBuffer(t.Context(), data, nil); err != nil {
				t.Fatal(err)
			}
		},
		"dir": func(name string, data []byte) {
			p := filepath.Join(root, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
		},
	}
	for kind, b := range map[string]file.Blobs{"azure": az, "dir": newDir(t, root)} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			source := "recordings/parley-" + uuid.NewString() + "/EG_1 (final).mp4"
			data := randomBytes(70 << 10)
			egressWrite[kind](source, data)
			dst := newName()
			if err := b.Copy(ctx, source, dst, file.CopyReplace); err != nil {
				t.Fatal(err)
			}
			if err := b.Delete(ctx, source); err != nil {
				t.Fatal(err)
			}
			if err := b.Copy(ctx, source, newName(), file.CopyReplace); !errors.Is(err, file.ErrBlobNotFound) {
				t.Errorf("Copy after deleting the source = %v, want ErrBlobNotFound", err)
			}
			if got := readBlob(t, b, dst); !bytes.Equal(got, data) {
				t.Fatal("the copy differs from what egress wrote")
			}
		})
	}
}

func TestUploadURLAndDownloadURL(t *testing.T) {
	t.Parallel()
	for kind, b := range stores(t) {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			name := newName()
			data := []byte("hello, direct upload")
			up, err := b.UploadURL(ctx, name, file.UploadSpec{ContentType: "text/plain", Size: int64(len(data)), Expires: time.Now().Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			if resp, body := do(t, http.MethodPut, up.URL, up.Headers, data); resp.StatusCode != http.StatusCreated {
				t.Fatalf("PUT = %d %s", resp.StatusCode, body)
			}
			if got := readBlob(t, b, name); !bytes.Equal(got, data) {
				t.Fatalf("stored %q, want %q", got, data)
			}

			// The upload URL is for one blob: another name is refused.
			conv, id, _ := strings.Cut(name, "/")
			otherID := uuid.NewString()
			other := conv + "/" + otherID
			otherURL := strings.Replace(up.URL, id, otherID, 1)
			if otherURL == up.URL {
				t.Fatalf("file id not found in %s", up.URL)
			}
			if resp, _ := do(t, http.MethodPut, otherURL, up.Headers, data); resp.StatusCode < 400 {
				t.Fatalf("PUT to another blob with the URL = %d, want refusal", resp.StatusCode)
			}
			if _, err := b.Stat(ctx, other); !errors.Is(err, file.ErrBlobNotFound) {
				t.Fatalf("another blob was written: %v", err)
			}
			// It is write-only: reading with it is refused.
			if resp, _ := do(t, http.MethodGet, up.URL, nil, nil); resp.StatusCode < 400 {
				t.Fatalf("GET with the upload URL = %d, want refusal", resp.StatusCode)
			}

			disp := file.ContentDisposition("résumé ../x.txt")
			dl, err := b.DownloadURL(ctx, name, file.DownloadSpec{ContentType: "text/plain; charset=utf-8", ContentDisposition: disp, Expires: time.Now().Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			resp, body := do(t, http.MethodGet, dl, nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("GET = %d %q", resp.StatusCode, body)
			}
			if got := resp.Header.Get("Content-Disposition"); got != disp {
				t.Errorf("Content-Disposition = %q, want %q", got, disp)
			}
			if got := resp.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q", got)
			}
			// It is read-only: writing with it is refused.
			if resp, _ := do(t, http.MethodPut, dl, up.Headers, []byte("x")); resp.StatusCode < 400 {
				t.Fatalf("PUT with the download URL = %d, want refusal", resp.StatusCode)
			}

			if err := b.Delete(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Stat(ctx, name); !errors.Is(err, file.ErrBlobNotFound) {
				t.Fatalf("Stat after Delete = %v", err)
			}
		})
	}
}

func TestCopy(t *testing.T) {
	t.Parallel()
	for kind, b := range stores(t) {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			conv, id := uuid.New(), uuid.New()
			staging := file.File{ConversationID: conv, ID: id}.StagingBlobName()
			final := file.BlobName(conv, id)
			checked := file.BlobName(conv, uuid.New())
			if err := b.Copy(ctx, staging, checked, file.CopyReplace); !errors.Is(err, file.ErrBlobNotFound) {
				t.Fatalf("Copy of a missing blob = %v, want ErrBlobNotFound", err)
			}
			up, err := b.UploadURL(ctx, staging, file.UploadSpec{ContentType: "text/plain", Size: 5, Expires: time.Now().Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			put := func(body string) {
				t.Helper()
				if resp, b := do(t, http.MethodPut, up.URL, up.Headers, []byte(body)); resp.StatusCode != http.StatusCreated {
					t.Fatalf("PUT = %d %s", resp.StatusCode, b)
				}
			}
			put("first")
			if err := b.Copy(ctx, staging, checked, file.CopyReplace); err != nil {
				t.Fatal(err)
			}
			put("again")
			if err := b.Copy(ctx, staging, checked, file.CopyReplace); err != nil {
				t.Fatal(err)
			}
			if got := readBlob(t, b, checked); string(got) != "again" {
				t.Fatalf("CopyReplace left %q, want the source's latest bytes", got)
			}

			if err := b.Copy(ctx, checked, final, file.CopyCreate); err != nil {
				t.Fatal(err)
			}
			put("third")
			if err := b.Copy(ctx, staging, final, file.CopyCreate); !errors.Is(err, file.ErrBlobExists) {
				t.Fatalf("CopyCreate over an existing blob = %v, want ErrBlobExists", err)
			}
			// The copy is the bytes the source had: neither a later PUT to
			// the source nor its deletion changes it.
			if err := b.Delete(ctx, checked); err != nil {
				t.Fatal(err)
			}
			if got := readBlob(t, b, final); string(got) != "again" {
				t.Fatalf("copied blob holds %q, want %q", got, "again")
			}
			if got := readBlob(t, b, staging); string(got) != "third" {
				t.Fatalf("staging blob holds %q", got)
			}
			if err := b.Copy(ctx, "../x", final, file.CopyReplace); !errors.Is(err, file.ErrInvalidBlobName) {
				t.Errorf("Copy from a refused name = %v, want ErrInvalidBlobName", err)
			}
		})
	}
}

func TestURLsExpire(t *testing.T) {
	t.Parallel()
	for kind, b := range stores(t) {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			name := newName()
			if err := b.Put(ctx, name, strings.NewReader("short-lived"), "text/plain"); err != nil {
				t.Fatal(err)
			}
			// SAS expiry has one-second resolution.
			expires := time.Now().Add(2 * time.Second)
			dl, err := b.DownloadURL(ctx, name, file.DownloadSpec{ContentType: "text/plain", ContentDisposition: "attachment", Expires: expires})
			if err != nil {
				t.Fatal(err)
			}
			up, err := b.UploadURL(ctx, newName(), file.UploadSpec{ContentType: "text/plain", Size: 1, Expires: expires})
			if err != nil {
				t.Fatal(err)
			}
			if resp, body := do(t, http.MethodGet, dl, nil, nil); resp.StatusCode != http.StatusOK || string(body) != "short-lived" {
				t.Fatalf("GET before expiry = %d %q", resp.StatusCode, body)
			}
			time.Sleep(time.Until(expires) + 1500*time.Millisecond)
			if resp, _ := do(t, http.MethodGet, dl, nil, nil); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("GET after expiry = %d, want 403", resp.StatusCode)
			}
			if resp, _ := do(t, http.MethodPut, up.URL, up.Headers, []byte("x")); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("PUT after expiry = %d, want 403", resp.StatusCode)
			}
		})
	}
}

func TestDirUploadIsBoundToItsSignedHeadersAndSize(t *testing.T) {
	t.Parallel()
	d := newDir(t, t.TempDir())
	ctx := t.Context()
	name := newName()
	up, err := d.UploadURL(ctx, name, file.UploadSpec{ContentType: "text/plain", Size: 4, Expires: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, http.MethodPut, up.URL, map[string]string{"Content-Type": "text/html"}, []byte("abcd")); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT with another content type = %d, want 400", resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodPut, up.URL, up.Headers, []byte("abcde")); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT of more than the declared size = %d, want 413", resp.StatusCode)
	}
	tampered := strings.Replace(up.URL, "size=4", "size=400", 1)
	if resp, _ := do(t, http.MethodPut, tampered, up.Headers, []byte("abcde")); resp.StatusCode != http.StatusForbidden {
		t.Errorf("PUT with a changed size = %d, want 403", resp.StatusCode)
	}
	if _, err := d.Stat(ctx, name); !errors.Is(err, file.ErrBlobNotFound) {
		t.Fatalf("a refused upload left a blob: %v", err)
	}
}

func TestDirKeepsItsKeyAndStaysInside(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	root := filepath.Join(parent, "blobs")
	d1 := newDir(t, root)
	name := newName()
	if err := d1.Put(t.Context(), name, strings.NewReader("x"), "text/plain"); err != nil {
		t.Fatal(err)
	}
	u1, err := d1.DownloadURL(t.Context(), name, file.DownloadSpec{ContentType: "text/plain", ContentDisposition: "attachment", Expires: time.Unix(2e9, 0)})
	if err != nil {
		t.Fatal(err)
	}
	// A second store on the same directory (a restart) signs alike.
	d2, err := blobstore.NewDir(root, "http://example.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	u2, _ := d2.DownloadURL(t.Context(), name, file.DownloadSpec{ContentType: "text/plain", ContentDisposition: "attachment", Expires: time.Unix(2e9, 0)})
	if _, q1, _ := strings.Cut(u1, "?"); !strings.HasSuffix(u2, q1) {
		t.Errorf("signatures differ after a restart: %s vs %s", u1, u2)
	}
	// Nothing but the root was created under the parent.
	entries, err := os.ReadDir(parent)
	if err != nil || len(entries) != 1 || entries[0].Name() != "blobs" {
		t.Fatalf("parent holds %v (%v)", entries, err)
	}
	if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(name))); errors.Is(err, fs.ErrNotExist) {
		t.Fatal("blob not stored at root/{conversation}/{file}")
	}
}
