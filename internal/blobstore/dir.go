package blobstore

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/parley-dev/parley/internal/file"
)

const (
	// keyFile holds the directory store's signing key when none is given,
	// so restarts (and processes sharing the directory) accept each other's
	// URLs. No blob name can collide with it: names are {uuid}/{uuid}.
	keyFile = ".signing-key"
	keySize = 32
	// RoutePrefix is the path under the public URL where Dir's handlers
	// serve blobs.
	RoutePrefix = "/blobs/"
)

// Dir keeps blobs as files under a local directory, for `parley dev` and
// single-host setups. Upload and download URLs point at Parley itself
// (Routes), signed with HMAC-SHA256 over the method, the one blob name, the
// expiry and every header the response or upload is bound to.
type Dir struct {
	root string
	key  []byte
	base string
	now  func() time.Time
}

var _ file.Blobs = (*Dir)(nil)

// NewDir returns a store under root (created if missing) whose URLs start
// with publicURL (Parley's externally reachable base URL). With a nil key,
// a random one is kept in root/.signing-key.
func NewDir(root, publicURL string, key []byte) (*Dir, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("blob dir: %w", err)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("blob dir: %w", err)
	}
	if key == nil {
		if key, err = loadOrCreateKey(filepath.Join(abs, keyFile)); err != nil {
			return nil, err
		}
	}
	if len(key) < 16 {
		return nil, errors.New("blob dir: signing key must have at least 16 bytes")
	}
	return &Dir{root: abs, key: key, base: strings.TrimRight(publicURL, "/") + RoutePrefix, now: time.Now}, nil
}

func loadOrCreateKey(path string) ([]byte, error) {
	key := make([]byte, keySize)
	rand.Read(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, werr := f.Write(key)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, fmt.Errorf("blob dir: write signing key: %w", werr)
		}
		return key, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("blob dir: create signing key: %w", err)
	}
	// Another process may be writing it this instant.
	for range 50 {
		key, err = os.ReadFile(path)
		if err == nil && len(key) == keySize {
			return key, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, fmt.Errorf("blob dir: read signing key %s: unreadable or wrong size", path)
}

func (d *Dir) path(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	return filepath.Join(d.root, filepath.FromSlash(name)), nil
}

// sourcePath is path for the names checkSourceName allows.
func (d *Dir) sourcePath(name string) (string, error) {
	if err := checkSourceName(name); err != nil {
		return "", err
	}
	return filepath.Join(d.root, filepath.FromSlash(name)), nil
}

// Put implements file.Blobs: the bytes go to a temporary file that is
// renamed into place, so a blob is either whole or absent.
func (d *Dir) Put(_ context.Context, name string, r io.Reader, _ string) error {
	p, err := d.path(name)
	if err != nil {
		return err
	}
	tmp, err := d.writeTemp(p, r)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("blob dir: %w", err)
	}
	return nil
}

// writeTemp copies r into a new temporary file beside p and returns its path.
func (d *Dir) writeTemp(p string, r io.Reader) (string, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", fmt.Errorf("blob dir: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".upload-*")
	if err != nil {
		return "", fmt.Errorf("blob dir: %w", err)
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("blob dir: write: %w", err)
	}
	return f.Name(), nil
}

// Stat implements file.Blobs.
func (d *Dir) Stat(_ context.Context, name string) (file.BlobInfo, error) {
	p, err := d.path(name)
	if err != nil {
		return file.BlobInfo{}, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return file.BlobInfo{}, file.ErrBlobNotFound
	}
	if err != nil {
		return file.BlobInfo{}, fmt.Errorf("blob dir: %w", err)
	}
	return file.BlobInfo{Size: st.Size()}, nil
}

// Open implements file.Blobs.
func (d *Dir) Open(_ context.Context, name string) (io.ReadCloser, error) {
	p, err := d.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, file.ErrBlobNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("blob dir: %w", err)
	}
	return f, nil
}

// Copy implements file.Blobs with a hard link (src may be a name egress
// chose, see checkSourceName): no bytes are copied, and
// since every write here replaces a file by renaming a new one over it,
// never writing into one, the copy keeps the bytes src had. CopyCreate
// links straight to dst, which the file system refuses if dst exists;
// CopyReplace links beside dst and renames over it.
func (d *Dir) Copy(_ context.Context, src, dst string, mode file.CopyMode) error {
	sp, err := d.sourcePath(src)
	if err != nil {
		return err
	}
	dp, err := d.path(dst)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dp), 0o700); err != nil {
		return fmt.Errorf("blob dir: %w", err)
	}
	target := dp
	if mode == file.CopyReplace {
		target = filepath.Join(filepath.Dir(dp), ".copy-"+rand.Text())
	}
	switch err := os.Link(sp, target); {
	case errors.Is(err, fs.ErrNotExist):
		return file.ErrBlobNotFound
	case errors.Is(err, fs.ErrExist):
		return file.ErrBlobExists
	case err != nil:
		return fmt.Errorf("blob dir: copy: %w", err)
	}
	if target != dp {
		if err := os.Rename(target, dp); err != nil {
			os.Remove(target)
			return fmt.Errorf("blob dir: copy: %w", err)
		}
	}
	return nil
}

// Delete implements file.Blobs.
func (d *Dir) Delete(_ context.Context, name string) error {
	p, err := d.sourcePath(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob dir: delete: %w", err)
	}
	return nil
}

// The signed parameters of a URL.
const (
	paramExpires     = "exp"
	paramContentType = "ct"
	paramSize        = "size"
	paramRespType    = "rsct"
	paramRespDisp    = "rscd"
	paramSignature   = "sig"
)

// UploadURL implements file.Blobs: a URL for a PUT of exactly this blob,
// of at most spec.Size bytes with spec.ContentType, until spec.Expires.
func (d *Dir) UploadURL(_ context.Context, name string, spec file.UploadSpec) (file.UploadTarget, error) {
	if err := checkName(name); err != nil {
		return file.UploadTarget{}, err
	}
	q := url.Values{
		paramExpires:     {strconv.FormatInt(spec.Expires.Unix(), 10)},
		paramContentType: {spec.ContentType},
		paramSize:        {strconv.FormatInt(spec.Size, 10)},
	}
	q.Set(paramSignature, d.sign(http.MethodPut, name, q))
	return file.UploadTarget{
		URL:     d.base + name + "?" + q.Encode(),
		Headers: map[string]string{"Content-Type": spec.ContentType},
	}, nil
}

// DownloadURL implements file.Blobs.
func (d *Dir) DownloadURL(_ context.Context, name string, spec file.DownloadSpec) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	q := url.Values{
		paramExpires:  {strconv.FormatInt(spec.Expires.Unix(), 10)},
		paramRespType: {spec.ContentType},
		paramRespDisp: {spec.ContentDisposition},
	}
	q.Set(paramSignature, d.sign(http.MethodGet, name, q))
	return d.base + name + "?" + q.Encode(), nil
}

// sign is the URL's MAC. Every field is length-prefixed, so no choice of
// values can make two different requests sign alike.
func (d *Dir) sign(method, name string, q url.Values) string {
	m := hmac.New(sha256.New, d.key)
	for _, v := range []string{"parley-blob-url-v1", method, name,
		q.Get(paramExpires), q.Get(paramContentType), q.Get(paramSize), q.Get(paramRespType), q.Get(paramRespDisp)} {
		fmt.Fprintf(m, "%d:%s\n", len(v), v)
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// verify checks r's signature and expiry for method, returning the blob
// name and the signed parameters.
func (d *Dir) verify(r *http.Request, method string) (string, url.Values, bool) {
	name := r.PathValue("name")
	if checkName(name) != nil {
		return "", nil, false
	}
	q := r.URL.Query()
	// The text, not its decoding: base64 skips newlines and ignores spare
	// bits, so decoded signatures would let altered URLs pass.
	if !hmac.Equal([]byte(q.Get(paramSignature)), []byte(d.sign(method, name, q))) {
		return "", nil, false
	}
	exp, err := strconv.ParseInt(q.Get(paramExpires), 10, 64)
	if err != nil || d.now().Unix() >= exp {
		return "", nil, false
	}
	return name, q, true
}

// Routes returns the handlers that serve Dir's signed URLs, keyed by
// http.ServeMux pattern, for rpc.Options.Routes.
func (d *Dir) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"PUT " + RoutePrefix + "{name...}": http.HandlerFunc(d.serveUpload),
		"GET " + RoutePrefix + "{name...}": http.HandlerFunc(d.serveDownload),
	}
}

func (d *Dir) serveUpload(w http.ResponseWriter, r *http.Request) {
	name, q, ok := d.verify(r, http.MethodPut)
	if !ok {
		http.Error(w, "invalid or expired signature", http.StatusForbidden)
		return
	}
	if r.Header.Get("Content-Type") != q.Get(paramContentType) {
		http.Error(w, "Content-Type must be "+q.Get(paramContentType), http.StatusBadRequest)
		return
	}
	size, err := strconv.ParseInt(q.Get(paramSize), 10, 64)
	if err != nil || r.ContentLength > size {
		http.Error(w, "body larger than the declared size", http.StatusRequestEntityTooLarge)
		return
	}
	p, _ := d.path(name)
	tmp, err := d.writeTemp(p, http.MaxBytesReader(w, r.Body, size))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, "body larger than the declared size", http.StatusRequestEntityTooLarge)
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			http.Error(w, "body arrived too slowly", http.StatusRequestTimeout)
			return
		}
		http.Error(w, "could not store the upload", http.StatusInternalServerError)
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		http.Error(w, "could not store the upload", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

func (d *Dir) serveDownload(w http.ResponseWriter, r *http.Request) {
	name, q, ok := d.verify(r, http.MethodGet)
	if !ok {
		http.Error(w, "invalid or expired signature", http.StatusForbidden)
		return
	}
	p, _ := d.path(name)
	f, err := os.Open(p)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	// Served from Parley's own origin: never let a browser run it.
	h.Set("Content-Type", q.Get(paramRespType))
	h.Set("Content-Disposition", q.Get(paramRespDisp))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "private, no-store")
	http.ServeContent(w, r, "", st.ModTime(), f)
}
