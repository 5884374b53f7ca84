package blobstore

import (
	"fmt"
	"strings"

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

func canonicalUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}
