package file

import (
	"fmt"
	"mime"
	"net/http"
	"strings"
)

// DefaultContentTypes is the allow-list used when none is configured:
// documents, images browsers render safely, and audio/video for recordings.
// Types that run script when opened (HTML, SVG, XML) are deliberately absent.
var DefaultContentTypes = []string{
	"text/plain", "text/markdown", "text/csv", "application/json", "application/pdf",
	"image/png", "image/jpeg", "image/gif", "image/webp",
	"audio/*", "video/mp4", "video/webm", "application/ogg",
}

// sniffLen is how many leading bytes http.DetectContentType looks at.
const sniffLen = 512

// ContentTypes is an allow-list of media types; an entry "audio/*" allows
// every audio type.
type ContentTypes struct {
	exact  map[string]bool
	prefix []string
}

// NewContentTypes parses an allow-list of media types ("text/plain",
// "audio/*").
func NewContentTypes(types []string) (ContentTypes, error) {
	ct := ContentTypes{exact: make(map[string]bool, len(types))}
	for _, t := range types {
		t = strings.ToLower(strings.TrimSpace(t))
		if t == "" {
			continue
		}
		if major, ok := strings.CutSuffix(t, "/*"); ok && major != "" && !strings.ContainsAny(major, "/*") {
			ct.prefix = append(ct.prefix, major+"/")
			continue
		}
		if mt, _, err := mime.ParseMediaType(t); err != nil || mt != t || strings.Count(t, "/") != 1 || strings.Contains(t, "*") {
			return ContentTypes{}, fmt.Errorf("content type %q: want type/subtype or type/*", t)
		}
		ct.exact[t] = true
	}
	return ct, nil
}

// Allows reports whether media type mt (without parameters) is allowed.
func (c ContentTypes) Allows(mt string) bool {
	if c.exact[mt] {
		return true
	}
	for _, p := range c.prefix {
		if strings.HasPrefix(mt, p) {
			return true
		}
	}
	return false
}

// aliases maps names clients use to the one http.DetectContentType answers.
var aliases = map[string]string{
	"audio/wav":         "audio/wave",
	"audio/x-wav":       "audio/wave",
	"audio/mp3":         "audio/mpeg",
	"application/x-pdf": "application/pdf",
}

// genericSniffs are the sniffer's answers for bytes it cannot tell apart
// (any text, any unknown binary), which a declaration may refine.
var genericSniffs = map[string]bool{"text/plain": true, "application/octet-stream": true}

// mediaType normalises a Content-Type value to its lower-case media type.
func mediaType(v string) (string, map[string]string, error) {
	mt, params, err := mime.ParseMediaType(v)
	if err != nil {
		return "", nil, err
	}
	if a, ok := aliases[mt]; ok {
		mt = a
	}
	return mt, params, nil
}

// checkDeclared checks a content type declared before any bytes exist
// (CreateUpload) and returns it normalised; "" means unknown binary.
func (c ContentTypes) checkDeclared(declared string) (string, error) {
	if strings.TrimSpace(declared) == "" {
		declared = "application/octet-stream"
	}
	mt, params, err := mediaType(declared)
	if err != nil {
		return "", invalid("content_type is not a valid media type")
	}
	if !c.Allows(mt) {
		return "", invalid(fmt.Sprintf("content type %q is not allowed", mt))
	}
	return formatType(mt, params), nil
}

// resolve decides a file's content type from its leading bytes and the
// client's declaration (possibly ""): the sniffed type when nothing was
// declared; the declared one when it agrees with the bytes or refines a
// generic sniff (JSON sniffs as text/plain, FLAC as octet-stream). The
// result must be on the allow-list. Disagreement is reported through bad,
// so CreateUpload's later check can answer failed_precondition instead.
func (c ContentTypes) resolve(head []byte, declared string, bad func(string) error) (string, error) {
	sniffed, sparams, _ := mediaType(http.DetectContentType(head[:min(len(head), sniffLen)]))
	ct := formatType(sniffed, sparams)
	if strings.TrimSpace(declared) != "" {
		mt, params, err := mediaType(declared)
		if err != nil {
			return "", invalid("content_type is not a valid media type")
		}
		if mt != sniffed && !genericSniffs[sniffed] {
			return "", bad(fmt.Sprintf("content type %q does not match the data (%s)", mt, sniffed))
		}
		if mt != sniffed {
			ct = formatType(mt, params)
		}
		sniffed = mt
	}
	if !c.Allows(sniffed) {
		return "", bad(fmt.Sprintf("content type %q is not allowed", sniffed))
	}
	return ct, nil
}

// formatType keeps only the charset parameter: it is the one that changes
// how a download reads.
func formatType(mt string, params map[string]string) string {
	if cs, ok := params["charset"]; ok {
		return mime.FormatMediaType(mt, map[string]string{"charset": strings.ToLower(cs)})
	}
	return mt
}
