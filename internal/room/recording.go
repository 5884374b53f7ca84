package room

import (
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxRecordingName is Azure's limit on a blob name, in bytes.
const maxRecordingName = 1024

// RecordingPrefix is the location Parley assigns to the recordings of the
// LiveKit room named liveKitRoom: egress must write them under it (LiveKit's
// filepath template "recordings/{room_name}/..." does). It lies outside
// Parley's own file namespace ({conversation id}/...), so a recording can
// never name a file's blob.
func RecordingPrefix(liveKitRoom string) string { return "recordings/" + liveKitRoom + "/" }

// inRecordingLocation reports whether name is a blob under the recording
// prefix of the room, in the one spelling that cannot climb out of it: no
// "." or ".." segment, no empty or hidden one, no backslash or control
// character.
func inRecordingLocation(liveKitRoom, name string) bool {
	rest, ok := strings.CutPrefix(name, RecordingPrefix(liveKitRoom))
	if !ok || rest == "" || len(name) > maxRecordingName || !utf8.ValidString(name) ||
		path.Clean(name) != name || strings.ContainsRune(name, '\\') || strings.ContainsFunc(name, unicode.IsControl) {
		return false
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg[0] == '.' {
			return false
		}
	}
	return true
}
