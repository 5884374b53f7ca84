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
	LiveKit
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
