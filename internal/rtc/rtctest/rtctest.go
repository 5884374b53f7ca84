// Package rtctest is a fake LiveKit server for tests, built on LiveKit's own
// wire protocol: the Twirp RoomService, AgentDispatchService and Egress
// servers generated in github.com/livekit/protocol, behind the same bearer-token
// check (HS256 with the API secret, per-method grants) a real server makes.
// It records what it was asked. It also signs webhook requests the way
// LiveKit's notifier does.
package rtctest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/utils/protojson"
	"github.com/livekit/protocol/webhook"
	"github.com/twitchtv/twirp"
	"google.golang.org/protobuf/proto"
)

// Server is a fake LiveKit server on an httptest server.
type Server struct {
	// URL is the server's base URL, for rtc.Config.URL.
	URL       string
	APIKey    string
	APISecret string

	srv *httptest.Server

	mu           sync.Mutex
	rooms        map[string]*livekit.Room
	sids         int
	egresses     []*livekit.EgressInfo
	created      []*livekit.CreateRoomRequest
	dispatches   []*livekit.CreateAgentDispatchRequest
	deleted      []string
	failDeletes  int
	unauthorized int
}

// NewServer starts a fake LiveKit accepting tokens signed by apiKey and
// apiSecret. It is closed at the test's cleanup.
func NewServer(t testing.TB, apiKey, apiSecret string) *Server {
	t.Helper()
	s := &Server{APIKey: apiKey, APISecret: apiSecret, rooms: map[string]*livekit.Room{}}
	rooms := livekit.NewRoomServiceServer(&roomService{s: s})
	dispatch := livekit.NewAgentDispatchServiceServer(&dispatchService{s: s})
	egress := livekit.NewEgressServer(&egressService{s: s})
	mux := http.NewServeMux()
	mux.Handle(rooms.PathPrefix(), s.authenticate(rooms))
	mux.Handle(dispatch.PathPrefix(), s.authenticate(dispatch))
	mux.Handle(egress.PathPrefix(), s.authenticate(egress))
	s.srv = httptest.NewServer(mux)
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the server: from then on Parley finds LiveKit down
// (connections refused).
func (s *Server) Close() { s.srv.Close() }

// FailDeletes makes the next n DeleteRoom calls fail with an internal error.
func (s *Server) FailDeletes(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failDeletes = n
}

// CreatedRooms returns every CreateRoom request received, in order.
func (s *Server) CreatedRooms() []*livekit.CreateRoomRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneAll(s.created)
}

// Dispatches returns every CreateDispatch request received, in order.
func (s *Server) Dispatches() []*livekit.CreateAgentDispatchRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneAll(s.dispatches)
}

// DeletedRooms returns the names of the rooms DeleteRoom was called for
// (successful calls only), in order.
func (s *Server) DeletedRooms() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.deleted...)
}

// StartRoom opens the room as a first join does (no CreateRoom, or one
// that never reached the server) and returns its new sid.
func (s *Server) StartRoom(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openRoom(name, "").Sid
}

// RoomSID returns the sid of the open room, "" if there is none.
func (s *Server) RoomSID(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rooms[name].GetSid()
}

// CloseRoom closes the open room as LiveKit does once it has emptied (or
// was deleted elsewhere), sending no webhook.
func (s *Server) CloseRoom(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.rooms, name)
}

// AddEgress records an egress as LiveKit's egress service would, for
// ListEgress to find.
func (s *Server) AddEgress(info *livekit.EgressInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.egresses = append(s.egresses, proto.Clone(info).(*livekit.EgressInfo))
}

// openRoom opens a room under a new sid; s.mu is held.
func (s *Server) openRoom(name, metadata string) *livekit.Room {
	s.sids++
	r := &livekit.Room{Sid: fmt.Sprintf("RM_%d", s.sids), Name: name, Metadata: metadata, CreationTime: time.Now().Unix()}
	s.rooms[name] = r
	return r
}

// Unauthorized returns how many requests the token check refused.
func (s *Server) Unauthorized() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unauthorized
}

func cloneAll[M proto.Message](ms []M) []M {
	out := make([]M, len(ms))
	for i, m := range ms {
		out[i] = proto.Clone(m).(M)
	}
	return out
}

type grantsKey struct{}

// authenticate checks the bearer token as LiveKit does: signed with the
// secret of the key it names, not expired. The grants go to the methods.
func (s *Server) authenticate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		grants, err := s.verify(raw)
		if !ok || err != nil {
			s.mu.Lock()
			s.unauthorized++
			s.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"code":"unauthenticated","msg":%q}`, fmt.Sprint("invalid token: ", err))
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), grantsKey{}, grants)))
	})
}

func (s *Server) verify(raw string) (*auth.ClaimGrants, error) {
	v, err := auth.ParseAPIToken(raw)
	if err != nil {
		return nil, err
	}
	if v.APIKey() != s.APIKey {
		return nil, fmt.Errorf("unknown API key %q", v.APIKey())
	}
	_, grants, err := v.Verify(s.APISecret)
	return grants, err
}

// require answers permission_denied unless the token's video grant allows ok.
func require(ctx context.Context, ok func(*auth.VideoGrant) bool) error {
	g, _ := ctx.Value(grantsKey{}).(*auth.ClaimGrants)
	if g == nil || g.Video == nil || !ok(g.Video) {
		return twirp.NewError(twirp.PermissionDenied, "permissions denied")
	}
	return nil
}

type roomService struct {
	livekit.RoomService // methods Parley does not call are absent
	s                   *Server
}

func (rs *roomService) CreateRoom(ctx context.Context, req *livekit.CreateRoomRequest) (*livekit.Room, error) {
	if err := require(ctx, func(g *auth.VideoGrant) bool { return g.RoomCreate }); err != nil {
		return nil, err
	}
	if req.GetName() == "" {
		return nil, twirp.RequiredArgumentError("name")
	}
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.created = append(s.created, proto.Clone(req).(*livekit.CreateRoomRequest))
	if r, ok := s.rooms[req.GetName()]; ok {
		return proto.Clone(r).(*livekit.Room), nil
	}
	return proto.Clone(s.openRoom(req.GetName(), req.GetMetadata())).(*livekit.Room), nil
}

func (rs *roomService) DeleteRoom(ctx context.Context, req *livekit.DeleteRoomRequest) (*livekit.DeleteRoomResponse, error) {
	if err := require(ctx, func(g *auth.VideoGrant) bool { return g.RoomCreate }); err != nil {
		return nil, err
	}
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failDeletes > 0 {
		s.failDeletes--
		return nil, twirp.InternalError("injected failure")
	}
	if _, ok := s.rooms[req.GetRoom()]; !ok {
		return nil, twirp.NotFoundError("room not found")
	}
	delete(s.rooms, req.GetRoom())
	s.deleted = append(s.deleted, req.GetRoom())
	return &livekit.DeleteRoomResponse{}, nil
}

func (rs *roomService) ListRooms(ctx context.Context, req *livekit.ListRoomsRequest) (*livekit.ListRoomsResponse, error) {
	if err := require(ctx, func(g *auth.VideoGrant) bool { return g.RoomList }); err != nil {
		return nil, err
	}
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	res := &livekit.ListRoomsResponse{}
	for _, r := range s.rooms {
		if len(req.GetNames()) == 0 || slices.Contains(req.GetNames(), r.GetName()) {
			res.Rooms = append(res.Rooms, proto.Clone(r).(*livekit.Room))
		}
	}
	return res, nil
}

type egressService struct {
	livekit.Egress // methods Parley does not call are absent
	s              *Server
}

// ListEgress filters as LiveKit does: by room name and egress id when given.
func (es *egressService) ListEgress(ctx context.Context, req *livekit.ListEgressRequest) (*livekit.ListEgressResponse, error) {
	if err := require(ctx, func(g *auth.VideoGrant) bool { return g.RoomRecord }); err != nil {
		return nil, err
	}
	s := es.s
	s.mu.Lock()
	defer s.mu.Unlock()
	res := &livekit.ListEgressResponse{}
	for _, info := range s.egresses {
		if (req.GetRoomName() == "" || info.GetRoomName() == req.GetRoomName()) &&
			(req.GetEgressId() == "" || info.GetEgressId() == req.GetEgressId()) {
			res.Items = append(res.Items, proto.Clone(info).(*livekit.EgressInfo))
		}
	}
	return res, nil
}

type dispatchService struct {
	livekit.AgentDispatchService // methods Parley does not call are absent
	s                            *Server
}

func (ds *dispatchService) CreateDispatch(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	if err := require(ctx, func(g *auth.VideoGrant) bool { return g.RoomAdmin && g.Room == req.GetRoom() }); err != nil {
		return nil, err
	}
	s := ds.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dispatches = append(s.dispatches, proto.Clone(req).(*livekit.CreateAgentDispatchRequest))
	return &livekit.AgentDispatch{
		Id:        fmt.Sprintf("AD_%d", len(s.dispatches)),
		AgentName: req.GetAgentName(),
		Room:      req.GetRoom(),
		Metadata:  req.GetMetadata(),
	}, nil
}

// BlackHole returns the URL of a server that accepts connections and never
// answers: LiveKit hung rather than down. It is closed at cleanup.
func BlackHole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("rtctest: listen: %v", err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// WebhookRequest returns a POST of ev to url signed as LiveKit's webhook
// notifier signs it: the proto JSON body, and an Authorization token signed
// with the API secret, valid for five minutes, carrying the body's SHA-256.
func WebhookRequest(ctx context.Context, url, apiKey, apiSecret string, ev *livekit.WebhookEvent) (*http.Request, error) {
	body, err := protojson.Marshal(ev)
	if err != nil {
		return nil, err
	}
	token, err := auth.NewAccessToken(apiKey, apiSecret).
		SetValidFor(5 * time.Minute).
		SetSha256(bodySum(body)).
		ToJWT()
	if err != nil {
		return nil, err
	}
	return webhookRequest(ctx, url, body, token)
}

// StaleWebhookRequest is WebhookRequest with a token that expired age ago,
// as a replayed capture would carry.
func StaleWebhookRequest(ctx context.Context, url, apiKey, apiSecret string, ev *livekit.WebhookEvent, age time.Duration) (*http.Request, error) {
	body, err := protojson.Marshal(ev)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss":    apiKey,
		"nbf":    now.Add(-age - 5*time.Minute).Unix(),
		"exp":    now.Add(-age).Unix(),
		"sha256": bodySum(body),
	}).SignedString([]byte(apiSecret))
	if err != nil {
		return nil, err
	}
	return webhookRequest(ctx, url, body, token)
}

func bodySum(body []byte) string {
	sum := sha256.Sum256(body)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func webhookRequest(ctx context.Context, url string, body []byte, token string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	req.Header.Set("Content-Type", webhook.ContentType)
	return req, nil
}
