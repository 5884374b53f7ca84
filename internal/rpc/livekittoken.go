package rpc

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rule"
)

// TokenPath serves LiveKit's standard token endpoint, the one
// livekit-client's TokenSource.endpoint and LiveKit's starter apps fetch
// join credentials from.
const TokenPath = "/livekit/token"

// maxTokenRequestBytes bounds a token request. The fields' own bounds are
// far below it; JSON escapes may spell a byte in six.
const maxTokenRequestBytes = 512 << 10

// RoomEntrance creates or joins rooms for the token endpoint;
// *room.Service is one.
type RoomEntrance interface {
	Enter(ctx context.Context, p auth.Principal, e room.Entry) (room.Room, room.JoinInfo, error)
}

// tokenRequest is LiveKit's TokenSourceRequest in the JSON TokenSource.endpoint
// sends: proto field names, unset fields left out.
type tokenRequest struct {
	RoomName              string            `json:"room_name"`
	ParticipantName       string            `json:"participant_name"`
	ParticipantIdentity   string            `json:"participant_identity"`
	ParticipantMetadata   string            `json:"participant_metadata"`
	ParticipantAttributes map[string]string `json:"participant_attributes"`
	// RoomConfig is kept raw: of LiveKit's RoomConfiguration, a caller may
	// set only the agent dispatch (see roomConfig).
	RoomConfig json.RawMessage `json:"room_config"`
}

// agentDispatch is LiveKit's RoomAgentDispatch, as a caller may send it.
type agentDispatch struct {
	AgentName  string `json:"agent_name"`
	Metadata   string `json:"metadata"`
	Deployment string `json:"deployment"`
}

// tokenResponse is LiveKit's TokenSourceResponse, with what LiveKit's own
// token servers add (participant and room names) and Parley's ids.
type tokenResponse struct {
	ServerURL           string `json:"server_url"`
	ParticipantToken    string `json:"participant_token"`
	ParticipantIdentity string `json:"participant_identity"`
	RoomName            string `json:"room_name"`
	RoomID              string `json:"room_id"`
	ConversationID      string `json:"conversation_id,omitempty"`
	ExpiresAt           string `json:"expires_at"`
}

// tokenHandler serves POST /livekit/token: authenticated like every RPC
// (the admission has counted it against the caller's rate limit), observed
// like one, with errors in Connect's JSON form and HTTP status.
type tokenHandler struct {
	rooms RoomEntrance
	auth  *authenticator
	obs   *observer
	errs  *connect.ErrorWriter
	log   *slog.Logger
}

func (h *tokenHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r.Header.Get("X-Request-Id"))
	w.Header().Set("X-Request-Id", id)
	res, err := h.serve(w, r)
	if err != nil {
		_ = h.errs.Write(w, r, err)
	} else {
		body, _ := json.Marshal(res) // strings only
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	}
	h.obs.done(r.Context(), TokenPath, id, r.RemoteAddr, start, err)
}

func (h *tokenHandler) serve(w http.ResponseWriter, r *http.Request) (*tokenResponse, error) {
	ctx, err := h.auth.authenticate(r.Context(), TokenPath, r.Header.Get("Authorization"))
	if err != nil {
		return nil, err
	}
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, h.log, err)
	}
	e, err := readTokenRequest(w, r)
	if err != nil {
		return nil, toConnectError(ctx, h.log, err)
	}
	rm, join, err := h.rooms.Enter(ctx, p, e)
	if err != nil {
		return nil, toConnectError(ctx, h.log, err)
	}
	res := &tokenResponse{
		ServerURL:           join.URL,
		ParticipantToken:    join.Token,
		ParticipantIdentity: p.ID.String(),
		RoomName:            rm.LiveKitRoom,
		RoomID:              rm.ID.String(),
		ExpiresAt:           join.ExpiresAt.UTC().Format(time.RFC3339),
	}
	if rm.ConversationID != uuid.Nil {
		res.ConversationID = rm.ConversationID.String()
	}
	return res, nil
}

// readTokenRequest parses a token request strictly: JSON of the known
// fields only, once, in valid UTF-8, without U+0000. What the caller may
// not set is refused here when it is LiveKit's format that names it, and
// by the room service when it is Parley's rule.
func readTokenRequest(w http.ResponseWriter, r *http.Request) (room.Entry, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return room.Entry{}, invalidToken("Content-Type must be application/json")
	}
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return room.Entry{}, invalidToken("Content-Encoding is not supported")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenRequestBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return room.Entry{}, bodyTooLargeError(maxTokenRequestBytes)
	case err != nil:
		return room.Entry{}, fmt.Errorf("read token request: %w", rule.Broken("request body could not be read"))
	case !utf8.Valid(body):
		// encoding/json would replace the bytes silently.
		return room.Entry{}, invalidToken("request body must be UTF-8")
	}
	var req tokenRequest
	if err := decodeStrict(body, &req); err != nil {
		return room.Entry{}, invalidToken("request body: " + err.Error())
	}
	e := room.Entry{
		RoomName:   req.RoomName,
		Identity:   req.ParticipantIdentity,
		Name:       req.ParticipantName,
		Metadata:   req.ParticipantMetadata,
		Attributes: req.ParticipantAttributes,
	}
	for name, v := range map[string]string{"room_name": e.RoomName, "participant_identity": e.Identity, "participant_name": e.Name} {
		if hasControl(v) {
			return room.Entry{}, invalidToken(name + " must not contain control characters")
		}
	}
	if len(req.RoomConfig) > 0 && !bytes.Equal(req.RoomConfig, []byte("null")) {
		d, err := roomConfig(req.RoomConfig)
		if err != nil {
			return room.Entry{}, err
		}
		if d != nil {
			e.AgentName, e.AgentMetadata = d.AgentName, d.Metadata
		}
	}
	if hasControl(e.AgentName) || strings.ContainsRune(e.AgentMetadata, 0) {
		return room.Entry{}, invalidToken("room_config.agents[0]: agent_name must not contain control characters, nor metadata U+0000")
	}
	return e, nil
}

// roomConfig reads the room_config of a token request: LiveKit's
// RoomConfiguration, of which Parley lets a caller set only agents, one
// dispatch at most. The rest (egress, timeouts, metadata, the name) is
// Parley's to decide, and refused.
func roomConfig(raw json.RawMessage) (*agentDispatch, error) {
	var fields map[string]json.RawMessage
	if err := decodeStrict(raw, &fields); err != nil {
		return nil, invalidToken("room_config: " + err.Error())
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range fields {
			if !yield(k) {
				return
			}
		}
	}) {
		if k != "agents" {
			return nil, &notSettableError{msg: fmt.Sprintf("room_config.%s may not be set: a caller may set only room_config.agents", k)}
		}
	}
	var agents []agentDispatch
	if err := decodeStrict(fields["agents"], &agents); err != nil {
		return nil, invalidToken("room_config.agents: " + err.Error())
	}
	switch {
	case len(agents) == 0:
		return nil, nil
	case len(agents) > 1:
		return nil, invalidToken("room_config.agents may hold one dispatch")
	case agents[0].Deployment != "":
		return nil, invalidToken("room_config.agents[0].deployment is not supported")
	}
	return &agents[0], nil
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// Not the decoder's text, which names Go types.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%s must not be a JSON %s", cmp.Or(te.Field, "the body"), te.Value)
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("one JSON object expected")
	}
	return nil
}

// invalidToken is a token request that breaks the endpoint's format.
func invalidToken(msg string) error { return rule.Broken(msg) }

// errNotSettable is wrapped by a *notSettableError.
var errNotSettable = errors.New("a field the caller may not set")

// notSettableError is a token request field of LiveKit's format that only
// Parley sets (room_config's egress, timeouts, metadata...).
type notSettableError struct{ msg string }

func (e *notSettableError) Error() string         { return e.msg }
func (e *notSettableError) Unwrap() error         { return errNotSettable }
func (e *notSettableError) PublicMessage() string { return e.msg }

// hasControl reports whether s holds a C0 control character or DEL, which
// no name or identity needs and logs and UIs render badly.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(c rune) bool { return c < 0x20 || c == 0x7f })
}
