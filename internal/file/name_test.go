package file

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/keyset"
)

func TestSanitizeFilename(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 300) + ".txt"
	tests := []struct{ in, want string }{
		{"report.pdf", "report.pdf"},
		{"../../etc/passwd", "passwd"},
		{`C:\fakepath\photo.png`, "photo.png"},
		{"..", "file"},
		{"", "file"},
		{"/", "file"},
		{"  .hidden  ", "hidden"},
		{"a\x00b\x1bc\r\nd.txt", "abc d.txt"},
		{"invoice\u202Efdp.exe", "invoicefdp.exe"},
		{"two   spaces\tand tab", "two spaces and tab"},
		{"bad\xffutf8.txt", "badutf8.txt"},
		{"résumé.txt", "résumé.txt"},
	}
	for _, tt := range tests {
		if got := SanitizeFilename(tt.in); got != tt.want {
			t.Errorf("SanitizeFilename(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	got := SanitizeFilename(long)
	if len(got) > MaxFilenameBytes || !utf8.ValidString(got) || !strings.HasSuffix(got, ".txt") {
		t.Errorf("long name sanitised to %d bytes %q", len(got), got)
	}
}

func TestContentDisposition(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"passwd", "attachment; filename=passwd"},
		{"my file.txt", `attachment; filename="my file.txt"`},
		{`quote".txt`, `attachment; filename="quote\".txt"`},
		{"résumé.txt", "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.txt"},
	}
	for _, tt := range tests {
		if got := ContentDisposition(tt.in); got != tt.want {
			t.Errorf("ContentDisposition(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestContentTypes(t *testing.T) {
	t.Parallel()
	ct, err := NewContentTypes([]string{"text/plain", "audio/*", " IMAGE/PNG "})
	if err != nil {
		t.Fatal(err)
	}
	for mt, want := range map[string]bool{"text/plain": true, "audio/ogg": true, "image/png": true, "image/gif": false, "audiox/y": false, "text/html": false} {
		if got := ct.Allows(mt); got != want {
			t.Errorf("Allows(%q) = %v", mt, got)
		}
	}
	for _, bad := range []string{"*/*", "text", "text/plain; charset=utf-8", "a/b/c"} {
		if _, err := NewContentTypes([]string{bad}); err == nil {
			t.Errorf("NewContentTypes(%q) accepted", bad)
		}
	}
	if _, err := ct.checkDeclared("image/gif"); !errors.Is(err, ErrInvalid) {
		t.Errorf("checkDeclared(image/gif) = %v", err)
	}
	if got, err := ct.checkDeclared("Text/Plain; Charset=UTF-8; x=y"); err != nil || got != "text/plain; charset=utf-8" {
		t.Errorf("checkDeclared = %q, %v", got, err)
	}
	if got, err := ct.resolve([]byte("RIFF\x24\x00\x00\x00WAVEfmt "), "audio/x-wav", invalid); err != nil || got != "audio/wave" {
		t.Errorf("resolve(wav as audio/x-wav) = %q, %v", got, err)
	}
	if _, err := ct.resolve([]byte("\x89PNG\r\n\x1a\n"), "audio/ogg", mismatch); !errors.Is(err, ErrUploadMismatch) {
		t.Errorf("resolve(png declared audio) = %v, want ErrUploadMismatch", err)
	}
}

func TestListFilesRefusesOtherListsTokens(t *testing.T) {
	t.Parallel()
	// No store: a bad token must be refused before anything is read.
	s, err := NewService(nil, nil, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	user := auth.Principal{ID: uuid.New(), Kind: auth.KindUser}
	roomsToken := keyset.Encode(keyset.Rooms, keyset.Position{CreatedAt: time.Now(), ID: uuid.New()})
	for _, bad := range []string{"x", roomsToken, strings.Repeat("A", 100)} {
		if _, err := s.ListFiles(t.Context(), user, uuid.New(), 10, bad); !errors.Is(err, ErrInvalidPageToken) {
			t.Errorf("ListFiles(token %q) = %v, want ErrInvalidPageToken", bad, err)
		}
	}
}

func TestInNamespace(t *testing.T) {
	t.Parallel()
	conv, id := uuid.New(), uuid.New()
	for name, want := range map[string]bool{
		BlobName(conv, id):                                   true,
		BlobName(conv, id) + StagingSuffix:                   true,
		conv.String():                                        true,
		strings.ToUpper(BlobName(conv, id)):                  true,
		"/" + BlobName(conv, id):                             true,
		"./" + BlobName(conv, id):                            true,
		"recordings/../" + BlobName(conv, id):                true,
		`recordings\..\` + conv.String() + `\` + id.String(): true,
		"recordings/parley-" + conv.String() + "/EG_1.mp4":   false,
		"recordings/" + BlobName(conv, id):                   false,
		"EG_1.mp4":                                           false,
		"":                                                   false,
	} {
		if got := InNamespace(name); got != want {
			t.Errorf("InNamespace(%q) = %v, want %v", name, got, want)
		}
	}
}
