package rpc

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/livekit/protocol/auth"
)

// tokenCall is one answer of POST /livekit/token.
type tokenCall struct {
	status int
	header http.Header
	body   map[string]any
}

// postToken posts body as JSON to the token endpoint with the bearer token
// tok ("" for none).
func postToken(t *testing.T, a *testAPI, tok, body string) tokenCall {
	t.Helper()
	status, header, out := restCall(t, http.MethodPost, a.url+TokenPath, tok, body)
	if out == nil {
		t.Fatalf("token endpoint answered %d without a JSON body", status)
	}
	return tokenCall{status: status, header: header, body: out}
}

// TestTokenEndpointAnswers201 checks the answer's shape: LiveKit's
// server_url and participant_token, with the participant, the room and
// Parley's ids; the token is for the caller, in that room.
func TestTokenEndpointAnswers201(t *testing.T) {
	t.Parallel()
	a := newTestAPI(t, apiOptions{})
	user := a.user(t)
	c := postToken(t, a, user.token, `{"participant_identity":"`+user.String()+`","participant_attributes":{"team":"blue"}}`)
	if c.status != http.StatusCreated {
		t.Fatalf("status %d, body %v; want 201", c.status, c.body)
	}
	if ct := c.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	roomName, _ := c.body["room_name"].(string)
	roomID, _ := c.body["room_id"].(string)
	if c.body["server_url"] != "wss://livekit.example.com" || c.body["participant_identity"] != user.String() ||
		roomName != "parley-"+roomID || c.body["conversation_id"] == nil || uuid.Validate(roomID) != nil {
		t.Errorf("answer %v", c.body)
	}
	v, err := auth.ParseAPIToken(c.body["participant_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	_, grants, err := v.Verify(roomTestSecret)
	if err != nil {
		t.Fatal(err)
	}
	if grants.Identity != user.String() || grants.Video.Room != roomName || !grants.Video.RoomJoin ||
		grants.Name != "Tester" || grants.Attributes["team"] != "blue" || grants.RoomConfig == nil || grants.RoomConfig.Name != roomName {
		t.Errorf("token grants %+v", grants)
	}
	got, err := a.rooms.GetRoom(t.Context(), a.principal(t, user), uuid.MustParse(roomID))
	if err != nil || got.ConversationID.String() != c.body["conversation_id"] || got.Name != "LiveKit session" {
		t.Errorf("room %+v, %v; want the answer's conversation, named LiveKit session", got, err)
	}
}

// TestTokenEndpointRefuses checks that what a caller may not send is a 4xx
// with a Connect JSON error body, and changes nothing.
func TestTokenEndpointRefuses(t *testing.T) {
	t.Parallel()
	a := newTestAPI(t, apiOptions{})
	user, other, agent := a.user(t), a.newUser(t, "Other"), a.agent(t)
	own := postToken(t, a, user.token, `{}`)
	if own.status != http.StatusCreated {
		t.Fatalf("a room of the user's: %d %v", own.status, own.body)
	}
	ownRoom := own.body["room_name"].(string)
	ended := postToken(t, a, user.token, `{"room_name":"ended"}`)
	if _, err := a.rooms.EndRoom(t.Context(), a.principal(t, user), uuid.MustParse(ended.body["room_id"].(string))); err != nil {
		t.Fatal(err)
	}
	rooms := len(a.lk.CreatedRooms())

	for _, tc := range []struct {
		name, tok, body string
		status          int
		code, message   string
	}{
		{"no token", "", `{}`, 401, "unauthenticated", "missing bearer token"},
		{"wrong token", user.token + "x", `{}`, 401, "unauthenticated", "invalid or expired token"},
		{"an agent", agent.token, `{}`, 403, "permission_denied", ""},
		{"another identity", user.token, `{"participant_identity":"` + other.String() + `"}`, 403, "permission_denied", "participant_identity"},
		{"LiveKit's attributes", user.token, `{"participant_attributes":{"lk.agent.state":"speaking"}}`, 403, "permission_denied", "lk."},
		{"egress", user.token, `{"room_config":{"egress":{"room":{"room_name":"x"}}}}`, 403, "permission_denied", "room_config.egress"},
		{"room metadata", user.token, `{"room_config":{"metadata":"{}"}}`, 403, "permission_denied", "room_config.metadata"},
		{"another's room", other.token, `{"room_name":"` + ownRoom + `"}`, 404, "not_found", "room not found"},
		{"a made-up Parley room", user.token, `{"room_name":"parley-` + strings.ToUpper(strings.TrimPrefix(ownRoom, "parley-")) + `"}`, 404, "not_found", "room not found"},
		{"an ended room", user.token, `{"room_name":"` + ended.body["room_name"].(string) + `"}`, 400, "failed_precondition", "ended"},
		{"not JSON", user.token, `{"room_name":`, 400, "invalid_argument", "request body"},
		{"two objects", user.token, `{}{}`, 400, "invalid_argument", "one JSON object"},
		{"unknown field", user.token, `{"roomName":"x"}`, 400, "invalid_argument", "roomName"},
		{"wrong type", user.token, `{"room_name":7}`, 400, "invalid_argument", "room_name must not be a JSON number"},
		{"not UTF-8", user.token, "{\"room_name\":\"\xff\"}", 400, "invalid_argument", "UTF-8"},
		{"control character", user.token, `{"participant_name":"a\u0007b"}`, 400, "invalid_argument", "participant_name"},
		{"NUL", user.token, `{"participant_metadata":"a\u0000b"}`, 400, "invalid_argument", "participant_metadata"},
		{"long name", user.token, `{"participant_name":"` + strings.Repeat("é", 129) + `"}`, 400, "invalid_argument", "participant_name"},
		{"long metadata", user.token, `{"participant_metadata":"` + strings.Repeat("m", 16<<10+1) + `"}`, 400, "invalid_argument", "participant_metadata"},
		{"many attributes", user.token, `{"participant_attributes":{` + manyAttributes(65) + `}}`, 400, "invalid_argument", "participant_attributes"},
		{"big attributes", user.token, `{"participant_attributes":{"a":"` + strings.Repeat("v", 16<<10) + `"}}`, 400, "invalid_argument", "participant_attributes"},
		{"long room name", user.token, `{"room_name":"` + strings.Repeat("r", 101) + `"}`, 400, "invalid_argument", "name"},
		{"two agents", user.token, `{"room_config":{"agents":[{"agent_name":"a"},{"agent_name":"b"}]}}`, 400, "invalid_argument", "one dispatch"},
		{"another agent for a room", user.token, `{"room_name":"` + ownRoom + `","room_config":{"agents":[{"agent_name":"another"}]}}`, 403, "permission_denied", "room_config.agents"},
		{"other agent metadata for a room", user.token, `{"room_name":"` + ownRoom + `","room_config":{"agents":[{"metadata":"x"}]}}`, 403, "permission_denied", "room_config.agents"},
		{"long agent name", user.token, `{"room_config":{"agents":[{"agent_name":"` + strings.Repeat("a", 129) + `"}]}}`, 400, "invalid_argument", "agent_name"},
		{"agent name control character", user.token, `{"room_config":{"agents":[{"agent_name":"a\nb"}]}}`, 400, "invalid_argument", "agent_name"},
		{"a deployment", user.token, `{"room_config":{"agents":[{"agent_name":"a","deployment":"prod"}]}}`, 400, "invalid_argument", "deployment"},
		{"unknown dispatch field", user.token, `{"room_config":{"agents":[{"agent_name":"a","thread_id":"AT_x"}]}}`, 400, "invalid_argument", "thread_id"},
		{"too large", user.token, `{"participant_metadata":"` + strings.Repeat("m", 600<<10) + `"}`, 429, "resource_exhausted", "over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := postToken(t, a, tc.tok, tc.body)
			msg, _ := c.body["message"].(string)
			if c.status != tc.status || c.body["code"] != tc.code || !strings.Contains(msg, tc.message) {
				t.Errorf("%d %v; want %d %s with a message naming %q", c.status, c.body, tc.status, tc.code, tc.message)
			}
		})
	}
	// Only JSON: a form post (which a browser sends without a preflight) is
	// refused too.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, a.url+TokenPath, strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+user.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("text/plain: %d, want 400", resp.StatusCode)
	}
	if n := len(a.lk.CreatedRooms()); n != rooms {
		t.Errorf("LiveKit was asked for %d more rooms", n-rooms)
	}
}

func manyAttributes(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k` + strings.Repeat("x", i) + `":"v"`)
	}
	return b.String()
}

// TestTokenEndpointRateLimit: a token request spends the caller's budget
// as an RPC does, and over it answers 429 with Retry-After.
func TestTokenEndpointRateLimit(t *testing.T) {
	t.Parallel()
	a := newTestAPI(t, apiOptions{handler: Options{Limits: Limits{UserPerMinute: 1, AgentPerMinute: 100, IPPerMinute: 100}}})
	user := a.user(t)
	if c := postToken(t, a, user.token, `{}`); c.status != http.StatusCreated || !strings.Contains(strings.Join(c.header.Values("RateLimit-Policy"), ","), `"user"`) {
		t.Fatalf("first request: %d %v, policies %v", c.status, c.body, c.header.Values("RateLimit-Policy"))
	}
	start := time.Now()
	c := postToken(t, a, user.token, `{}`)
	if c.status != http.StatusTooManyRequests || c.body["code"] != "resource_exhausted" || c.header.Get("Retry-After") == "" {
		t.Errorf("second request within %v: %d %v, Retry-After %q; want 429", time.Since(start), c.status, c.body, c.header.Get("Retry-After"))
	}
}
