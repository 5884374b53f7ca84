package room

import "time"

// EventKind is the sort of a LiveKit webhook event Parley acts on.
type EventKind int

const (
	// EventOther is any event Parley ignores.
	EventOther EventKind = iota
	// EventRoomStarted: LiveKit opened the room. It never reopens an ended room.
	EventRoomStarted
	// EventRoomFinished: LiveKit closed the room; the Parley room ends.
	EventRoomFinished
	// EventParticipantJoined: a participant session began.
	EventParticipantJoined
	// EventParticipantLeft: a participant session ended (left or aborted).
	EventParticipantLeft
	// EventEgressEnded: a recording finished; its files are queued to
	// become files of kind RECORDING of the room's conversation.
	EventEgressEnded
	// EventTrackPublished: a participant published a track.
	EventTrackPublished
	// EventEgressStarted and EventEgressUpdated: a recording's state.
	EventEgressStarted
	EventEgressUpdated
)

// Event is a verified LiveKit webhook event, reduced to what Parley uses.
type Event struct {
	// ID is LiveKit's event id, the key that makes delivery idempotent.
	ID   string
	Kind EventKind
	// LiveKitRoom is the LiveKit room name the event is about.
	LiveKitRoom string
	// RoomSID is LiveKit's sid of that room. An event changes a Parley room
	// only when both its name and sid match what Parley stored.
	RoomSID string
	// At is when LiveKit created the event.
	At time.Time
	// Participant is set for participant events.
	Participant Participant
	// EgressID is the egress an egress event is about.
	EgressID string
	// Egress is the egress's state an egress event reports; for
	// egress_ended, LiveKit's API's.
	Egress EgressState
	// Track is the track of a track_published event.
	Track Track
	// Recordings are the finished files of an egress_ended event. The
	// webhook's claim is never trusted: Service.ApplyEvent replaces them
	// with what LiveKit's API says of the egress.
	Recordings []Recording
}

// Participant is one participant session in a room. A participant who
// rejoins gets a new session id.
type Participant struct {
	// SessionID is LiveKit's participant sid.
	SessionID string
	Identity  string
	Name      string
	Kind      ParticipantKind
}

// Recording is a file written by LiveKit egress into Parley's blob
// container, under the room's RecordingPrefix. Parley copies the blob to the
// file's own name, then deletes egress's.
type Recording struct {
	EgressID string
	// BlobName is the name egress wrote the file under (its filepath).
	BlobName string
	// Location is the file's URL as egress reports it, for the logs.
	Location string
	// Filename is the display name: the blob name's last element.
	Filename  string
	SizeBytes int64
	// ContentType is derived from the file name's extension.
	ContentType string
}

// Egress is a LiveKit egress as LiveKit's own API describes it.
type Egress struct {
	ID       string
	RoomName string
	// RoomSID is the sid of the room it records.
	RoomSID string
	// Recordings are the files it finished writing: none unless it
	// completed (or stopped at its limit, having written its file).
	Recordings []Recording
	State      EgressState
}

// Session is a participant session as webhooks recorded it. Either time may
// be zero: LiveKit may deliver the leave before the join.
type Session struct {
	Participant
	JoinedAt time.Time
	LeftAt   time.Time
}

// Present reports whether the participant is in the room: joined and not
// (yet known to have) left.
func (s Session) Present() bool { return !s.JoinedAt.IsZero() && s.LeftAt.IsZero() }
