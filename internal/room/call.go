package room

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/keyset"
)

// A Call is a room's life on LiveKit: who was there and when, what was
// recorded, and what the agent reported. A Parley room has one LiveKit life
// (an ended room is never reopened, and events under another sid are
// refused), so a call is identified by its room's id.
//
// LiveKit promises neither delivery nor order of its webhooks, so every
// event's effect on a call is a join in a semilattice: times are the least
// or greatest of the events' own times, statuses only move forward by rank,
// and each participant session is keyed by its sid. Applying any
// permutation of a set of events, with any duplicates, gives one record.

// CallStatus is where a call is in its life.
type CallStatus int16

const (
	// CallPending: the room exists but no event has shown it running.
	CallPending CallStatus = 1
	// CallLive: an event showed the room running and nothing ended it.
	CallLive CallStatus = 2
	// CallEnded: the room finished, was ended, or LiveKit no longer has it.
	CallEnded CallStatus = 3
)

// EndReason says why a call ended. The values are ranked and stored: when
// several apply, the greatest is the call's, whatever order they came in.
type EndReason int16

const (
	// EndNone: the call has not ended.
	EndNone EndReason = 0
	// EndStale: nothing was heard of the call for MaxCallSilence and
	// LiveKit could not be asked about it.
	EndStale EndReason = 1
	// EndRoomGone: LiveKit no longer lists the room (the reconciliation
	// job found it gone, its room_finished lost).
	EndRoomGone EndReason = 2
	// EndRoomEnded: EndRoom ended the room.
	EndRoomEnded EndReason = 3
	// EndRoomFinished: LiveKit's room_finished said so.
	EndRoomFinished EndReason = 4
)

// ParticipantKind is who a participant is. The values are stored; a
// greater one wins if two events disagree.
type ParticipantKind int16

const (
	// KindUnknown: no event named the kind (rows older than kinds).
	KindUnknown ParticipantKind = 0
	// KindUser is a person: a Parley user or a SIP caller.
	KindUser ParticipantKind = 1
	// KindOther is LiveKit's own machinery: egress and ingress.
	KindOther ParticipantKind = 2
	// KindAgent is an agent (LiveKit's AGENT kind, or an identity
	// starting with "agent-").
	KindAgent ParticipantKind = 3
)

// EgressStatus is a recording's state as LiveKit reports it. The values are
// stored; their rank (every terminal state ranks alike) orders updates.
type EgressStatus int16

const (
	EgressUnknown      EgressStatus = 0
	EgressStarting     EgressStatus = 1
	EgressActive       EgressStatus = 2
	EgressEnding       EgressStatus = 3
	EgressComplete     EgressStatus = 4
	EgressFailed       EgressStatus = 5
	EgressAborted      EgressStatus = 6
	EgressLimitReached EgressStatus = 7
)

// MaxCallSilence is how long a call may go unheard of (no event, and no
// sighting by the reconciliation job) while LiveKit cannot be asked,
// before the job closes it as EndStale: a call left open by a crash or a
// lost room_finished is never counted live forever.
const MaxCallSilence = 24 * time.Hour

// Call is one room's life on LiveKit.
type Call struct {
	// ID is the room's id.
	ID             uuid.UUID
	RoomName       string
	ConversationID uuid.UUID
	LiveKitRoom    string
	LiveKitSID     string
	CreatedBy      uuid.UUID
	AgentName      string
	Status         CallStatus
	// CreatedAt is when the room was created: the list's order.
	CreatedAt time.Time
	// StartedAt is the earliest event showing the room running; zero while
	// none has.
	StartedAt time.Time
	// EndedAt is when the call ended: room_finished's time, else the last
	// time anything was heard of it, else when EndRoom ended the room.
	EndedAt   time.Time
	EndReason EndReason
	// LastSeenAt is the latest event's time or sighting by the
	// reconciliation job.
	LastSeenAt   time.Time
	Participants []CallParticipant
	Egresses     []CallEgress
	// Report is the agent's session report as JSON, nil until the agent
	// reports (ReportSession); ReportedAt is when it arrived. Store.Call
	// reads it; Store.ListCalls only where Metrics must still be derived
	// from it (a page of reports could be many megabytes).
	Report     []byte
	ReportedAt time.Time
	// Metrics are the report's, as stored with it; nil until it arrives.
	// The service derives them from Report when the store has none yet
	// (a report stored before they were, see BackfillMetrics).
	Metrics *CallMetrics
}

// CallParticipant is one participant session of a call.
type CallParticipant struct {
	Session
	Tracks []Track
}

// Track is a track a participant published.
type Track struct {
	SID string
	// Type is LiveKit's track type in lower case: "audio", "video", "data".
	Type string
	// Source is LiveKit's track source in lower case: "microphone",
	// "camera", "screen_share", ...; "" if unknown.
	Source      string
	PublishedAt time.Time
}

// CallEgress is one egress (recording) of a call.
type CallEgress struct {
	ID        string
	Status    EgressStatus
	StartedAt time.Time
	EndedAt   time.Time
	// Files are the recordings LiveKit confirmed it wrote; FileID is the
	// file of the conversation each becomes (uuid.Nil when the
	// conversation was deleted first).
	Files []CallFile
}

// CallFile is a file an egress wrote.
type CallFile struct {
	FileID      uuid.UUID
	Filename    string
	ContentType string
	SizeBytes   int64
}

// EgressState is what an egress event says of its egress, LiveKit's
// times included, so that the latest state wins whatever order the
// events come in.
type EgressState struct {
	Status    EgressStatus
	StartedAt time.Time
	EndedAt   time.Time
	// UpdatedAt is LiveKit's time of this state; it orders states of
	// equal rank.
	UpdatedAt time.Time
}

// CallChange is what one event did to a call's status, computed inside
// the transaction that applied it: the hook for outbound call.started and
// call.ended events, which belong in that same transaction.
type CallChange struct {
	// Started: the call was pending and an event showed it running.
	Started bool
	// Ended: the call was not ended and is now.
	Ended bool
}

// CallFilter narrows ListCalls. Zero fields do not filter.
type CallFilter struct {
	// CreatedAfter and CreatedBefore bound the room's creation time:
	// [CreatedAfter, CreatedBefore).
	CreatedAfter, CreatedBefore time.Time
	Status                      CallStatus
	// AgentName selects calls dispatching this agent. DefaultAgent is set
	// when it is the configured default, which rooms naming no agent
	// dispatch too.
	AgentName    string
	DefaultAgent bool
	// Metadata selects calls whose conversation's metadata holds every
	// pair.
	Metadata map[string]string
}

// CallPage is one page of ListCalls.
type CallPage struct {
	Calls []Call
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// LiveRoom is a room LiveKit lists.
type LiveRoom struct {
	Name string
	SID  string
}

// OpenCall is a call the reconciliation job checks.
type OpenCall struct {
	ID          uuid.UUID
	LiveKitRoom string
	LiveKitSID  string
	LastSeenAt  time.Time
}

// GetCall returns the call of room id: one of p's rooms for a user, any
// room for an agent (which runs the calls).
func (s *Service) GetCall(ctx context.Context, p auth.Principal, id uuid.UUID) (Call, error) {
	owner, err := callReader(p)
	if err != nil {
		return Call{}, err
	}
	c, err := s.store.Call(ctx, id, owner)
	if err != nil {
		return Call{}, err
	}
	return s.callWithAgent(c), nil
}

// ListCalls lists the calls p may read that match f, newest first.
func (s *Service) ListCalls(ctx context.Context, p auth.Principal, f CallFilter, pageSize int, pageToken string) (CallPage, error) {
	owner, err := callReader(p)
	if err != nil {
		return CallPage{}, err
	}
	pageSize, err = pageSizeOf(pageSize)
	if err != nil {
		return CallPage{}, err
	}
	if !f.CreatedAfter.IsZero() && !f.CreatedBefore.IsZero() && !f.CreatedAfter.Before(f.CreatedBefore) {
		return CallPage{}, invalid("created_after must be before created_before")
	}
	switch f.Status {
	case 0, CallPending, CallLive, CallEnded:
	default:
		return CallPage{}, invalid("unknown call status")
	}
	f.DefaultAgent = f.AgentName != "" && f.AgentName == s.agentName
	after, err := keyset.Decode(keyset.Calls, pageToken)
	if err != nil {
		return CallPage{}, err
	}
	cs, err := s.store.ListCalls(ctx, owner, f, after, pageSize+1)
	if err != nil {
		return CallPage{}, err
	}
	var page CallPage
	page.Calls, page.NextPageToken = keyset.Page(keyset.Calls, cs, pageSize, func(c Call) Cursor {
		return Cursor{CreatedAt: c.CreatedAt, ID: c.ID}
	})
	for i, c := range page.Calls {
		page.Calls[i] = s.callWithAgent(c)
	}
	return page, nil
}

// callReader is whose calls p may read: a user its own, an agent
// everyone's (uuid.Nil).
func callReader(p auth.Principal) (uuid.UUID, error) {
	switch {
	case p.IsAgent():
		return uuid.Nil, nil
	case !p.IsUser() || p.ID == uuid.Nil:
		return uuid.Nil, auth.ErrUnauthenticated
	}
	return p.ID, nil
}

// callWithAgent completes a call read from the store: its agent, and its
// metrics if the store has none for its report.
func (s *Service) callWithAgent(c Call) Call {
	c.AgentName = s.agentNameOf(c)
	if c.Metrics == nil && c.Report != nil {
		c.Metrics = metricsOf(c.Report)
	}
	return c
}

// agentNameOf is c's agent, or the configured one when c names none:
// callWithAgent's default without its deriving of metrics from the
// stored report, which parses up to MaxReportBytes.
func (s *Service) agentNameOf(c Call) string {
	if c.AgentName == "" {
		return s.agentName
	}
	return c.AgentName
}

// CallEventData is the data of the call.started and call.ended outbound
// webhook events: the call as it stood when the event was written, in the
// transaction that started or ended it. Its JSON is a contract with
// customers' receivers (see the README): fields may be added, never
// renamed.
type CallEventData struct {
	// CallID is the room's id, as every call's is.
	CallID         uuid.UUID `json:"call_id"`
	RoomName       string    `json:"room_name"`
	LiveKitRoom    string    `json:"livekit_room"`
	ConversationID string    `json:"conversation_id"`
	// Status is "pending", "live" or "ended". A call.ended's is "ended";
	// a call.started's may be too when LiveKit's events came reordered.
	Status    string     `json:"status"`
	CreatedAt time.Time  `json:"created_at"`
	StartedAt *time.Time `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at"`
	// EndReason is "stale", "room_gone", "room_ended" or "room_finished";
	// "" while the call has not ended.
	EndReason string `json:"end_reason"`
}

// NewCallEventData returns c's event data.
func NewCallEventData(c Call) CallEventData {
	d := CallEventData{
		CallID: c.ID, RoomName: c.RoomName, LiveKitRoom: c.LiveKitRoom,
		Status: c.Status.name(), CreatedAt: c.CreatedAt.UTC(), EndReason: c.EndReason.name(),
		StartedAt: optionalTime(c.StartedAt), EndedAt: optionalTime(c.EndedAt),
	}
	if c.ConversationID != uuid.Nil {
		d.ConversationID = c.ConversationID.String()
	}
	return d
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// name is the status as event data spells it.
func (s CallStatus) name() string {
	switch s {
	case CallPending:
		return "pending"
	case CallLive:
		return "live"
	case CallEnded:
		return "ended"
	}
	return ""
}

// name is the reason as event data spells it.
func (r EndReason) name() string {
	switch r {
	case EndStale:
		return "stale"
	case EndRoomGone:
		return "room_gone"
	case EndRoomEnded:
		return "room_ended"
	case EndRoomFinished:
		return "room_finished"
	}
	return ""
}
