package blobstore

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/file"
)

// errBadName refuses a name file.BlobName or file.StagingBlobName could not
// have made. It is a programming error, never a client's: names come from
// server ids.
var errBadName = fmt.Errorf("blobstore: blob name must be {conversation uuid}/{file uuid}[%s]: %w", file.StagingSuffix, file.ErrInvalidBlobName)

// checkName accepts exactly "{uuid}/{uuid}", optionally followed by
// file.StagingSuffix, in canonical lower-case form, so a name can neither
// climb out of the container or directory nor alias another blob.
func checkName(name string) error {
	conv, id, ok := strings.Cut(name, "/")
	id, _ = strings.CutSuffix(id, file.StagingSuffix)
	if !ok || !canonicalUUID(conv) || !canonicalUUID(id) {
		return errBadName
	}
	return nil
}

// maxSourceName is Azure's limit on a blob name, in bytes.
const maxSourceName = 1024

// errBadSourceName refuses a name that would leave the container or
// directory, or reach the directory store's own files.
var errBadSourceName = fmt.Errorf("blobstore: blob name must be relative, of non-empty segments not starting with '.', without backslashes or control characters: %w", file.ErrInvalidBlobName)

// checkSourceName accepts the names Copy may read from and Delete remove:
// Parley's own, and those another writer (LiveKit egress) chose inside the
// container, so long as they stay inside it. Segments may not start with
// '.': that refuses "." and "..", and the directory store's key and
// temporary files.
func checkSourceName(name string) error {
	if checkName(name) == nil {
		return nil
	}
	if name == "" || len(name) > maxSourceName || !utf8.ValidString(name) || strings.ContainsRune(name, '\\') {
		return errBadSourceName
	}
	for seg := range strings.SplitSeq(name, "/") {
		if seg == "" || seg[0] == '.' || strings.ContainsFunc(seg, unicode.IsControl) {
			return errBadSourceName
		}
	}
	return nil
}

func canonicalUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}
