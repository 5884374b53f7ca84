package blobstore_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/blobstore"
	"github.com/parley-dev/parley/internal/file"
)

// FuzzDirSignedURL tampers with a signed upload or download URL of the
// directory store, by cutting and inserting anywhere in its path and query,
// and sends it to the store's own handlers. The untampered URL works; any
// other that works names the same blob with the same signed parameters and
// the very signature that was issued, so nobody without the key can reach
// another blob, stretch the expiry, or change the headers or size.
func FuzzDirSignedURL(f *testing.F) {
	const blob = "the blob's bytes"
	d, err := blobstore.NewDir(f.TempDir(), "http://parley.test", bytes.Repeat([]byte("k"), 32))
	if err != nil {
		f.Fatal(err)
	}
	mux := http.NewServeMux()
	for pattern, h := range d.Routes() {
		mux.Handle(pattern, h)
	}
	name := file.BlobName(uuid.MustParse("0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b"), uuid.MustParse("0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5c"))
	for _, s := range []struct {
		get      bool
		ct, disp string
		size     int64
		pos      uint16
		cut      uint8
		insert   string
	}{
		{true, "text/plain; charset=utf-8", `attachment; filename="a b.txt"`, 0, 0, 0, ""},
		{false, "audio/ogg", "", 16, 0, 0, ""},
		{true, "image/png", "attachment; filename=x.png", 0, 1000, 0, "&rsct=text/html"},
		{false, "text/plain", "", 4, 60, 1, "5"},
		{false, "text/plain", "", 4, 0, 0, "&size=400"},
		{true, "text/plain", "", 0, 7, 36, "00000000-0000-0000-0000-000000000000"},
		{true, "", "", 0, 8, 0, "../"},
	} {
		f.Add(s.get, s.ct, s.disp, s.size, s.pos, s.cut, s.insert)
	}
	f.Fuzz(func(t *testing.T, get bool, ct, disp string, size int64, pos uint16, cut uint8, insert string) {
		if err := d.Put(t.Context(), name, strings.NewReader(blob), ""); err != nil {
			t.Fatal(err)
		}
		size = max(size, 0)
		exp := time.Now().Add(time.Hour)
		method, body := http.MethodGet, []byte(nil)
		var raw string
		if get {
			raw, err = d.DownloadURL(t.Context(), name, file.DownloadSpec{ContentType: ct, ContentDisposition: disp, Expires: exp})
		} else {
			method, body = http.MethodPut, bytes.Repeat([]byte("u"), int(min(size, 16)))
			var up file.UploadTarget
			up, err = d.UploadURL(t.Context(), name, file.UploadSpec{ContentType: ct, Size: size, Expires: exp})
			raw = up.URL
		}
		if err != nil {
			t.Fatal(err)
		}
		issued, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		target := issued.RequestURI()
		// The top bit of pos counts from the end, where the signature is.
		p := int(pos&0x7fff) % (len(target) + 1)
		if pos&0x8000 != 0 {
			p = len(target) - p
		}
		c := min(int(cut), len(target)-p)
		tampered := target[:p] + insert + target[p+c:]
		req, err := http.NewRequestWithContext(t.Context(), method, "http://parley.test"+tampered, bytes.NewReader(body))
		if err != nil || req.URL.RequestURI() != tampered && tampered != target {
			return // no HTTP server would pass this request on
		}
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)

		var passed bool
		switch rec.Code {
		case http.StatusOK:
			passed = get
			if got := rec.Body.String(); got != blob || rec.Header().Get("Content-Type") != ct || rec.Header().Get("Content-Disposition") != disp {
				t.Fatalf("GET %s served %q with %v", tampered, got, rec.Header())
			}
		case http.StatusCreated, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			passed = !get
		case http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusMovedPermanently, http.StatusTemporaryRedirect:
		default:
			t.Fatalf("%s %s: status %d %q", method, tampered, rec.Code, rec.Body)
		}
		if tampered == target && rec.Code != map[bool]int{true: http.StatusOK, false: http.StatusCreated}[get] {
			t.Fatalf("the issued URL %s answered %d %q", target, rec.Code, rec.Body)
		}
		if !passed {
			return
		}
		if req.PathValue("name") != name {
			t.Fatalf("%s %s reached blob %q, signed for %q", method, tampered, req.PathValue("name"), name)
		}
		want, got := issued.Query(), req.URL.Query()
		for _, k := range []string{"exp", "ct", "size", "rsct", "rscd", "sig"} {
			if got.Get(k) != want.Get(k) {
				t.Fatalf("%s %s passed with %s=%q, signed %q", method, tampered, k, got.Get(k), want.Get(k))
			}
		}
	})
}

// FuzzDirSourceName copies from and deletes any name, as a forged egress
// webhook could name one: the directory store never reads or removes a
// file outside its root, nor its own signing key.
func FuzzDirSourceName(f *testing.F) {
	base := f.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	d, err := blobstore.NewDir(root, "http://parley.test", nil)
	if err != nil {
		f.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(root, ".signing-key"))
	if err != nil {
		f.Fatal(err)
	}
	if err := os.MkdirAll(outside, 0o700); err != nil {
		f.Fatal(err)
	}
	secret := []byte("another tenant's secret")
	if err := os.WriteFile(filepath.Join(outside, "secret"), secret, 0o600); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"recordings/room/EG_1.mp4", "../outside/secret", "recordings/../../outside/secret", ".signing-key",
		"./.signing-key", "recordings//x", "/etc/passwd", `..\outside\secret`, "recordings/\x00", "%2e%2e/outside/secret",
		file.BlobName(uuid.New(), uuid.New()),
	} {
		f.Add(s)
	}
	dst := file.BlobName(uuid.MustParse("0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b"), uuid.MustParse("0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5c"))
	f.Fuzz(func(t *testing.T, src string) {
		ctx := t.Context()
		if err := d.Put(ctx, dst, strings.NewReader("before"), ""); err != nil {
			t.Fatal(err)
		}
		err := d.Copy(ctx, src, dst, file.CopyReplace)
		if err != nil && !errors.Is(err, file.ErrInvalidBlobName) && !errors.Is(err, file.ErrBlobNotFound) {
			// Anything else is the file system's answer for a name inside
			// the root (a directory, a too long name): still refused.
			if !strings.Contains(err.Error(), "blob dir") {
				t.Fatalf("Copy(%q) = %v", src, err)
			}
		}
		rc, err := d.Open(ctx, dst)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, secret) || bytes.Equal(got, key) {
			t.Fatalf("Copy(%q) read %q from outside the blobs", src, got)
		}
		_ = d.Delete(ctx, src)
		for _, p := range []string{filepath.Join(outside, "secret"), filepath.Join(root, ".signing-key")} {
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("Delete(%q) removed %s: %v", src, p, err)
			}
		}
	})
}
