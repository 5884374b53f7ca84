package room

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/keyset"
)

// Limits of the rules the service enforces. The proto schema checks the
// same shape at the edge; the domain re-checks because it owns the rules.
const (
	MaxNameChars = 100
	// MaxAgentNameChars and MaxAgentMetadataBytes bound what CreateRoom
	// passes on to LiveKit's dispatch.
	MaxAgentNameChars     = 128
	MaxAgentMetadataBytes = 65536
	DefaultPageSize       = 50
	MaxPageSize           = 200

	// LiveKitRoomPrefix starts the LiveKit name of every Parley room.
	// Webhook events about other rooms (a LiveKit server may be shared) are
	// ignored.
	LiveKitRoomPrefix = "parley-"

	defaultDeleteAttempts = 5
	defaultDeleteBackoff  = 500 * time.Millisecond
)

// Options are the optional settings of a Service.
type Options struct {
	Log *slog.Logger
	// DeleteAttempts bounds how often a LiveKit room deletion is tried
	// (default 5).
	DeleteAttempts int
	// DeleteBackoff is the first pause between deletion attempts; it
	// doubles after each (default 500ms).
	DeleteBackoff time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AgentName is the agent dispatched into a room whose CreateRoom names
	// none: PARLEY_LIVEKIT_AGENT_NAME, the LiveKit adapter's default too.
	// Rooms that name none report it as theirs.
	AgentName string
	// RecordingsQueued is called after an egress_ended event queued
	// recordings for import, to start the file outbox worker at once
	// (file.Worker.Wake); nil leaves them to its poll.
	RecordingsQueued func()
}

// Service is the room use cases. It is safe for concurrent use. Close it at
// shutdown: it stops the background LiveKit deletions it started.
type Service struct {
	store          Store
	lk             MediaServer
	log            *slog.Logger
	now            func() time.Time
	deleteAttempts int
	deleteBackoff  time.Duration
	queued         func()
	agentName      string

	// bg is the lifetime of background work: cancelled by Close, so no
	// retry outlives the process's shutdown.
	bg       context.Context
	cancelBG context.CancelFunc
	mu       sync.Mutex
	closed   bool
	wg       sync.WaitGroup
}

// NewService returns a Service over store and the LiveKit server lk.
func NewService(store Store, lk MediaServer, opts Options) *Service {
	s := &Service{
		store:          store,
		lk:             lk,
		log:            opts.Log,
		now:            opts.Now,
		deleteAttempts: opts.DeleteAttempts,
		deleteBackoff:  opts.DeleteBackoff,
		queued:         opts.RecordingsQueued,
		agentName:      opts.AgentName,
	}
	if s.queued == nil {
		s.queued = func() {}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.deleteAttempts <= 0 {
		s.deleteAttempts = defaultDeleteAttempts
	}
	if s.deleteBackoff <= 0 {
		s.deleteBackoff = defaultDeleteBackoff
	}
	// Background work must not be tied to the request that started it;
	// Close is what ends it.
	s.bg, s.cancelBG = context.WithCancel(context.Background())
	return s
}

// Close cancels pending LiveKit deletions and waits for them to return.
// Rooms stay ended; LiveKit closes an empty room by itself.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancelBG()
	s.wg.Wait()
}

// userOnly refuses agents: rooms are user-scoped.
func userOnly(p auth.Principal) error {
	switch {
	case p.IsAgent():
		return auth.ErrPermissionDenied
	case !p.IsUser() || p.ID == uuid.Nil:
		return auth.ErrUnauthenticated
	}
	return nil
}

// Request is what CreateRoom is asked for.
type Request struct {
	Name string
	// AgentName is the agent to dispatch; "" is Options.AgentName.
	AgentName string
	// AgentMetadata goes into the dispatch metadata as agent_metadata.
	AgentMetadata string
	// ConversationID, when set, is a conversation of the caller's to
	// resume in the new room instead of starting one.
	ConversationID uuid.UUID
}

// CreateRoom creates a room owned by p with a new conversation and the
// default agent; see Create.
func (s *Service) CreateRoom(ctx context.Context, p auth.Principal, name string) (Room, JoinInfo, error) {
	return s.Create(ctx, p, Request{Name: name})
}

// Create creates a room owned by p, with a new conversation or resuming
// one of p's (not one still in an active room: ErrConversationLive), asks
// LiveKit to create it and dispatch the agent, and returns it with p's join
// token. LiveKit being down or slow does not fail the call: the token
// carries the room's configuration, dispatch included, so LiveKit creates
// the room right on first join.
func (s *Service) Create(ctx context.Context, p auth.Principal, req Request) (Room, JoinInfo, error) {
	if err := userOnly(p); err != nil {
		return Room{}, JoinInfo{}, err
	}
	r, spec, err := s.create(ctx, p, req)
	if err != nil {
		return Room{}, JoinInfo{}, err
	}
	join, err := s.joinInfo(ctx, p, spec)
	if err != nil {
		return Room{}, JoinInfo{}, err
	}
	return r, join, nil
}

// create is Create but for the join token: the room and what LiveKit was
// told of it.
func (s *Service) create(ctx context.Context, p auth.Principal, req Request) (Room, Spec, error) {
	name := req.Name
	if !utf8.ValidString(name) || strings.TrimSpace(name) == "" || utf8.RuneCountInString(name) > MaxNameChars {
		return Room{}, Spec{}, invalid(fmt.Sprintf("name must be 1 to %d characters, not all blank", MaxNameChars))
	}
	if !utf8.ValidString(req.AgentName) || utf8.RuneCountInString(req.AgentName) > MaxAgentNameChars {
		return Room{}, Spec{}, invalid(fmt.Sprintf("agent_name must be at most %d characters", MaxAgentNameChars))
	}
	if !utf8.ValidString(req.AgentMetadata) || len(req.AgentMetadata) > MaxAgentMetadataBytes {
		return Room{}, Spec{}, invalid(fmt.Sprintf("agent_metadata must be at most %d bytes of UTF-8", MaxAgentMetadataBytes))
	}
	agent := req.AgentName
	if agent == "" {
		agent = s.agentName
	}
	roomID, err := uuid.NewV7()
	if err != nil {
		return Room{}, Spec{}, fmt.Errorf("new room id: %w", err)
	}
	convID, resume := req.ConversationID, req.ConversationID != uuid.Nil
	if !resume {
		if convID, err = uuid.NewV7(); err != nil {
			return Room{}, Spec{}, fmt.Errorf("new conversation id: %w", err)
		}
	}
	r, err := s.store.CreateRoom(ctx, NewRoom{
		ID:             roomID,
		Name:           name,
		ConversationID: convID,
		LiveKitRoom:    LiveKitRoomPrefix + roomID.String(),
		CreatedBy:      p.ID,
		AgentName:      agent,
		AgentMetadata:  req.AgentMetadata,
		Resume:         resume,
	})
	if err != nil {
		return Room{}, Spec{}, err
	}
	r = s.withAgent(r)
	spec := specOf(r)
	sid, err := s.lk.CreateRoom(ctx, spec)
	if err != nil {
		s.log.WarnContext(ctx, "livekit create room failed; it will be created on first join",
			slog.String("room_id", r.ID.String()), slog.String("error", err.Error()))
	}
	// Without the sid, the room takes the one of its first room_started.
	if sid != "" {
		if err := s.store.SetLiveKitSID(ctx, r.ID, sid); err != nil {
			s.log.WarnContext(ctx, "store livekit room sid failed; room_started will bring it",
				slog.String("room_id", r.ID.String()), slog.String("error", err.Error()))
		} else {
			r.LiveKitSID = sid
		}
	}
	return r, spec, nil
}

// withAgent names the default agent in a room that names none.
func (s *Service) withAgent(r Room) Room {
	if r.AgentName == "" {
		r.AgentName = s.agentName
	}
	return r
}

// GetRoom returns one of p's rooms.
func (s *Service) GetRoom(ctx context.Context, p auth.Principal, id uuid.UUID) (Room, error) {
	if err := userOnly(p); err != nil {
		return Room{}, err
	}
	r, err := s.store.Room(ctx, id, p.ID)
	if err != nil {
		return Room{}, err
	}
	return s.withAgent(r), nil
}

// ListRooms lists p's rooms, newest first.
func (s *Service) ListRooms(ctx context.Context, p auth.Principal, pageSize int, pageToken string) (Page, error) {
	if err := userOnly(p); err != nil {
		return Page{}, err
	}
	pageSize, err := pageSizeOf(pageSize)
	if err != nil {
		return Page{}, err
	}
	after, err := keyset.Decode(keyset.Rooms, pageToken)
	if err != nil {
		return Page{}, err
	}
	rs, err := s.store.ListRooms(ctx, p.ID, after, pageSize+1)
	if err != nil {
		return Page{}, err
	}
	var page Page
	page.Rooms, page.NextPageToken = keyset.Page(keyset.Rooms, rs, pageSize, func(r Room) Cursor {
		return Cursor{CreatedAt: r.CreatedAt, ID: r.ID}
	})
	for i, r := range page.Rooms {
		page.Rooms[i] = s.withAgent(r)
	}
	return page, nil
}

// pageSizeOf is a list's page size: 0 is the default.
func pageSizeOf(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultPageSize, nil
	case n < 0 || n > MaxPageSize:
		return 0, invalid(fmt.Sprintf("page_size must be 0 to %d", MaxPageSize))
	}
	return n, nil
}

// JoinRoom returns a join token for one of p's active rooms; an ended room
// is ErrEnded.
func (s *Service) JoinRoom(ctx context.Context, p auth.Principal, id uuid.UUID) (JoinInfo, error) {
	if err := userOnly(p); err != nil {
		return JoinInfo{}, err
	}
	r, err := s.activeRoom(ctx, p, id)
	if err != nil {
		return JoinInfo{}, err
	}
	return s.joinInfo(ctx, p, specOf(r))
}

// activeRoom returns p's room id, with its agent, unless it has ended
// (ErrEnded).
func (s *Service) activeRoom(ctx context.Context, p auth.Principal, id uuid.UUID) (Room, error) {
	r, err := s.store.Room(ctx, id, p.ID)
	if err != nil {
		return Room{}, err
	}
	if r.Ended() {
		return Room{}, ErrEnded
	}
	return s.withAgent(r), nil
}

// EndRoom ends one of p's rooms. Ending an ended room changes nothing. The
// LiveKit room is deleted in the background, retried with backoff.
func (s *Service) EndRoom(ctx context.Context, p auth.Principal, id uuid.UUID) (Room, error) {
	if err := userOnly(p); err != nil {
		return Room{}, err
	}
	r, ended, err := s.store.EndRoom(ctx, id, p.ID, s.now())
	if err != nil {
		return Room{}, err
	}
	if ended {
		s.deleteLater(r.LiveKitRoom)
	}
	return s.withAgent(r), nil
}

// ApplyEvent applies a verified LiveKit webhook event, once per event id
// across replicas. Events about rooms that are not Parley's, and kinds
// Parley does not use, are ignored. An event that no room has both the
// LiveKit name and sid of, or an egress_ended that LiveKit's API does not
// confirm, is refused with a *RefusedError: a valid signature proves only
// that someone holds the API secret.
func (s *Service) ApplyEvent(ctx context.Context, e Event) error {
	if e.Kind == EventOther || !strings.HasPrefix(e.LiveKitRoom, LiveKitRoomPrefix) {
		return nil
	}
	if e.RoomSID == "" && e.Kind != EventEgressEnded {
		return refused(RefusedRoomMismatch, "the event names no room sid")
	}
	if e.Kind == EventEgressEnded {
		var err error
		if e, err = s.confirmEgress(ctx, e); err != nil {
			return err
		}
	}
	res, err := s.store.ApplyEvent(ctx, e)
	if err != nil {
		return fmt.Errorf("apply %s event %q: %w", e.Kind, e.ID, err)
	}
	if !res.Applied {
		return nil
	}
	// A join token outlives its room, and joining re-creates a LiveKit
	// room (under a new sid): close it again rather than let an ended room
	// run on. No Parley room changes.
	if res.Room.Ended() && (e.Kind == EventRoomStarted || e.Kind == EventParticipantJoined) {
		s.deleteLater(res.Room.LiveKitRoom)
	}
	if !res.Matched {
		return refused(RefusedRoomMismatch, fmt.Sprintf("no room %s with sid %q", e.LiveKitRoom, e.RoomSID))
	}
	if e.Kind == EventEgressEnded && len(e.Recordings) > 0 {
		s.queued()
	}
	return nil
}

// confirmEgress replaces what an egress_ended event claims with what
// LiveKit's API says of the egress: its room's sid and the files it wrote.
// Parley starts no egress itself, so LiveKit's word is the only one taken.
// An egress LiveKit does not know for the event's room is refused, and so is
// one that wrote a file outside the room's RecordingPrefix.
func (s *Service) confirmEgress(ctx context.Context, e Event) (Event, error) {
	if e.EgressID == "" {
		return e, refused(RefusedEgressUnconfirmed, "the event names no egress")
	}
	eg, err := s.lk.Egress(ctx, e.LiveKitRoom, e.EgressID)
	switch {
	case errors.Is(err, ErrEgressNotFound):
		return e, refused(RefusedEgressUnconfirmed, fmt.Sprintf("LiveKit knows no egress %q of room %s", e.EgressID, e.LiveKitRoom))
	case err != nil:
		// LiveKit redelivers the event; by then it may answer.
		return e, fmt.Errorf("confirm egress %q: %w", e.EgressID, err)
	case eg.ID != e.EgressID || eg.RoomName != e.LiveKitRoom:
		return e, refused(RefusedEgressUnconfirmed, fmt.Sprintf("LiveKit's egress %q is of room %s", eg.ID, eg.RoomName))
	}
	for _, rec := range eg.Recordings {
		if !inRecordingLocation(e.LiveKitRoom, rec.BlobName) {
			return e, refused(RefusedRecordingLocation, fmt.Sprintf("egress %q wrote %q, outside %s", eg.ID, rec.BlobName, RecordingPrefix(e.LiveKitRoom)))
		}
	}
	e.RoomSID, e.Recordings, e.Egress = eg.RoomSID, eg.Recordings, eg.State
	return e, nil
}

func (s *Service) joinInfo(ctx context.Context, p auth.Principal, spec Spec) (JoinInfo, error) {
	name, err := s.store.DisplayName(ctx, p.ID)
	if err != nil {
		return JoinInfo{}, err
	}
	join, err := s.lk.JoinToken(spec, Grant{Identity: p.ID.String(), Name: name})
	if err != nil {
		return JoinInfo{}, fmt.Errorf("sign join token: %w", err)
	}
	return join, nil
}

// deleteLater deletes the LiveKit room in the background, retrying with
// exponential backoff until it succeeds, the attempts run out or Close.
func (s *Service) deleteLater(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.wg.Go(func() {
		backoff := s.deleteBackoff
		for attempt := 1; ; attempt++ {
			err := s.lk.DeleteRoom(s.bg, name)
			if err == nil {
				return
			}
			if attempt == s.deleteAttempts || s.bg.Err() != nil {
				s.log.Warn("livekit delete room failed; giving up", slog.String("livekit_room", name),
					slog.Int("attempts", attempt), slog.String("error", err.Error()))
				return
			}
			t := time.NewTimer(backoff)
			select {
			case <-s.bg.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff *= 2
		}
	})
}

// DispatchMetadata is the job metadata of the agent dispatched into a
// room, as JSON: what the agent needs to find and restore its
// conversation and to file its session report. conversation_id is the
// room metadata's key too; last_seq and agent_metadata are left out when
// 0 or "".
type DispatchMetadata struct {
	// ConversationID is the room's conversation.
	ConversationID string `json:"conversation_id,omitempty"`
	// LastSeq is the seq of the conversation's last item when the room
	// resumed it: the agent restores GetChatContext(until_seq: LastSeq)
	// and goes on from there.
	LastSeq int64 `json:"last_seq,omitempty"`
	// AgentMetadata is CreateRoom's agent_metadata, verbatim.
	AgentMetadata string `json:"agent_metadata,omitempty"`
	// CallID is the room's id, which is its call's: the agent files its
	// session report with ReportSession(call_id). Added after the others,
	// so a dispatch made by an older replica lacks it.
	CallID string `json:"call_id,omitempty"`
}

// specOf is what LiveKit is told about r. The dispatch is r's as
// CreateRoom made it, so a join token dispatches what CreateRoom would have.
func specOf(r Room) Spec {
	var conv string
	if r.ConversationID != uuid.Nil {
		conv = r.ConversationID.String()
	}
	md, _ := json.Marshal(DispatchMetadata{ConversationID: conv}) // strings always marshal
	var call string
	if r.ID != uuid.Nil {
		call = r.ID.String()
	}
	dmd, _ := json.Marshal(DispatchMetadata{ConversationID: conv, LastSeq: r.ResumeSeq, AgentMetadata: r.AgentMetadata, CallID: call})
	return Spec{Name: r.LiveKitRoom, Metadata: string(md), AgentName: r.AgentName, DispatchMetadata: string(dmd)}
}

// String returns the LiveKit name of the event kind.
func (k EventKind) String() string {
	switch k {
	case EventRoomStarted:
		return "room_started"
	case EventRoomFinished:
		return "room_finished"
	case EventParticipantJoined:
		return "participant_joined"
	case EventParticipantLeft:
		return "participant_left"
	case EventEgressEnded:
		return "egress_ended"
	case EventTrackPublished:
		return "track_published"
	case EventEgressStarted:
		return "egress_started"
	case EventEgressUpdated:
		return "egress_updated"
	default:
		return "other"
	}
}
