package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/keyset"
	"github.com/parley-dev/parley/internal/room"
)

// parleyMessages are every message type of package parley.v1, requests and
// answers, present and future, in name order.
func parleyMessages() []protoreflect.MessageType {
	var out []protoreflect.MessageType
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if mt.Descriptor().ParentFile().Package() == "parley.v1" {
			out = append(out, mt)
		}
		return true
	})
	slices.SortFunc(out, func(a, b protoreflect.MessageType) int {
		return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
	})
	return out
}

// sameJSON reports whether a and b are the same JSON value.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var av, bv any
	if err := json.Unmarshal(a, &av); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, a)
	}
	if err := json.Unmarshal(b, &bv); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return reflect.DeepEqual(av, bv)
}

// FuzzJSONCodecUnmarshal decodes any bytes into any parley.v1 message, as
// the Connect JSON codec does for requests, with protojson as the oracle:
// the codec accepts exactly what protojson (discarding unknown fields)
// accepts, with the same result. What it accepts it writes back, through
// the fast path where there is one, as protojson writes it, and reads that
// back unchanged.
func FuzzJSONCodecUnmarshal(f *testing.F) {
	types := parleyMessages()
	index := func(name protoreflect.FullName) uint8 {
		for i, mt := range types {
			if mt.Descriptor().FullName() == name {
				return uint8(i)
			}
		}
		f.Fatalf("no message %s", name)
		return 0
	}
	for _, s := range []struct {
		msg  protoreflect.FullName
		json string
	}{
		{"parley.v1.SaveTurnRequest", `{"conversationId":"00000000-0000-0000-0000-000000000001","turnId":"t-1","userMessage":"hi","assistantMessage":"hello"}`},
		{"parley.v1.SaveTurnRequest", `{"conversation_id":"x","user_message":"\u0000\ud800","unknown":{"a":[1,2,{}]}}`},
		{"parley.v1.ListMessagesRequest", `{"conversationId":"c","pageSize":50,"pageToken":"AQE","order":"ORDER_OLDEST_FIRST"}`},
		{"parley.v1.ListMessagesRequest", `{"pageSize":"1e2","order":2}`},
		{"parley.v1.ListMessagesResponse", `{"conversationId":"c","messages":[{"id":"m","seq":"9007199254740993","role":"ROLE_ASSISTANT","content":"tab\t\"q\" <b> \u2028 🎙️","createdAt":"2026-11-25T12:00:00.120Z"},{"role":42,"createdAt":"0001-01-01T00:00:00Z"}],"nextPageToken":"n"}`},
		{"parley.v1.SaveTurnResponse", `{"messages":[{"seq":-5,"createdAt":"9999-12-31T23:59:59.999999999Z"},{}],"replayed":true}`},
		{"parley.v1.SaveTurnResponse", `{"messages":[null]}`},
		{"parley.v1.RegisterRequest", `{"email":"ada@example.com","password":"correct horse battery","displayName":"Ada"}`},
		{"parley.v1.CreateUploadRequest", `{"sizeBytes":"-1","contentType":"text/plain"}`},
		{"parley.v1.UploadFileRequest", `{"data":"aGVsbG8="}`},
		{"parley.v1.UploadFileRequest", `{"data":"aGVsbG8"}`},
		{"parley.v1.RegisterRequest", ``},
		{"parley.v1.RegisterRequest", `[]`},
	} {
		f.Add(index(s.msg), []byte(s.json))
	}
	codec := &jsonCodec{name: "json", fast: fastJSONMatchesSchema()}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		mt := types[int(which)%len(types)]
		got, want := mt.New().Interface(), mt.New().Interface()
		err := codec.Unmarshal(data, got)
		oracle := protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, want)
		if len(data) == 0 {
			oracle = fmt.Errorf("empty")
		}
		if (err == nil) != (oracle == nil) {
			t.Fatalf("%s: codec %v, protojson %v\n%q", mt.Descriptor().FullName(), err, oracle, data)
		}
		if err != nil {
			return
		}
		if !proto.Equal(got, want) {
			t.Fatalf("%s: codec read %v, protojson %v", mt.Descriptor().FullName(), got, want)
		}
		checkMarshal(t, codec, got)
	})
}

// checkMarshal compares the codec's answer for m with protojson's and
// reads it back.
func checkMarshal(t *testing.T, codec *jsonCodec, m proto.Message) {
	t.Helper()
	out, err := codec.Marshal(m)
	slow, slowErr := protojson.Marshal(m)
	if (err == nil) != (slowErr == nil) {
		t.Fatalf("marshal %v: codec %v, protojson %v", m, err, slowErr)
	}
	if err != nil {
		return
	}
	if !sameJSON(t, out, slow) {
		t.Fatalf("codec and protojson differ:\ncodec     %s\nprotojson %s", out, slow)
	}
	back := m.ProtoReflect().New().Interface()
	if err := codec.Unmarshal(out, back); err != nil || !proto.Equal(back, m) {
		t.Fatalf("round trip of %s: %v, got %v", out, err, back)
	}
	stable, err := codec.MarshalStable(m)
	if err != nil || !sameJSON(t, stable, out) {
		t.Fatalf("MarshalStable = %s, %v; want %s", stable, err, out)
	}
}

// FuzzJSONCodecMarshal builds the answers the fast path writes from any
// field values, including invalid UTF-8, unknown roles and timestamps out
// of range, and compares the codec with protojson: both refuse, or both
// write the same JSON, which reads back unchanged.
func FuzzJSONCodecMarshal(f *testing.F) {
	f.Add(true, "00000000-0000-0000-0000-000000000001", "tab\t\"q\" \\ <b> \x01\x1f\x7f é 🎙️ \u2028", "turn-1", int64(60), int32(2), int64(1764100000), int32(123456000), true, "bmV4dA")
	f.Add(false, "", "", "", int64(0), int32(0), int64(0), int32(0), false, "")
	f.Add(true, "id", "bad \xff byte", "t", int64(-5), int32(42), int64(253402300800), int32(0), true, "")
	f.Add(false, "id", "x", "t", int64(1<<53+1), int32(-1), int64(-62135596800), int32(-1), true, "")
	f.Add(true, "\xc3", "ok", "", int64(1), int32(1), int64(-62135596801), int32(999999999), true, "\xed\xa0\x80")
	codec := &jsonCodec{name: "json", fast: true}
	f.Fuzz(func(t *testing.T, list bool, id, content, turnID string, seq int64, role int32, secs int64, nanos int32, stamped bool, token string) {
		m := &parleyv1.Message{Id: id, ConversationId: id, Seq: seq, Role: parleyv1.Role(role), Content: content, TurnId: turnID}
		if stamped {
			m.CreatedAt = &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}
		}
		ms := []*parleyv1.Message{m, {Content: turnID, Seq: -seq}}
		var msg proto.Message = &parleyv1.SaveTurnResponse{Messages: ms, Replayed: stamped}
		if list {
			msg = &parleyv1.ListMessagesResponse{ConversationId: id, Messages: ms, NextPageToken: token}
		}
		checkMarshal(t, codec, msg)
	})
}

// FuzzClientIP checks the address a request is counted against: the peer
// unless it is a trusted proxy; otherwise an address the forwarding
// headers name; and, once it is an untrusted one, nothing the client adds
// to the left of the header changes it.
func FuzzClientIP(f *testing.F) {
	f.Add("203.0.113.9:4000", "198.51.100.1, 10.0.0.2", "", "10.0.0.0/8", "1.2.3.4")
	f.Add("10.0.0.1:4000", "198.51.100.1, 10.0.0.2", "192.0.2.7", "10.0.0.0/8", "1.2.3.4, 5.6.7.8")
	f.Add("10.0.0.1:4000", "garbage, 10.0.0.2", "", "10.0.0.0/8", "")
	f.Add("[::ffff:10.0.0.1]:4000", "::ffff:198.51.100.1", "", "10.0.0.0/8,::1/128", "::1")
	f.Add("[fe80::1%eth0]:1", "fe80::2%eth0 , ", "10.0.0.3", "fe80::/10", "10.0.0.9")
	f.Add("not an address", "1.1.1.1", "", "0.0.0.0/0", "")
	f.Fuzz(func(t *testing.T, remote, hop1, hop2, trustedList, extra string) {
		var trusted []netip.Prefix
		for s := range strings.SplitSeq(trustedList, ",") {
			if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
				trusted = append(trusted, p.Masked())
			}
		}
		req := func(hops ...string) *http.Request {
			r := &http.Request{RemoteAddr: remote, Header: http.Header{}}
			for _, h := range hops {
				r.Header.Add("X-Forwarded-For", h)
			}
			return r
		}
		peer := remoteAddr(req())
		got := clientIP(req(hop1, hop2), trusted)
		if !isTrusted(peer, trusted) && got != peer {
			t.Fatalf("untrusted peer %v counted as %v", peer, got)
		}
		named := got == peer
		for _, h := range []string{hop1, hop2} {
			for s := range strings.SplitSeq(h, ",") {
				if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil && a.Unmap() == got {
					named = true
				}
			}
		}
		if !named {
			t.Fatalf("counted as %v, which neither the peer %v nor the headers %q %q name", got, peer, hop1, hop2)
		}
		if isTrusted(got, trusted) {
			return
		}
		for _, r := range []*http.Request{req(extra, hop1, hop2), req(extra+","+hop1, hop2)} {
			if again := clientIP(r, trusted); again != got {
				t.Fatalf("%q written left of %q %q moved the address from %v to %v", extra, hop1, hop2, got, again)
			}
		}
	})
}

// restStatus is the HTTP status of each code a REST error may carry.
var restStatus = map[int]int{
	int(connect.CodeInvalidArgument): http.StatusBadRequest, int(connect.CodeUnauthenticated): http.StatusUnauthorized,
	int(connect.CodeNotFound): http.StatusNotFound, int(connect.CodeAlreadyExists): http.StatusConflict,
	int(connect.CodeResourceExhausted): http.StatusTooManyRequests, int(connect.CodeFailedPrecondition): http.StatusBadRequest,
	int(connect.CodePermissionDenied): http.StatusForbidden, int(connect.CodeUnimplemented): http.StatusNotImplemented,
	int(connect.CodeOutOfRange): http.StatusBadRequest, int(connect.CodeAborted): http.StatusConflict,
}

// FuzzREST sends any method, path under /api/v1/, query and body to the
// whole handler (transcoder, interceptors, services, PostgreSQL) as a
// signed-in user. It never answers a server error, answers errors in the
// REST shape, never shows another user's conversation, and a ?limit page
// holds at most limit messages. {ada} and {bob} in the input stand for the
// caller's and another user's conversation.
func FuzzREST(f *testing.F) {
	base := newWholeServer(f, Options{MaxRequestBytes: 1 << 20})
	ada, bob := register(f, base), register(f, base)
	conv := func(token, secret string) string {
		status, _, out := restCall(f, http.MethodPost, base+"/api/v1/conversations", token, `{"title":"`+secret+`"}`)
		if status != http.StatusOK {
			f.Fatalf("create conversation: %d %v", status, out)
		}
		id := out["conversation"].(map[string]any)["id"].(string)
		for i := range 5 {
			body := fmt.Sprintf(`{"conversationId":%q,"turnId":"t-%d","userMessage":%q,"assistantMessage":"ok"}`, id, i, secret)
			if status, _, out := restCall(f, http.MethodPost, base+"/api/v1/conversations/save-turn", token, body); status != http.StatusOK {
				f.Fatalf("save turn: %d %v", status, out)
			}
		}
		return id
	}
	secret := "bob-secret-" + uuid.NewString()
	adaConv, bobConv := conv(ada, "ada's words"), conv(bob, secret)
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, "OPTIONS"}
	for _, s := range []struct {
		method      uint8
		path, query string
		body        string
	}{
		{0, "conversations/{ada}/messages", "limit=3", ""},
		{0, "conversations/{ada}/messages", "limit=2&page_size=7&order=ORDER_OLDEST_FIRST", ""},
		{0, "conversations/{ada}/messages", "limit=1&limit=9&pageToken=AQIB", ""},
		{0, "conversations/{ADA}/messages", "limit=-1", ""},
		{0, "conversations/{bob}/messages", "", ""},
		{0, "conversations/urn:uuid:{bob}/messages", "limit=1", ""},
		{0, "conversations/%7B{bob}%7D/messages", "", ""},
		{0, "conversations/{ada}%2F..%2F{bob}/messages", "", ""},
		{0, "conversations/{ada}/messages", "order=7&page_size=1e3", ""},
		{0, "conversations/{ada}/messages", "foo=1", ""},
		{0, "conversations/{ada}/messages", "page_size=abc", ""},
		{0, "conversations/{ada}/messages", "order=BOGUS", ""},
		{0, "conversations/{ada}/messages", "page_token=%ff", ""},
		{0, "conversations/%ff/messages", "", ""},
		{0, "conversations/{ada}/messages", "conversation_id.x=1", ""},
		{0, "profile", "pageSize=1", ""},
		{0, "conversations/{ada}/messages", "conversation_id={bob}", ""},
		{0, "profile", "", ""},
		{1, "conversations", "", `{"title":"t","roomId":"{bob}"}`},
		{1, "conversations/save-turn", "", `{"conversationId":"{bob}","userMessage":"intruder"}`},
		{1, "conversations/save-turn", "conversationId={bob}", `{"userMessage":"x"}`},
		{1, "rooms", "", `{"name":"standup"}`},
		{1, "auth/logout", "", `{"refreshToken":"prt_x"}`},
		{1, "conversations", "", `{"title": 42`},
		{2, "conversations", "", `{}`},
		{0, "", "", ""},
	} {
		f.Add(s.method, s.path, s.query, []byte(s.body), true)
	}
	expand := func(s string) string {
		return strings.NewReplacer("{ada}", adaConv, "{bob}", bobConv, "{ADA}", strings.ToUpper(adaConv)).Replace(s)
	}
	f.Fuzz(func(t *testing.T, method uint8, path, query string, body []byte, asJSON bool) {
		if strings.Contains(string(body)+path+query, "logout") {
			return // it would spend the caller's token
		}
		target := base + "/api/v1/" + expand(path)
		if query != "" {
			target += "?" + expand(query)
		}
		m := methods[int(method)%len(methods)]
		req, err := http.NewRequestWithContext(t.Context(), m, target, bytes.NewReader([]byte(expand(string(body)))))
		if err != nil || strings.ContainsFunc(req.URL.RequestURI(), func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return // not a request line an HTTP server takes
		}
		req.Header.Set("Authorization", "Bearer "+ada)
		if asJSON {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return // refused by the client or the server's HTTP parser
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode >= 500 {
			t.Fatalf("%s %s: %d %s", m, target, resp.StatusCode, raw)
		}
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("%s %s showed another user's messages: %s", m, target, raw)
		}
		// A path that names no method is a plain 404 or 405, as from any
		// HTTP server; every other refusal is a REST error.
		routeMiss := (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed) &&
			strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain")
		if resp.StatusCode >= 400 && m != http.MethodHead && !routeMiss {
			var e struct {
				Code    *int    `json:"code"`
				Message *string `json:"message"`
			}
			if err := json.Unmarshal(raw, &e); err != nil || e.Code == nil || e.Message == nil || restStatus[*e.Code] != resp.StatusCode {
				t.Fatalf("%s %s: %d %q, want a REST error whose code fits the status", m, target, resp.StatusCode, raw)
			}
		}
		if resp.StatusCode != http.StatusOK || m == http.MethodHead || len(raw) == 0 {
			return
		}
		var out struct {
			ConversationID string           `json:"conversationId"`
			Messages       []map[string]any `json:"messages"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: 200 with a body that is not JSON: %q", m, target, raw)
		}
		if out.ConversationID == bobConv {
			t.Fatalf("%s %s answered for another user's conversation: %s", m, target, raw)
		}
		q, err := url.ParseQuery(req.URL.RawQuery)
		if err != nil || m != http.MethodGet || !strings.HasSuffix(req.URL.Path, "/messages") || len(q["limit"]) != 1 || q.Has("page_size") || q.Has("pageSize") {
			return
		}
		if limit, err := strconv.Atoi(q.Get("limit")); err == nil && len(out.Messages) > limit {
			t.Fatalf("%s %s: %d messages for limit %d", m, target, len(out.Messages), limit)
		}
	})
}

// TestPageTokenBeyondPostgreSQL: a ListConversations token dated before 4714
// BC reached PostgreSQL, which refused the timestamp, and the call answered
// internal (found by keyset.FuzzDecode).
func TestPageTokenBeyondPostgreSQL(t *testing.T) {
	t.Parallel()
	base := newWholeServer(t, Options{MaxRequestBytes: 1 << 20})
	tok := register(t, base)
	page := keyset.Encode(keyset.Conversations, keyset.Position{CreatedAt: time.Date(-4714, 1, 1, 0, 0, 0, 0, time.UTC), ID: uuid.New()})
	status, _, out := restCall(t, http.MethodPost, base+"/parley.v1.ConversationService/ListConversations", tok, fmt.Sprintf(`{"pageToken":%q}`, page))
	if status != http.StatusBadRequest || out["code"] != "invalid_argument" {
		t.Fatalf("ListConversations with a token before year 1: %d %v, want 400 invalid_argument", status, out)
	}
}

// TestRESTRefusesWhatTheTranscoderCannotMap: the transcoder answered these
// with 500 (internal or unknown) before any handler ran (found by FuzzREST).
func TestRESTRefusesWhatTheTranscoderCannotMap(t *testing.T) {
	t.Parallel()
	base := newWholeServer(t, Options{MaxRequestBytes: 1 << 20})
	tok := register(t, base)
	status, _, out := restCall(t, http.MethodPost, base+"/api/v1/conversations", tok, `{"title":"t"}`)
	if status != http.StatusOK {
		t.Fatalf("create: %d %v", status, out)
	}
	conv := out["conversation"].(map[string]any)["id"].(string)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/api/v1/conversations/" + conv + "/messages?foo=1", ""},
		{http.MethodGet, "/api/v1/profile?pageSize=1", ""},
		{http.MethodGet, "/api/v1/conversations/" + conv + "/messages?page_token=%ff", ""},
		{http.MethodGet, "/api/v1/conversations/%ff/messages", ""},
		{http.MethodGet, "/api/v1/conversations/" + conv + "/messages?order=%ff", ""},
		{http.MethodGet, "/api/v1/conversations/" + conv + "/messages?conversation_id.x=1", ""},
		{http.MethodPost, "/api/v1/conversations?0", "0"},
		{http.MethodPost, "/api/v1/conversations?title=x", `{"title":42}`},
		{http.MethodPost, "/api/v1/conversations?foo=1", `{"title":"t"}`},
	} {
		status, _, out := restCall(t, c.method, base+c.path, tok, c.body)
		wantError(t, c.method+" "+c.path, status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
	}
	// An explicit page_size wins over limit, as the README says.
	status, _, out = restCall(t, http.MethodGet, base+"/api/v1/conversations/"+conv+"/messages?limit=2&page_size=7", tok, "")
	if status != http.StatusOK {
		t.Errorf("limit and page_size: %d %v", status, out)
	}
}

// brokenProfiles answers GetProfile with an internal error, as a bug would.
type brokenProfiles struct {
	parleyv1connect.UnimplementedUserServiceHandler
}

func (brokenProfiles) GetProfile(context.Context, *connect.Request[parleyv1.GetProfileRequest]) (*connect.Response[parleyv1.GetProfileResponse], error) {
	return nil, connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// TestRESTKeepsAHandlersServerError: only the transcoder's own errors turn
// into invalid_argument; a handler's internal error stays a 500.
func TestRESTKeepsAHandlersServerError(t *testing.T) {
	t.Parallel()
	a := newTestAPI(t, apiOptions{services: func(s *Services) { s.User = brokenProfiles{} }})
	tok := a.user(t).token
	for _, q := range []string{"", "?foo=1"} {
		status, _, out := restCall(t, http.MethodGet, a.url+"/api/v1/profile"+q, tok, "")
		want, code := http.StatusInternalServerError, connect.CodeInternal
		if q != "" {
			want, code = http.StatusBadRequest, connect.CodeInvalidArgument
		}
		wantError(t, "GET /api/v1/profile"+q, status, out, want, code)
	}
}

// FuzzTokenRequest parses any body as a POST /livekit/token request. A
// refusal is a rule the caller broke (invalid_argument, permission_denied,
// resource_exhausted), never a server error; an accepted body's strings
// are UTF-8, its names and identity free of control characters, and the
// request it stands for reads back the same when written as LiveKit's JSON.
func FuzzTokenRequest(f *testing.F) {
	f.Add(`{}`)
	f.Add(`{"room_name":"parley-01a2340f-998c-7218-bc3e-3c0ea51fc817","participant_name":"Ada","participant_identity":"x"}`)
	f.Add(`{"participant_metadata":"{\"k\":1}","participant_attributes":{"team":"blue","lk.x":""}}`)
	f.Add(`{"room_config":{"agents":[{"agent_name":"a","metadata":"m"}]}}`)
	f.Add(`{"room_config":{"agents":[],"egress":null}}`)
	f.Add(`{"room_config":null,"room_name":"\u00e9\u0007"}`)
	f.Add(`{"room_name":7} `)
	f.Fuzz(func(t *testing.T, body string) {
		read := func(body string) (room.Entry, error) {
			r := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			return readTokenRequest(httptest.NewRecorder(), r)
		}
		e, err := read(body)
		if err != nil {
			switch code := connect.CodeOf(toConnectError(t.Context(), slog.New(slog.DiscardHandler), err)); code {
			case connect.CodeInvalidArgument, connect.CodePermissionDenied, connect.CodeResourceExhausted:
			default:
				t.Fatalf("refused as %v: %v", code, err)
			}
			return
		}
		strs := []string{e.RoomName, e.Identity, e.Name, e.Metadata, e.AgentName, e.AgentMetadata}
		for k, v := range e.Attributes {
			strs = append(strs, k, v)
		}
		for _, s := range strs {
			if !utf8.ValidString(s) {
				t.Fatalf("accepted a string that is not UTF-8: %q", s)
			}
		}
		for _, s := range []string{e.RoomName, e.Identity, e.Name, e.AgentName} {
			if hasControl(s) {
				t.Fatalf("accepted a name with a control character: %q", s)
			}
		}
		again := tokenRequest{RoomName: e.RoomName, ParticipantIdentity: e.Identity, ParticipantName: e.Name,
			ParticipantMetadata: e.Metadata, ParticipantAttributes: e.Attributes}
		if e.AgentName != "" || e.AgentMetadata != "" {
			again.RoomConfig, _ = json.Marshal(map[string]any{"agents": []agentDispatch{{AgentName: e.AgentName, Metadata: e.AgentMetadata}}})
		}
		b, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := read(string(b))
		if err != nil || !reflect.DeepEqual(e2, e) {
			t.Fatalf("%s read as %+v, written as %s, read back as %+v, %v", body, e, b, e2, err)
		}
	})
}
