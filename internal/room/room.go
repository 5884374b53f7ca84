// Package room holds Parley's rooms: a LiveKit room together with the
// conversation recorded in it. It decides who may create, join and end a room,
// what LiveKit is told about it, and how LiveKit's webhook events change it.
// It knows nothing of SQL, protos or the LiveKit SDK; the adapters implement
// the interfaces declared here.
package room

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/parley-dev/parley/internal/keyset"
)

// Status is a room's life-cycle state. The values are stored in the database.
type Status int16

const (
	// StatusActive rooms may be joined.
	StatusActive Status = 1
	// StatusEnded rooms are over for good: nothing reopens them.
	StatusEnded Status = 2
)

// Room is a LiveKit room together with the conversation recorded in it.
type Room struct {
	ID   uuid.UUID
	Name string
	// ConversationID is uuid.Nil once the conversation has been deleted.
	ConversationID uuid.UUID
	// LiveKitRoom is the room's name on the LiveKit server. It is derived
	// from the room id only, never from user input.
	LiveKitRoom string
	// LiveKitSID is LiveKit's sid of the room, "" until Parley learns it.
	LiveKitSID string
	Status     Status
	CreatedBy  uuid.UUID
	CreatedAt  time.Time
	// EndedAt is the zero time while the room is active.
	EndedAt time.Time
	// AgentName is the agent dispatched into the room. "" is the
	// configured default: rooms made before agents were named, or by an
	// older replica, dispatch whichever agent is configured.
	AgentName string
	// AgentMetadata is the caller's string for the agent, passed on in
	// the dispatch metadata; "" for none.
	AgentMetadata string
	// ResumeSeq is the seq of the conversation's last item when the room
	// resumed it: the agent restores the conversation up to there. 0 for
	// a room that started its conversation (or resumed an empty one).
	ResumeSeq int64
}

// Ended reports whether the room is over.
func (r Room) Ended() bool { return r.Status == StatusEnded }

// JoinInfo is what a client needs to connect to a room on LiveKit.
type JoinInfo struct {
	URL       string
	Token     string
	ExpiresAt time.Time
}

// Spec is what LiveKit is told about a room, both when Parley creates it and
// in every join token (so that LiveKit creates it the same way on first join
// when Parley could not reach it).
type Spec struct {
	// Name is the LiveKit room name.
	Name string
	// Metadata is the room metadata: {"conversation_id": "..."}.
	Metadata string
	// AgentName is the agent to dispatch; "" is the adapter's default
	// (PARLEY_LIVEKIT_AGENT_NAME), none if it has none.
	AgentName string
	// DispatchMetadata is the agent's job metadata (see DispatchMetadata);
	// "" means Metadata.
	DispatchMetadata string
}

// Grant is who a join token is for.
type Grant struct {
	// Identity is the participant identity: the user id.
	Identity string
	// Name is the participant's display name.
	Name string
	// Metadata and Attributes are the participant's, as the token
	// endpoint's caller asked; empty for none.
	Metadata   string
	Attributes map[string]string
}

// MediaServer is the media server (LiveKit), as the room service uses it. Implementations
// bound their own calls in time: CreateRoom and DeleteRoom may fail, and the
// service treats such failures as recoverable.
type MediaServer interface {
	// CreateRoom creates the room (with its metadata) and, when an agent is
	// configured, dispatches the agent into it. It returns the room's sid
	// whenever LiveKit answered with one, even if the dispatch then failed.
	CreateRoom(ctx context.Context, s Spec) (sid string, err error)
	// DeleteRoom deletes the room, disconnecting everyone. A room LiveKit
	// does not know is not an error.
	DeleteRoom(ctx context.Context, name string) error
	// JoinToken signs an access token that lets g join exactly the room of s
	// and carries the room's configuration.
	JoinToken(s Spec, g Grant) (JoinInfo, error)
	// Egress asks LiveKit's API about egress id of the room named room:
	// ErrEgressNotFound if LiveKit knows no such egress of that room.
	Egress(ctx context.Context, room, id string) (Egress, error)
	// ListRooms returns those of the named rooms LiveKit has open.
	ListRooms(ctx context.Context, names []string) ([]LiveRoom, error)
}

// NewRoom is a room for the store to create with its conversation.
type NewRoom struct {
	ID             uuid.UUID
	Name           string
	ConversationID uuid.UUID
	LiveKitRoom    string
	CreatedBy      uuid.UUID
	AgentName      string
	AgentMetadata  string
	// Resume says ConversationID is an existing conversation of CreatedBy
	// to resume rather than one to create.
	Resume bool
}

// Cursor is where a ListRooms page continues: strictly older than
// (CreatedAt, ID) in (created_at DESC, id DESC) order.
type Cursor = keyset.Position

// Page is one page of ListRooms.
type Page struct {
	Rooms []Room
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// Store is the persistence the room service needs. Calls taking an owner
// answer ErrNotFound for a room that does not exist or belongs to someone
// else, so callers cannot tell the two apart.
type Store interface {
	// CreateRoom stores the room and its conversation (owned by CreatedBy,
	// titled Name, linked to the room) in one transaction. With r.Resume
	// it creates no conversation: it links CreatedBy's conversation
	// ConversationID to the new room (its room_id names the newest room)
	// and sets the room's ResumeSeq to the conversation's last item seq,
	// read under the conversation's row lock. A conversation that does not
	// exist or is someone else's is conversation.ErrNotFound; one with an
	// active room is ErrConversationLive.
	CreateRoom(ctx context.Context, r NewRoom) (Room, error)
	Room(ctx context.Context, id, owner uuid.UUID) (Room, error)
	// ListRooms returns up to limit of owner's rooms, newest first, strictly
	// after cursor (nil for the first page).
	ListRooms(ctx context.Context, owner uuid.UUID, after *Cursor, limit int) ([]Room, error)
	// EndRoom marks the room ended at now unless it already is, and returns
	// it; ended reports whether this call ended it.
	EndRoom(ctx context.Context, id, owner uuid.UUID, now time.Time) (r Room, ended bool, err error)
	// DisplayName returns a user's display name, for join tokens.
	DisplayName(ctx context.Context, userID uuid.UUID) (string, error)
	// SetLiveKitSID stores the sid LiveKit answered CreateRoom with.
	SetLiveKitSID(ctx context.Context, id uuid.UUID, sid string) error
	// ApplyEvent applies a LiveKit webhook event exactly once per event id,
	// in one transaction with the record of its id. It changes only the
	// room with both e's LiveKit name and sid, except that a room_started
	// gives its sid to a room that has none yet.
	ApplyEvent(ctx context.Context, e Event) (EventResult, error)
	// PruneEvents forgets the applied event ids received before before,
	// and returns how many.
	PruneEvents(ctx context.Context, before time.Time) (int64, error)

	// Call returns the call of room id; owner uuid.Nil reads anyone's.
	Call(ctx context.Context, id, owner uuid.UUID) (Call, error)
	// SaveReport stores report as call id's session report, received at
	// at, replacing an earlier one, with m, its metrics (samples and usage
	// included), in one transaction; a room that does not exist is
	// ErrNotFound. Calls read back carry m's figures, Latencies and Usage,
	// not its Samples.
	SaveReport(ctx context.Context, id uuid.UUID, report []byte, m CallMetrics, at time.Time) error
	// DueMetrics returns the ids of up to limit calls whose reports'
	// metrics are not stored (stored before metrics were, or by an older
	// replica), in id order after the id after.
	DueMetrics(ctx context.Context, after uuid.UUID, limit int) ([]uuid.UUID, error)
	// FillMetrics, in one transaction, reads call id's report if its
	// metrics are still not stored and no other transaction holds the
	// call, and stores derive's metrics of it (nil: the report yields
	// none). It returns whether it did: false when nothing was due or
	// another replica holds the call.
	FillMetrics(ctx context.Context, id uuid.UUID, derive func(report []byte) *CallMetrics) (bool, error)
	// AggregateCalls returns the groups g makes of the calls matching f
	// (owner uuid.Nil: everyone's), by agent name then bucket start, at
	// most limit of them. Only stored metrics count.
	AggregateCalls(ctx context.Context, owner uuid.UUID, f CallFilter, g CallGrouping, limit int) ([]CallGroup, error)
	// ListCalls returns up to limit calls matching f, newest first,
	// strictly after cursor; owner uuid.Nil lists everyone's.
	ListCalls(ctx context.Context, owner uuid.UUID, f CallFilter, after *Cursor, limit int) ([]Call, error)
	// OpenCalls returns up to limit live calls (started, not ended) in id
	// order after the id after (uuid.Nil: from the first).
	OpenCalls(ctx context.Context, after uuid.UUID, limit int) ([]OpenCall, error)
	// SeeCalls records that LiveKit listed the rooms of the calls at at.
	SeeCalls(ctx context.Context, ids []uuid.UUID, at time.Time) error
	// CloseCalls ends those of the calls still open and last seen before
	// seenBefore, for reason, ending their rooms too, and returns the ids
	// it closed. A later room_finished still sets the call's end.
	CloseCalls(ctx context.Context, ids []uuid.UUID, reason EndReason, seenBefore, now time.Time) ([]uuid.UUID, error)
}

// EventResult is what applying a webhook event did.
type EventResult struct {
	// Applied is false when the event id had been applied before, by any
	// replica, and nothing was done this time.
	Applied bool
	// Matched reports whether a room had both the event's LiveKit name and
	// sid, and so took the event.
	Matched bool
	// Room is the Parley room with the event's LiveKit name, after the
	// event, matched or not; its ID is uuid.Nil when there is none.
	Room Room
	// Call is what the event did to the room's call.
	Call CallChange
}
