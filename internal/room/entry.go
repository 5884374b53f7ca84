package room

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

// Limits of what an Entry may ask a join token to carry. A token travels in
// the query of LiveKit's WebSocket URL, so what it carries stays small.
const (
	MaxParticipantNameChars     = 128
	MaxParticipantMetadataBytes = 16 << 10
	MaxParticipantAttributes    = 64
	// MaxParticipantAttributesBytes bounds the keys and values together.
	MaxParticipantAttributesBytes = 16 << 10

	// DefaultEntryRoomName names the room an Entry without a room name
	// creates.
	DefaultEntryRoomName = "LiveKit session"

	// reservedAttributePrefix starts the attributes LiveKit and its agent
	// frameworks set themselves (lk.agent.state and the like).
	reservedAttributePrefix = "lk."
)

// Entry asks Enter for a way into a room, as LiveKit's standard token
// endpoint is asked for one.
type Entry struct {
	// RoomName is the LiveKit name of one of the caller's rooms to join
	// (LiveKitRoomPrefix and the room id, as Room.LiveKitRoom). Any other
	// name creates a room of that name; "" creates one named
	// DefaultEntryRoomName.
	RoomName string
	// Identity, when set, must be the caller's user id: a participant is
	// who Parley says it is.
	Identity string
	// Name is the participant's name in the room; "" is the caller's
	// display name.
	Name       string
	Metadata   string
	Attributes map[string]string
	// AgentName and AgentMetadata are the dispatch of a new room, as
	// Request's. Joining a room keeps its dispatch: naming another is
	// ErrForbidden.
	AgentName     string
	AgentMetadata string
}

// Enter creates or joins one of p's rooms as e asks and returns the room
// with p's join token, which carries e's participant name, metadata and
// attributes. A new room is made as Create makes it, conversation and
// agent dispatch included. Joining an ended room is ErrEnded, and a room
// that is not p's ErrNotFound.
func (s *Service) Enter(ctx context.Context, p auth.Principal, e Entry) (Room, JoinInfo, error) {
	if err := userOnly(p); err != nil {
		return Room{}, JoinInfo{}, err
	}
	if err := checkEntry(p, e); err != nil {
		return Room{}, JoinInfo{}, err
	}
	var (
		r    Room
		spec Spec
		err  error
	)
	if id, ok := strings.CutPrefix(e.RoomName, LiveKitRoomPrefix); ok {
		if r, err = s.enterRoom(ctx, p, id, e); err == nil {
			spec = specOf(r)
		}
	} else {
		r, spec, err = s.create(ctx, p, Request{
			Name:          cmp.Or(e.RoomName, DefaultEntryRoomName),
			AgentName:     e.AgentName,
			AgentMetadata: e.AgentMetadata,
		})
	}
	if err != nil {
		return Room{}, JoinInfo{}, err
	}
	g := Grant{Identity: p.ID.String(), Name: e.Name, Metadata: e.Metadata, Attributes: e.Attributes}
	if g.Name == "" {
		if g.Name, err = s.store.DisplayName(ctx, p.ID); err != nil {
			return Room{}, JoinInfo{}, err
		}
	}
	join, err := s.lk.JoinToken(spec, g)
	if err != nil {
		return Room{}, JoinInfo{}, fmt.Errorf("sign join token: %w", err)
	}
	return r, join, nil
}

// enterRoom returns p's active room whose LiveKit name ends in id, if e
// asks for its dispatch or none.
func (s *Service) enterRoom(ctx context.Context, p auth.Principal, id string, e Entry) (Room, error) {
	roomID, err := uuid.Parse(id)
	// Only the canonical spelling is a LiveKit room name Parley made.
	if err != nil || roomID.String() != id {
		return Room{}, ErrNotFound
	}
	r, err := s.activeRoom(ctx, p, roomID)
	if err != nil {
		return Room{}, err
	}
	if e.AgentName != "" && e.AgentName != r.AgentName || e.AgentMetadata != "" && e.AgentMetadata != r.AgentMetadata {
		return Room{}, forbidden(fmt.Sprintf("room_config.agents: room %s dispatches agent %q with its own metadata; a join cannot change it", r.LiveKitRoom, r.AgentName))
	}
	return r, nil
}

// checkEntry applies the rules of what an Entry may ask for. The room name
// of a new room is CreateRoom's to check.
func checkEntry(p auth.Principal, e Entry) error {
	if e.Identity != "" && e.Identity != p.ID.String() {
		return forbidden("participant_identity must be your own user id, " + p.ID.String())
	}
	if !utf8.ValidString(e.Name) || utf8.RuneCountInString(e.Name) > MaxParticipantNameChars || hasControl(e.Name) {
		return invalid(fmt.Sprintf("participant_name must be at most %d characters, without control characters", MaxParticipantNameChars))
	}
	if !utf8.ValidString(e.Metadata) || len(e.Metadata) > MaxParticipantMetadataBytes || strings.ContainsRune(e.Metadata, 0) {
		return invalid(fmt.Sprintf("participant_metadata must be at most %d bytes of UTF-8, without U+0000", MaxParticipantMetadataBytes))
	}
	if len(e.Attributes) > MaxParticipantAttributes {
		return invalid(fmt.Sprintf("participant_attributes may hold at most %d attributes", MaxParticipantAttributes))
	}
	size := 0
	for k, v := range e.Attributes {
		size += len(k) + len(v)
		switch {
		case k == "" || !utf8.ValidString(k) || hasControl(k):
			return invalid("participant_attributes keys must be non-empty UTF-8, without control characters")
		case !utf8.ValidString(v) || strings.ContainsRune(v, 0):
			return invalid("participant_attributes values must be UTF-8, without U+0000")
		case strings.HasPrefix(k, reservedAttributePrefix):
			return forbidden(fmt.Sprintf("participant_attributes %q: keys starting %q are LiveKit's", k, reservedAttributePrefix))
		}
	}
	if size > MaxParticipantAttributesBytes {
		return invalid(fmt.Sprintf("participant_attributes must be at most %d bytes, keys and values together", MaxParticipantAttributesBytes))
	}
	return nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}
