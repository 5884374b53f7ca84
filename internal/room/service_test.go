package room

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/keyset"
)

func TestListRoomsRefusesOtherListsTokens(t *testing.T) {
	t.Parallel()
	// No store: a bad token must be refused before anything is read.
	s := NewService(nil, nil, Options{})
	defer s.Close()
	user := auth.Principal{ID: uuid.New(), Kind: auth.KindUser}
	filesToken := keyset.Encode(keyset.Files, keyset.Position{CreatedAt: time.Now(), ID: uuid.New()})
	for _, bad := range []string{"garbage!", filesToken, strings.Repeat("A", 100)} {
		if _, err := s.ListRooms(t.Context(), user, 10, bad); !errors.Is(err, ErrInvalidPageToken) {
			t.Errorf("ListRooms(token %q) = %v, want ErrInvalidPageToken", bad, err)
		}
	}
}

func TestRulesBeforeStorage(t *testing.T) {
	t.Parallel()
	// No store: the rules must refuse before anything is stored.
	s := NewService(nil, nil, Options{})
	defer s.Close()
	user := auth.Principal{ID: uuid.New(), Kind: auth.KindUser}
	for _, name := range []string{"", "   ", strings.Repeat("x", MaxNameChars+1), "\xff"} {
		if _, _, err := s.CreateRoom(t.Context(), user, name); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateRoom(%q) = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := s.ListRooms(t.Context(), user, MaxPageSize+1, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("ListRooms with page size %d: %v", MaxPageSize+1, err)
	}
	agent := auth.Principal{ID: uuid.New(), Kind: auth.KindAgent}
	if _, _, err := s.CreateRoom(t.Context(), agent, "r"); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("CreateRoom by an agent: %v", err)
	}
	if _, err := s.GetRoom(t.Context(), auth.Principal{}, uuid.New()); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("GetRoom without a principal: %v", err)
	}
}

func TestSpecMetadata(t *testing.T) {
	t.Parallel()
	conv := uuid.New()
	if got := specOf(Room{LiveKitRoom: "parley-1", ConversationID: conv}); got.Name != "parley-1" || got.Metadata != `{"conversation_id":"`+conv.String()+`"}` {
		t.Errorf("specOf = %+v", got)
	}
	if got := specOf(Room{LiveKitRoom: "parley-2"}); got.Metadata != `{}` {
		t.Errorf("specOf a room without conversation = %+v", got)
	}
}

// failingLiveKit fails every deletion.
type failingLiveKit struct {
	MediaServer
	deletes atomic.Int32
}

func (f *failingLiveKit) DeleteRoom(ctx context.Context, _ string) error {
	f.deletes.Add(1)
	return errors.New("unreachable")
}

func TestCloseStopsRetries(t *testing.T) {
	t.Parallel()
	lk := &failingLiveKit{}
	s := NewService(nil, lk, Options{DeleteAttempts: 100, DeleteBackoff: time.Hour})
	s.deleteLater("parley-1")
	for lk.deletes.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not stop a retry waiting out its backoff")
	}
	s.deleteLater("parley-2") // after Close: nothing starts
	if n := lk.deletes.Load(); n != 1 {
		t.Errorf("%d delete attempts, want 1", n)
	}
}

func TestRecordingLocation(t *testing.T) {
	t.Parallel()
	const lk = "parley-0190a1b2-0000-7000-8000-000000000001"
	conv, id := uuid.NewString(), uuid.NewString()
	for name, want := range map[string]bool{
		RecordingPrefix(lk) + "EG_1.mp4":                 true,
		RecordingPrefix(lk) + "2026-01-01/EG_1.mp4":      true,
		RecordingPrefix(lk) + "EG 1 (final).m4a":         true,
		conv + "/" + id:                                  false, // a file of Parley's
		conv + "/" + id + ".upload":                      false,
		RecordingPrefix(lk) + "../../" + conv + "/" + id: false,
		RecordingPrefix(lk) + "./EG_1.mp4":               false,
		RecordingPrefix(lk) + "a//EG_1.mp4":              false,
		RecordingPrefix(lk) + ".keys":                    false,
		RecordingPrefix(lk) + "a\\..\\b":                 false,
		RecordingPrefix(lk) + "EG\x00.mp4":               false,
		RecordingPrefix(lk) + "\xff.mp4":                 false,
		RecordingPrefix(lk):                              false,
		RecordingPrefix(lk) + "dir/":                     false,
		RecordingPrefix("parley-other") + "EG_1.mp4":     false, // another room's
		"recordings/" + lk + "EG_1.mp4":                  false,
		"/" + RecordingPrefix(lk) + "EG_1.mp4":           false,
		RecordingPrefix(lk) + strings.Repeat("x", 1024):  false,
	} {
		if got := inRecordingLocation(lk, name); got != want {
			t.Errorf("inRecordingLocation(%q) = %v, want %v", name, got, want)
		}
	}
}

// egressLiveKit answers Egress from a map or, when down, fails as an
// unreachable LiveKit does.
type egressLiveKit struct {
	MediaServer
	egresses map[string]Egress
	down     bool
}

func (f egressLiveKit) Egress(_ context.Context, room, id string) (Egress, error) {
	if f.down {
		return Egress{}, errors.New("unreachable")
	}
	eg, ok := f.egresses[id]
	if !ok || eg.RoomName != room {
		return Egress{}, ErrEgressNotFound
	}
	return eg, nil
}

// TestApplyEventRefusesBeforeStorage: events without a room sid, and
// egresses LiveKit does not confirm for the room or that wrote outside its
// prefix, are refused before anything is stored (there is no store).
func TestApplyEventRefusesBeforeStorage(t *testing.T) {
	t.Parallel()
	const lk = "parley-1"
	victim := uuid.NewString() + "/" + uuid.NewString()
	lkAPI := egressLiveKit{egresses: map[string]Egress{
		"EG_outside": {ID: "EG_outside", RoomName: lk, RoomSID: "RM_1", Recordings: []Recording{{BlobName: victim}}},
		"EG_theirs":  {ID: "EG_theirs", RoomName: "parley-2", RoomSID: "RM_2"},
	}}
	s := NewService(nil, lkAPI, Options{})
	defer s.Close()
	egress := func(id string) Event {
		return Event{ID: "EV_" + id, Kind: EventEgressEnded, LiveKitRoom: lk, RoomSID: "RM_1", EgressID: id,
			Recordings: []Recording{{BlobName: RecordingPrefix(lk) + "claimed.mp4"}}}
	}
	for _, tc := range []struct {
		e      Event
		reason string
	}{
		{Event{ID: "EV_1", Kind: EventRoomFinished, LiveKitRoom: lk}, RefusedRoomMismatch},
		{Event{ID: "EV_2", Kind: EventParticipantJoined, LiveKitRoom: lk}, RefusedRoomMismatch},
		{egress(""), RefusedEgressUnconfirmed},
		{egress("EG_never"), RefusedEgressUnconfirmed},
		{egress("EG_theirs"), RefusedEgressUnconfirmed},
		{egress("EG_outside"), RefusedRecordingLocation},
	} {
		err := s.ApplyEvent(t.Context(), tc.e)
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != tc.reason || !errors.Is(err, ErrEventRefused) {
			t.Errorf("ApplyEvent(%s %s) = %v, want refused for %s", tc.e.Kind, tc.e.EgressID, err, tc.reason)
		}
	}
	// LiveKit unreachable is no refusal: the event is redelivered later.
	down := NewService(nil, egressLiveKit{down: true}, Options{})
	defer down.Close()
	if err := down.ApplyEvent(t.Context(), egress("EG_1")); err == nil || errors.Is(err, ErrEventRefused) {
		t.Errorf("ApplyEvent with LiveKit down = %v, want a retryable error", err)
	}
}
