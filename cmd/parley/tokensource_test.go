package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/livekit/protocol/auth"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
	"github.com/parley-dev/parley/internal/testenv"
)

// tokenSourceDir holds the pinned livekit-client and the script that drives
// it (make tokensource-deps installs it).
const tokenSourceDir = "testdata/tokensource"

// fetched is one line of fetch.mjs: livekit-client's credentials and its
// decoding of the token, or the error TokenSource.endpoint threw.
type fetched struct {
	Credentials struct {
		ServerURL        string `json:"serverUrl"`
		ParticipantToken string `json:"participantToken"`
	} `json:"credentials"`
	Payload struct {
		Sub        string            `json:"sub"`
		Exp        int64             `json:"exp"`
		Name       string            `json:"name"`
		Metadata   string            `json:"metadata"`
		Attributes map[string]string `json:"attributes"`
		Video      struct {
			Room     string `json:"room"`
			RoomJoin bool   `json:"roomJoin"`
		} `json:"video"`
		RoomConfig struct {
			Name   string `json:"name"`
			Agents []struct {
				AgentName string `json:"agentName"`
				Metadata  string `json:"metadata"`
			} `json:"agents"`
		} `json:"roomConfig"`
	} `json:"payload"`
	Error string `json:"error"`
}

// runTokenSource runs fetch.mjs: one TokenSource.endpoint of url with
// accessToken, fetching each of fetches in turn.
func runTokenSource(t *testing.T, url, accessToken string, fetches ...string) []fetched {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed to run livekit-client: %v", err)
	}
	if _, err := os.Stat(filepath.Join(tokenSourceDir, "node_modules", "livekit-client", "package.json")); err != nil {
		t.Fatalf("livekit-client is not installed in %s: run make tokensource-deps (%v)", tokenSourceDir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append([]string{"fetch.mjs", url, accessToken}, fetches...)...)
	cmd.Dir = tokenSourceDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node fetch.mjs: %v\n%s", err, stderr.String())
	}
	var res []fetched
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var f fetched
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			t.Fatalf("fetch.mjs line %q: %v", line, err)
		}
		res = append(res, f)
	}
	if len(res) != len(fetches) {
		t.Fatalf("fetch.mjs printed %d results for %d fetches:\n%s\n%s", len(res), len(fetches), out, stderr.String())
	}
	return res
}

// TestTokenSourceEndpoint points livekit-client's own TokenSource.endpoint
// (the pinned release, in Node) at a real Parley with a fake LiveKit, as a
// LiveKit frontend would: the token it fetches decodes to the requested
// room, for the caller, with the agent the request named dispatched in its
// room configuration, and Parley made the room, its conversation and the
// dispatch. A foreign identity or a wrong access token is an error the
// client reports.
func TestTokenSourceEndpoint(t *testing.T) {
	lk := rtctest.NewServer(t, testLiveKitKey, testLiveKitSecret)
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["LIVEKIT_URL"] = lk.URL
	env["PARLEY_LIVEKIT_PUBLIC_URL"] = "wss://media.example.com"
	env["PARLEY_LIVEKIT_AGENT_NAME"] = "default-agent"
	s := startServer(t, env)
	ctx := context.Background()
	authc := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base)
	rooms := parleyv1connect.NewRoomServiceClient(http.DefaultClient, s.base)
	reg, err := authc.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{
		Email: "ada@example.com", Password: "correct horse battery", DisplayName: "Ada"}))
	if err != nil {
		t.Fatal(err)
	}
	userID, access := reg.Msg.GetUser().GetId(), reg.Msg.GetTokens().GetAccessToken()

	got := runTokenSource(t, s.base+"/livekit/token", access,
		`{"roomName":"Standup","participantName":"Ada at work","participantMetadata":"{\"desk\":7}",`+
			`"participantAttributes":{"team":"blue"},"agentName":"support-agent","agentMetadata":"{\"lang\":\"fr\"}"}`,
		`{"roomName":"$ROOM","agentName":"support-agent","agentMetadata":"{\"lang\":\"fr\"}"}`,
		`{}`,
		`{"participantIdentity":"someone-else"}`,
	)
	for i, f := range got[:3] {
		if f.Error != "" {
			t.Fatalf("fetch %d: %s", i, f.Error)
		}
		p := f.Payload
		if f.Credentials.ServerURL != "wss://media.example.com" || p.Sub != userID || !p.Video.RoomJoin ||
			!strings.HasPrefix(p.Video.Room, "parley-") || p.RoomConfig.Name != p.Video.Room {
			t.Errorf("fetch %d: server %q, payload %+v; want Parley's LiveKit URL, identity %s, a roomJoin grant for a Parley room and its configuration",
				i, f.Credentials.ServerURL, p, userID)
		}
		if left := time.Until(time.Unix(p.Exp, 0)); left < 50*time.Minute || left > time.Hour+time.Minute {
			t.Errorf("fetch %d: token expires in %v, want PARLEY_LIVEKIT_TOKEN_TTL's 1h", i, left)
		}
		// The token is LiveKit's to check: signed with the API secret.
		v, err := auth.ParseAPIToken(f.Credentials.ParticipantToken)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := v.Verify(testLiveKitSecret); err != nil || v.APIKey() != testLiveKitKey {
			t.Errorf("fetch %d: token of key %q does not verify with LiveKit's secret: %v", i, v.APIKey(), err)
		}
	}
	created, joined, fresh := got[0].Payload, got[1].Payload, got[2].Payload

	// The first fetch made a room of the requested name, with its
	// conversation, for the participant as described, and dispatched the
	// requested agent with its metadata beside the conversation's id.
	if created.Name != "Ada at work" || created.Metadata != `{"desk":7}` || created.Attributes["team"] != "blue" {
		t.Errorf("participant in the token: name %q, metadata %q, attributes %v", created.Name, created.Metadata, created.Attributes)
	}
	roomID := strings.TrimPrefix(created.Video.Room, "parley-")
	gr, err := rooms.GetRoom(ctx, bearer(connect.NewRequest(&parleyv1.GetRoomRequest{RoomId: roomID}), access))
	if err != nil {
		t.Fatal(err)
	}
	convID := gr.Msg.GetRoom().GetConversationId()
	if gr.Msg.GetRoom().GetName() != "Standup" || convID == "" {
		t.Errorf("Parley's room %+v, want Standup with a conversation", gr.Msg.GetRoom())
	}
	wantDispatch := func(what string, p fetched, agent, agentMetadata, conv string) {
		t.Helper()
		agents := p.Payload.RoomConfig.Agents
		if len(agents) != 1 || agents[0].AgentName != agent {
			t.Fatalf("%s: dispatches %+v, want one of %s", what, agents, agent)
		}
		var md struct {
			ConversationID string `json:"conversation_id"`
			AgentMetadata  string `json:"agent_metadata"`
		}
		if err := json.Unmarshal([]byte(agents[0].Metadata), &md); err != nil || md.ConversationID != conv || md.AgentMetadata != agentMetadata {
			t.Errorf("%s: dispatch metadata %q (%v), want conversation %s and agent metadata %q", what, agents[0].Metadata, err, conv, agentMetadata)
		}
	}
	wantDispatch("created", got[0], "support-agent", `{"lang":"fr"}`, convID)

	// The second asked for that room by its LiveKit name: it joined it.
	if joined.Video.Room != created.Video.Room || joined.Name != "Ada" {
		t.Errorf("second fetch: room %q as %q, want %q as the display name Ada", joined.Video.Room, joined.Name, created.Video.Room)
	}
	wantDispatch("joined", got[1], "support-agent", `{"lang":"fr"}`, convID)

	// A fetch with no options made a room of its own, with the default agent.
	if fresh.Video.Room == created.Video.Room {
		t.Errorf("a fetch without a room name joined %s", fresh.Video.Room)
	}
	fr, err := rooms.GetRoom(ctx, bearer(connect.NewRequest(&parleyv1.GetRoomRequest{RoomId: strings.TrimPrefix(fresh.Video.Room, "parley-")}), access))
	if err != nil {
		t.Fatal(err)
	}
	wantDispatch("fresh", got[2], "default-agent", "", fr.Msg.GetRoom().GetConversationId())

	if e := got[3].Error; !strings.Contains(e, "received 403") || !strings.Contains(e, "participant_identity") {
		t.Errorf("a foreign identity: %q, want TokenSource's error for a 403 naming participant_identity", e)
	}
	if e := runTokenSource(t, s.base+"/livekit/token", access+"x", `{}`)[0].Error; !strings.Contains(e, "received 401") || !strings.Contains(e, `"code":"unauthenticated"`) {
		t.Errorf("a wrong access token: %q, want TokenSource's error for a 401 with a JSON body", e)
	}

	// LiveKit was asked for both new rooms, and to dispatch their agents.
	var dispatched []string
	for _, d := range lk.Dispatches() {
		dispatched = append(dispatched, d.GetRoom()+" "+d.GetAgentName())
	}
	want := []string{created.Video.Room + " support-agent", fresh.Video.Room + " default-agent"}
	if strings.Join(dispatched, ",") != strings.Join(want, ",") {
		t.Errorf("LiveKit dispatches %v, want %v", dispatched, want)
	}
}
