package room

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

func TestSpecDispatchMetadata(t *testing.T) {
	t.Parallel()
	conv, id := uuid.New(), uuid.New()
	roomMeta := `{"conversation_id":"` + conv.String() + `"}`
	for _, tc := range []struct {
		name string
		room Room
		want DispatchMetadata
		raw  string // when set, the exact JSON
	}{
		{"new conversation", Room{ID: id, ConversationID: conv}, DispatchMetadata{ConversationID: conv.String(), CallID: id.String()},
			`{"conversation_id":"` + conv.String() + `","call_id":"` + id.String() + `"}`},
		{"agent metadata", Room{ID: id, ConversationID: conv, AgentMetadata: `{"lang":"fr"}`},
			DispatchMetadata{ConversationID: conv.String(), AgentMetadata: `{"lang":"fr"}`, CallID: id.String()}, ""},
		{"resumed", Room{ID: id, ConversationID: conv, ResumeSeq: 42, AgentMetadata: "x"},
			DispatchMetadata{ConversationID: conv.String(), LastSeq: 42, AgentMetadata: "x", CallID: id.String()},
			`{"conversation_id":"` + conv.String() + `","last_seq":42,"agent_metadata":"x","call_id":"` + id.String() + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.room.LiveKitRoom, tc.room.AgentName = "parley-1", "bot"
			s := specOf(tc.room)
			if s.Metadata != roomMeta || s.AgentName != "bot" || s.Name != "parley-1" {
				t.Errorf("spec = %+v, want room metadata %s and agent bot", s, roomMeta)
			}
			var got DispatchMetadata
			if err := json.Unmarshal([]byte(s.DispatchMetadata), &got); err != nil || got != tc.want {
				t.Errorf("dispatch metadata %s (%v), want %+v", s.DispatchMetadata, err, tc.want)
			}
			if tc.raw != "" && s.DispatchMetadata != tc.raw {
				t.Errorf("dispatch metadata %s, want %s", s.DispatchMetadata, tc.raw)
			}
		})
	}
}

func TestCreateAgentRules(t *testing.T) {
	t.Parallel()
	// No store: the rules must refuse before anything is stored.
	s := NewService(nil, nil, Options{})
	defer s.Close()
	user := auth.Principal{ID: uuid.New(), Kind: auth.KindUser}
	for _, req := range []Request{
		{Name: "r", AgentName: strings.Repeat("a", MaxAgentNameChars+1)},
		{Name: "r", AgentName: "\xff"},
		{Name: "r", AgentMetadata: strings.Repeat("m", MaxAgentMetadataBytes+1)},
		{Name: "r", AgentMetadata: "\xff"},
	} {
		if _, _, err := s.Create(t.Context(), user, req); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(agent %.20q, metadata %.20q) = %v, want ErrInvalid", req.AgentName, req.AgentMetadata, err)
		}
	}
	agent := auth.Principal{ID: uuid.New(), Kind: auth.KindAgent}
	if _, _, err := s.Create(t.Context(), agent, Request{Name: "r", ConversationID: uuid.New()}); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("an agent resuming a conversation: %v", err)
	}
}
