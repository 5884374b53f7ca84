package file

import (
	"errors"
	"mime"
	"net/http"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// browserRun are types a browser runs or renders as a page, which the
// default allow-list must never let through, whatever is declared or sent.
var browserRun = []string{"text/html", "text/xml", "application/xml", "image/svg+xml", "application/xhtml+xml",
	"text/javascript", "application/javascript", "application/x-javascript", "text/css"}

// FuzzContentType drives an allow-list, a declared type and leading bytes
// through UploadFile's and CreateUpload's checks. Whatever they accept is a
// valid header value that parses to an allowed media type with at most a
// charset, is accepted again unchanged (CompleteUpload checks the stored
// type once more), and agrees with the bytes unless they sniff as
// generic; the default list never lets a type through that browsers run.
func FuzzContentType(f *testing.F) {
	for _, s := range []struct {
		head            []byte
		declared, allow string
	}{
		{[]byte("hello"), "", "text/plain,audio/*"},
		{[]byte("hello"), "Text/Plain; Charset=UTF-8; x=y", ""},
		{[]byte("{\"a\":1}"), "application/json", ""},
		{[]byte("<html><script>x</script>"), "text/plain", ""},
		{[]byte("<?xml version=\"1.0\"?><svg/>"), "image/svg+xml", "image/*"},
		{[]byte("RIFF\x24\x00\x00\x00WAVEfmt "), "audio/x-wav", ""},
		{[]byte("\x89PNG\r\n\x1a\n"), "audio/ogg", "*/*, audio/*, text"},
		{[]byte("fLaC\x00\x00\x00\x22"), "audio/flac", ""},
		{[]byte{0, 1, 2, 3}, "application/octet-stream", "application/octet-stream"},
		{[]byte("%PDF-1.7"), "application/x-pdf", ""},
		{[]byte("hi"), "text/plain; charset=\"\x00\x7f é\"", ""},
		{[]byte("hi"), "text/plain; charset*=utf-8''%00%0d%0a", ""},
		{[]byte("hi"), "text/plain; charset=utf-8; charset=latin1", ""},
	} {
		f.Add(s.head, s.declared, s.allow)
	}
	defaults, err := NewContentTypes(DefaultContentTypes)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, head []byte, declared, allow string) {
		lists := []ContentTypes{defaults}
		entries := strings.Split(allow, ",")
		if custom, err := NewContentTypes(entries); err == nil {
			for _, e := range entries {
				e = strings.ToLower(strings.TrimSpace(e))
				if major, ok := strings.CutSuffix(e, "/*"); ok && !custom.Allows(major+"/x-anything") ||
					!ok && e != "" && !custom.Allows(e) {
					t.Fatalf("NewContentTypes(%q) accepted %q but does not allow it", entries, e)
				}
			}
			lists = append(lists, custom)
		}
		sniffed, _, _ := mime.ParseMediaType(http.DetectContentType(head[:min(len(head), sniffLen)]))
		for i, types := range lists {
			if ct, err := types.checkDeclared(declared); err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("checkDeclared(%q) = %v, want ErrInvalid", declared, err)
				}
			} else {
				checkType(t, "checkDeclared", types, ct, i == 0)
				if again, err := types.checkDeclared(ct); err != nil || again != ct {
					t.Fatalf("checkDeclared(%q) = %q, which checks as %q, %v", declared, ct, again, err)
				}
				// CompleteUpload resolves the stored type against the bytes:
				// it may disagree with them, never be unreadable.
				if _, err := types.resolve(head, ct, mismatch); err != nil && !errors.Is(err, ErrUploadMismatch) {
					t.Fatalf("resolve(%q) of a declared type = %v, want nil or ErrUploadMismatch", ct, err)
				}
			}

			ct, err := types.resolve(head, declared, invalid)
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("resolve(%q) = %v, want ErrInvalid", declared, err)
				}
				continue
			}
			checkType(t, "resolve", types, ct, i == 0)
			if mt, _, _ := mediaType(ct); mt != sniffed && !genericSniffs[sniffed] {
				t.Fatalf("resolve(%q) = %q for bytes that sniff as %s", declared, ct, sniffed)
			}
			if again, err := types.resolve(head, ct, invalid); err != nil || again != ct {
				t.Fatalf("resolve(%q) = %q, which resolves as %q, %v", declared, ct, again, err)
			}
		}
	})
}

func checkType(t *testing.T, op string, types ContentTypes, ct string, defaults bool) {
	t.Helper()
	if !validHeaderValue(ct) || !utf8.ValidString(ct) || strings.ContainsRune(ct, 0) {
		t.Fatalf("%s gave %q, not a header value PostgreSQL text can hold", op, ct)
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !types.Allows(mt) {
		t.Fatalf("%s gave %q: media type %q (%v) is not allowed", op, ct, mt, err)
	}
	if _, ok := params["charset"]; len(params) > 1 || len(params) == 1 && !ok {
		t.Fatalf("%s gave %q: only a charset may stay", op, ct)
	}
	if defaults {
		for _, bad := range browserRun {
			if mt == bad {
				t.Fatalf("%s gave %q under the default list", op, ct)
			}
		}
	}
}

// FuzzSanitizeFilename checks that a sanitised filename is a harmless
// display name (one path element, valid UTF-8, no control or format
// characters, no leading or trailing dots or spaces, at most
// MaxFilenameBytes, never empty), that sanitising it again changes
// nothing, and that its Content-Disposition carries it unchanged.
func FuzzSanitizeFilename(f *testing.F) {
	for _, s := range []string{
		"report.pdf", "../../etc/passwd", `C:\fakepath\photo.png`, "..", "", "  .hidden  ",
		"a\x00b\x1bc\r\nd.txt", "invoice\u202Efdp.exe", "bad\xffutf8.txt", "résumé.txt", `quote".txt`,
		strings.Repeat("é", 300) + ".txt", strings.Repeat("a", 250) + " . .txt", strings.Repeat(".", 300) + "x.md",
		"semi;colon=1.txt", "percent%20.txt", "tab\tname", "\u00a0nbsp\u00a0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got := SanitizeFilename(in)
		if got == "" || len(got) > MaxFilenameBytes || !utf8.ValidString(got) || strings.ContainsAny(got, `/\`) {
			t.Fatalf("SanitizeFilename(%q) = %q", in, got)
		}
		if strings.Trim(got, ". ") != got {
			t.Fatalf("SanitizeFilename(%q) = %q: leading or trailing dot or space", in, got)
		}
		for _, r := range got {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || unicode.IsSpace(r) && r != ' ' {
				t.Fatalf("SanitizeFilename(%q) = %q: holds %U", in, got, r)
			}
		}
		if again := SanitizeFilename(got); again != got {
			t.Fatalf("SanitizeFilename(%q) = %q, then %q", in, got, again)
		}
		cd := ContentDisposition(got)
		if !validHeaderValue(cd) {
			t.Fatalf("ContentDisposition(%q) = %q, not a header value", got, cd)
		}
		if disp, params, err := mime.ParseMediaType(cd); err != nil || disp != "attachment" || params["filename"] != got {
			t.Fatalf("ContentDisposition(%q) = %q, which reads back as %q %q (%v)", got, cd, disp, params["filename"], err)
		}
	})
}

// validHeaderValue reports whether v can be sent as an HTTP header value
// as it is: no control characters but tab.
func validHeaderValue(v string) bool {
	return !strings.ContainsFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f })
}
