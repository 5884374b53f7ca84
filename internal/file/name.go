package file

import (
	"mime"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxFilenameBytes bounds a stored filename; longer ones are cut at a rune
// boundary, keeping the extension.
const MaxFilenameBytes = 255

// fallbackFilename names a file whose given name sanitises to nothing.
const fallbackFilename = "file"

// SanitizeFilename turns a client's filename into a safe display name: the
// last element of a path written with either separator, without control or
// formatting characters (bidi overrides that disguise an extension), with
// whitespace collapsed, no leading or trailing dots or spaces, and at most
// MaxFilenameBytes. The result never names storage; it is shown to people
// and put in Content-Disposition, so it need only be harmless there.
func SanitizeFilename(name string) string {
	name = strings.ToValidUTF8(name, "")
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	var b strings.Builder
	space := false
	for _, r := range name {
		switch {
		case unicode.IsSpace(r):
			space = true
			continue
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError:
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	name = strings.Trim(b.String(), ". ")
	if len(name) > MaxFilenameBytes {
		name = truncateKeepingExt(name, MaxFilenameBytes)
	}
	if name == "" {
		return fallbackFilename
	}
	return name
}

// truncateKeepingExt cuts name to at most max bytes at a rune boundary,
// keeping a short extension so the file still opens with the right program.
func truncateKeepingExt(name string, max int) string {
	if len(name) <= max {
		return name
	}
	ext := path.Ext(name)
	if len(ext) > 16 || len(ext) >= max {
		ext = ""
	}
	stem := name[:len(name)-len(ext)]
	limit := max - len(ext)
	for limit > 0 && !utf8.RuneStart(stem[limit]) {
		limit--
	}
	return strings.TrimRight(stem[:limit], ". ") + ext
}

// ContentDisposition returns an attachment Content-Disposition carrying
// filename: plain when it is printable ASCII, RFC 2231 encoded otherwise.
// Browsers then download the file under that name rather than render it.
func ContentDisposition(filename string) string {
	if v := mime.FormatMediaType("attachment", map[string]string{"filename": filename}); v != "" {
		return v
	}
	return "attachment"
}
