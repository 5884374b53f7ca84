// Package rtc adapts LiveKit to Parley's room domain with LiveKit's own
// server SDK: rooms, agent dispatches and egress look-ups through the Twirp
// server API, join tokens signed with the API secret, and webhook requests
// verified against it.
package rtc

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/webhook"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/parley-dev/parley/internal/room"
)

const (
	defaultTokenTTL = time.Hour
	defaultTimeout  = time.Second
)

// Config says which LiveKit server to use and how.
type Config struct {
	// URL is the server's URL as Parley reaches it (ws, wss, http or https).
	URL string
	// PublicURL is the URL handed to clients; "" means URL.
	PublicURL string
	APIKey    string
	APISecret string
	// AgentName is the agent dispatched into a room whose Spec names none;
	// "" for none.
	AgentName string
	// TokenTTL is the lifetime of join tokens (default 1h).
	TokenTTL time.Duration
	// Timeout bounds each server API call; CreateRoom's room and dispatch
	// share one (default 1s). Parley's requests wait at most this long
	// for an unreachable or slow LiveKit.
	Timeout time.Duration
}

// Client is a LiveKit server, as the room domain uses it. It implements
// room.MediaServer and verifies webhook requests. It is safe for concurrent use.
type Client struct {
	cfg      Config
	rooms    *lksdk.RoomServiceClient
	dispatch *lksdk.AgentDispatchClient
	egress   *lksdk.EgressClient
	keys     auth.KeyProvider
}

var _ room.MediaServer = (*Client)(nil)

// New returns a Client for cfg. It does not contact the server.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" || cfg.APIKey == "" || cfg.APISecret == "" {
		return nil, errors.New("rtc: LiveKit URL, API key and API secret are required")
	}
	if cfg.PublicURL == "" {
		cfg.PublicURL = cfg.URL
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = defaultTokenTTL
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	return &Client{
		cfg:      cfg,
		rooms:    lksdk.NewRoomServiceClient(cfg.URL, cfg.APIKey, cfg.APISecret),
		dispatch: lksdk.NewAgentDispatchServiceClient(cfg.URL, cfg.APIKey, cfg.APISecret),
		egress:   lksdk.NewEgressClient(cfg.URL, cfg.APIKey, cfg.APISecret),
		keys:     auth.NewSimpleKeyProvider(cfg.APIKey, cfg.APISecret),
	}, nil
}

// CreateRoom implements room.MediaServer: the room with its metadata, then the
// agent's explicit dispatch with its job metadata (which carries the
// conversation id too, since an agent may start before room metadata
// reaches it).
func (c *Client) CreateRoom(ctx context.Context, s room.Spec) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	lr, err := c.rooms.CreateRoom(ctx, &livekit.CreateRoomRequest{Name: s.Name, Metadata: s.Metadata})
	if err != nil {
		return "", fmt.Errorf("livekit create room %s: %w", s.Name, err)
	}
	d := c.dispatchOf(s)
	if d == nil {
		return lr.GetSid(), nil
	}
	_, err = c.dispatch.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{
		AgentName: d.GetAgentName(),
		Room:      s.Name,
		Metadata:  d.GetMetadata(),
	})
	if err != nil {
		return lr.GetSid(), fmt.Errorf("livekit dispatch agent %s to %s: %w", d.GetAgentName(), s.Name, err)
	}
	return lr.GetSid(), nil
}

// dispatchOf is the agent dispatch of s, nil when there is no agent: the
// same for CreateDispatch and a join token's room configuration.
func (c *Client) dispatchOf(s room.Spec) *livekit.RoomAgentDispatch {
	agent, md := s.AgentName, s.DispatchMetadata
	if agent == "" {
		agent = c.cfg.AgentName
	}
	if agent == "" {
		return nil
	}
	if md == "" {
		md = s.Metadata
	}
	return &livekit.RoomAgentDispatch{AgentName: agent, Metadata: md}
}

// Egress implements room.MediaServer with ListEgress, filtered by room and id.
func (c *Client) Egress(ctx context.Context, roomName, id string) (room.Egress, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	res, err := c.egress.ListEgress(ctx, &livekit.ListEgressRequest{RoomName: roomName, EgressId: id})
	var te twirp.Error
	if errors.As(err, &te) && te.Code() == twirp.NotFound {
		return room.Egress{}, room.ErrEgressNotFound
	}
	if err != nil {
		return room.Egress{}, fmt.Errorf("livekit list egress %s: %w", id, err)
	}
	// The filters are LiveKit's to apply; the answer is checked anyway.
	for _, info := range res.GetItems() {
		if info.GetEgressId() == id && info.GetRoomName() == roomName {
			return room.Egress{ID: id, RoomName: roomName, RoomSID: info.GetRoomId(), Recordings: recordingsOf(info), State: egressState(info)}, nil
		}
	}
	return room.Egress{}, room.ErrEgressNotFound
}

// ListRooms implements room.MediaServer.
func (c *Client) ListRooms(ctx context.Context, names []string) ([]room.LiveRoom, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	res, err := c.rooms.ListRooms(ctx, &livekit.ListRoomsRequest{Names: names})
	if err != nil {
		return nil, fmt.Errorf("livekit list rooms: %w", err)
	}
	out := make([]room.LiveRoom, 0, len(res.GetRooms()))
	for _, r := range res.GetRooms() {
		out = append(out, room.LiveRoom{Name: r.GetName(), SID: r.GetSid()})
	}
	return out, nil
}

// DeleteRoom implements room.MediaServer.
func (c *Client) DeleteRoom(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	_, err := c.rooms.DeleteRoom(ctx, &livekit.DeleteRoomRequest{Room: name})
	var te twirp.Error
	if errors.As(err, &te) && te.Code() == twirp.NotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("livekit delete room %s: %w", name, err)
	}
	return nil
}

// JoinToken implements room.MediaServer. The token lets g join exactly the room
// of s, publish and subscribe, and carries the room's configuration
// (metadata and agent dispatch), which LiveKit applies when the join is what
// creates the room.
func (c *Client) JoinToken(s room.Spec, g room.Grant) (room.JoinInfo, error) {
	grant := &auth.VideoGrant{RoomJoin: true, Room: s.Name}
	grant.SetCanPublish(true)
	grant.SetCanSubscribe(true)
	grant.SetCanPublishData(true)
	cfg := &livekit.RoomConfiguration{Name: s.Name, Metadata: s.Metadata}
	if d := c.dispatchOf(s); d != nil {
		cfg.Agents = []*livekit.RoomAgentDispatch{d}
	}
	at := auth.NewAccessToken(c.cfg.APIKey, c.cfg.APISecret).
		SetVideoGrant(grant).
		SetIdentity(g.Identity).
		SetName(g.Name).
		SetMetadata(g.Metadata).
		SetAttributes(g.Attributes).
		SetValidFor(c.cfg.TokenTTL).
		SetRoomConfig(cfg)
	// The token's exp is whole seconds from a clock read inside ToJWT;
	// truncating an earlier read never promises more than the token holds.
	expires := time.Now().Add(c.cfg.TokenTTL).Truncate(time.Second)
	token, err := at.ToJWT()
	if err != nil {
		return room.JoinInfo{}, fmt.Errorf("livekit join token: %w", err)
	}
	return room.JoinInfo{URL: c.cfg.PublicURL, Token: token, ExpiresAt: expires}, nil
}

// Verify reads a webhook request and returns its event if LiveKit signed it
// with this client's API key and secret: the Authorization header must be a
// current token signed with the secret whose sha256 claim matches the body.
// Any other request is room.ErrInvalidWebhook. It consumes the body.
func (c *Client) Verify(r *http.Request) (room.Event, error) {
	if !canonicalToken(r.Header.Get("Authorization")) {
		return room.Event{}, fmt.Errorf("%w: malformed authorization token", room.ErrInvalidWebhook)
	}
	ev, err := webhook.ReceiveWebhookEvent(r, c.keys)
	if err != nil {
		return room.Event{}, fmt.Errorf("%w: %w", room.ErrInvalidWebhook, err)
	}
	return eventOf(ev), nil
}

// canonicalToken reports whether s is a compact JWS whose three segments
// are base64url in their one spelling. LiveKit's parser skips CR and LF and
// ignores a segment's spare bits, so altered tokens would verify.
func canonicalToken(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
			return false
		}
	}
	return true
}

// eventOf reduces a LiveKit webhook event to the domain's.
func eventOf(ev *livekit.WebhookEvent) room.Event {
	e := room.Event{ID: ev.GetId(), LiveKitRoom: ev.GetRoom().GetName(), RoomSID: ev.GetRoom().GetSid()}
	if ts := ev.GetCreatedAt(); ts > 0 {
		e.At = time.Unix(ts, 0).UTC()
	}
	participant := func() room.Participant {
		p := ev.GetParticipant()
		return room.Participant{SessionID: p.GetSid(), Identity: p.GetIdentity(), Name: p.GetName(), Kind: kindOf(p)}
	}
	egress := func() {
		info := ev.GetEgressInfo()
		if e.LiveKitRoom == "" {
			e.LiveKitRoom, e.RoomSID = info.GetRoomName(), info.GetRoomId()
		}
		e.EgressID = info.GetEgressId()
		e.Egress = egressState(info)
	}
	switch ev.GetEvent() {
	case webhook.EventRoomStarted:
		e.Kind = room.EventRoomStarted
	case webhook.EventRoomFinished:
		e.Kind = room.EventRoomFinished
	case webhook.EventParticipantJoined:
		e.Kind = room.EventParticipantJoined
		e.Participant = participant()
	case webhook.EventParticipantLeft, webhook.EventParticipantConnectionAborted:
		e.Kind = room.EventParticipantLeft
		e.Participant = participant()
	case webhook.EventTrackPublished:
		e.Kind = room.EventTrackPublished
		e.Participant = participant()
		t := ev.GetTrack()
		e.Track = room.Track{SID: t.GetSid(), Type: strings.ToLower(t.GetType().String()), PublishedAt: e.At}
		if src := t.GetSource(); src != livekit.TrackSource_UNKNOWN {
			e.Track.Source = strings.ToLower(src.String())
		}
	case webhook.EventEgressStarted:
		e.Kind = room.EventEgressStarted
		egress()
	case webhook.EventEgressUpdated:
		e.Kind = room.EventEgressUpdated
		egress()
	case webhook.EventEgressEnded:
		e.Kind = room.EventEgressEnded
		egress()
		e.Recordings = recordingsOf(ev.GetEgressInfo())
	}
	return e
}

// kindOf is who a participant is: LiveKit's kind, and for a standard
// participant the agents' identity convention ("agent-" and the job id),
// which older agent frameworks keep to without the kind.
func kindOf(p *livekit.ParticipantInfo) room.ParticipantKind {
	switch p.GetKind() {
	case livekit.ParticipantInfo_AGENT:
		return room.KindAgent
	case livekit.ParticipantInfo_EGRESS, livekit.ParticipantInfo_INGRESS:
		return room.KindOther
	case livekit.ParticipantInfo_SIP:
		return room.KindUser
	}
	if strings.HasPrefix(p.GetIdentity(), "agent-") {
		return room.KindAgent
	}
	return room.KindUser
}

// egressState is an egress's state with LiveKit's times (nanoseconds).
func egressState(info *livekit.EgressInfo) room.EgressState {
	at := func(ns int64) time.Time {
		if ns <= 0 {
			return time.Time{}
		}
		return time.Unix(0, ns).UTC()
	}
	st := room.EgressState{StartedAt: at(info.GetStartedAt()), EndedAt: at(info.GetEndedAt()), UpdatedAt: at(info.GetUpdatedAt())}
	switch info.GetStatus() {
	case livekit.EgressStatus_EGRESS_STARTING:
		st.Status = room.EgressStarting
	case livekit.EgressStatus_EGRESS_ACTIVE:
		st.Status = room.EgressActive
	case livekit.EgressStatus_EGRESS_ENDING:
		st.Status = room.EgressEnding
	case livekit.EgressStatus_EGRESS_COMPLETE:
		st.Status = room.EgressComplete
	case livekit.EgressStatus_EGRESS_FAILED:
		st.Status = room.EgressFailed
	case livekit.EgressStatus_EGRESS_ABORTED:
		st.Status = room.EgressAborted
	case livekit.EgressStatus_EGRESS_LIMIT_REACHED:
		st.Status = room.EgressLimitReached
	}
	return st
}

// recordingsOf returns the files a finished egress wrote. A failed or
// aborted egress left nothing worth referencing; one that hit its limit
// did write its file.
func recordingsOf(info *livekit.EgressInfo) []room.Recording {
	switch info.GetStatus() {
	case livekit.EgressStatus_EGRESS_COMPLETE, livekit.EgressStatus_EGRESS_LIMIT_REACHED:
	default:
		return nil
	}
	var out []room.Recording
	for _, f := range info.GetFileResults() {
		// Filename is the blob name egress wrote (its filepath); Location
		// is the storage URL, which names no blob in Parley's terms.
		if f.GetFilename() == "" {
			continue
		}
		out = append(out, room.Recording{
			EgressID:    info.GetEgressId(),
			BlobName:    f.GetFilename(),
			Location:    f.GetLocation(),
			Filename:    path.Base(f.GetFilename()),
			SizeBytes:   f.GetSize(),
			ContentType: contentTypeOf(f.GetFilename()),
		})
	}
	return out
}

// contentTypeOf names the container egress wrote, by extension; a switch
// rather than mime.TypeByExtension, whose answers depend on the host.
func contentTypeOf(name string) string {
	switch strings.ToLower(path.Ext(name)) {
	case ".mp4":
		return "video/mp4"
	case ".m4a":
		return "audio/mp4"
	case ".ogg":
		return "audio/ogg"
	case ".webm":
		return "video/webm"
	case ".mp3":
		return "audio/mpeg"
	case ".wav":
		return "audio/wav"
	case ".ts":
		return "video/mp2t"
	case ".m3u8":
		return "application/vnd.apple.mpegurl"
	default:
		return "application/octet-stream"
	}
}
