package rtc_test

import (
	"testing"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"

	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

// tokenRoomConfig returns the room configuration of a join token for s.
func tokenRoomConfig(t *testing.T, c *rtc.Client, s room.Spec) *livekit.RoomConfiguration {
	t.Helper()
	join, err := c.JoinToken(s, room.Grant{Identity: "u", Name: "Ada"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.ParseAPIToken(join.Token)
	if err != nil {
		t.Fatal(err)
	}
	_, grants, err := v.Verify(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return grants.GetRoomConfiguration()
}

// TestSpecDispatch: a spec naming its agent and job metadata dispatches
// them, on LiveKit's Twirp API and in the join token's room configuration
// alike, while the room keeps its own metadata.
func TestSpecDispatch(t *testing.T) {
	t.Parallel()
	for _, fallback := range []string{"", "parley-agent"} {
		t.Run("default="+fallback, func(t *testing.T) {
			t.Parallel()
			lk := rtctest.NewServer(t, testKey, testSecret)
			c := newClient(t, rtc.Config{URL: lk.URL, AgentName: fallback})
			s := spec()
			s.AgentName = "support-bot"
			s.DispatchMetadata = `{"conversation_id":"c","last_seq":7,"agent_metadata":"{\"lang\":\"fr\"}"}`
			if _, err := c.CreateRoom(t.Context(), s); err != nil {
				t.Fatal(err)
			}
			if cr := lk.CreatedRooms(); len(cr) != 1 || cr[0].GetMetadata() != s.Metadata {
				t.Errorf("the server saw CreateRoom %v, want metadata %s", cr, s.Metadata)
			}
			d := lk.Dispatches()
			if len(d) != 1 || d[0].GetAgentName() != "support-bot" || d[0].GetRoom() != s.Name || d[0].GetMetadata() != s.DispatchMetadata {
				t.Errorf("the server saw dispatches %v, want support-bot into %s with %s", d, s.Name, s.DispatchMetadata)
			}

			cfg := tokenRoomConfig(t, c, s)
			if cfg.GetMetadata() != s.Metadata {
				t.Errorf("token room metadata %q, want %q", cfg.GetMetadata(), s.Metadata)
			}
			if a := cfg.GetAgents(); len(a) != 1 || a[0].GetAgentName() != "support-bot" || a[0].GetMetadata() != s.DispatchMetadata {
				t.Errorf("token room config agents = %v", a)
			}
		})
	}
}

// TestSpecWithoutAgent: with no agent in the spec nor configured, nothing
// is dispatched and the token names no agent.
func TestSpecWithoutAgent(t *testing.T) {
	t.Parallel()
	lk := rtctest.NewServer(t, testKey, testSecret)
	c := newClient(t, rtc.Config{URL: lk.URL})
	s := spec()
	s.DispatchMetadata = `{"conversation_id":"c","last_seq":7}`
	if _, err := c.CreateRoom(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if d := lk.Dispatches(); len(d) != 0 {
		t.Errorf("dispatches %v without an agent", d)
	}
	if a := tokenRoomConfig(t, c, s).GetAgents(); len(a) != 0 {
		t.Errorf("token room config agents = %v, want none", a)
	}
}
