package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/limit"
)

// countingLimiter allows perMinute requests per key and refuses the rest, so
// a test reaches a limit in a known number of requests.
type countingLimiter struct {
	mu    sync.Mutex
	count map[string]int
	calls [][]string // the keys of each call
}

func (l *countingLimiter) AllowAll(_ context.Context, checks ...limit.Check) ([]limit.Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ds []limit.Decision
	keys := make([]string, len(checks))
	for i, c := range checks {
		keys[i] = c.Key
	}
	l.calls = append(l.calls, keys)
	for _, c := range checks {
		l.count[c.Key]++
		n := l.count[c.Key]
		d := limit.Decision{Allowed: n <= c.Limit.Rate, Limit: c.Limit.Rate, Remaining: max(0, c.Limit.Rate-n), RetryAfter: 7 * time.Second, ResetAfter: time.Minute}
		ds = append(ds, d)
		if !d.Allowed {
			break
		}
	}
	return ds, nil
}

func (l *countingLimiter) Refund(_ context.Context, c limit.Check) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.count[c.Key] > 0 {
		l.count[c.Key]--
	}
	return nil
}

// newRESTServer serves the whole NewHandler (every service with its real
// domain service, the real interceptors and limits) on a new database.
func newRESTServer(t *testing.T, limits Limits) string {
	t.Helper()
	return newRESTServerWith(t, limits, &countingLimiter{count: map[string]int{}})
}

// newRESTServerWith is newRESTServer with the limiter given.
func newRESTServerWith(t *testing.T, limits Limits, lim Limiter) string {
	t.Helper()
	return newWholeServer(t, Options{Limiter: lim, Limits: limits, MaxRequestBytes: 1 << 20, Metrics: true})
}

// newWholeServer serves the whole API with the handler options opts (zero
// fields filled in as newTestAPI does), without files, and returns its URL.
func newWholeServer(t testing.TB, opts Options) string {
	t.Helper()
	return newTestAPI(t, apiOptions{handler: opts}).url
}

// restCall sends a request as curl would: a JSON body (or none), optionally
// a bearer token, nothing Connect-specific. It returns the status, headers
// and decoded JSON body.
func restCall(t testing.TB, method, url, token, body string) (int, http.Header, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: %d, body not JSON: %q", method, url, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, resp.Header, out
}

// register signs a new user up over Connect JSON (Register has no REST path)
// and returns the access token.
func register(t testing.TB, base string) string {
	t.Helper()
	status, _, out := restCall(t, http.MethodPost, base+"/parley.v1.AuthService/Register", "",
		fmt.Sprintf(`{"email":"%s@example.com","password":"correct horse battery","displayName":"Ada"}`, uuid.NewString()))
	if status != http.StatusOK {
		t.Fatalf("register: %d %v", status, out)
	}
	return out["tokens"].(map[string]any)["accessToken"].(string)
}

// wantError checks a REST error: the HTTP status Connect gives the code, and
// a google.rpc.Status body, whose code is the number (as REST transcoding
// conventionally answers, unlike Connect's string).
func wantError(t *testing.T, what string, status int, out map[string]any, wantStatus int, wantCode connect.Code) {
	t.Helper()
	if status != wantStatus || out["code"] != float64(wantCode) || out["message"] == "" {
		t.Errorf("%s: %d %v, want %d with code %d (%v)", what, status, out, wantStatus, wantCode, wantCode)
	}
}

func TestRESTPaths(t *testing.T) {
	t.Parallel()
	base := newRESTServer(t, Limits{UserPerMinute: 1000, AgentPerMinute: 1000, IPPerMinute: 1000})
	ada, bob := register(t, base), register(t, base)

	status, _, out := restCall(t, http.MethodGet, base+"/api/v1/profile", ada, "")
	if status != http.StatusOK || out["user"].(map[string]any)["displayName"] != "Ada" {
		t.Fatalf("GET /api/v1/profile: %d %v", status, out)
	}

	status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations", ada, `{"title":"over REST"}`)
	if status != http.StatusOK {
		t.Fatalf("POST /api/v1/conversations: %d %v", status, out)
	}
	conv := out["conversation"].(map[string]any)
	convID := conv["id"].(string)
	if conv["title"] != "over REST" {
		t.Errorf("created %v", conv)
	}

	for i, body := range []string{
		// Both JSON spellings of the fields work, as with Connect JSON.
		`{"conversationId":"%s","turnId":"t-1","userMessage":"hi","assistantMessage":"hello"}`,
		`{"conversation_id":"%s","turn_id":"t-2","user_message":"how are you?","assistant_message":"fine"}`,
	} {
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations/save-turn", ada, fmt.Sprintf(body, convID))
		msgs, _ := out["messages"].([]any)
		if status != http.StatusOK || len(msgs) != 2 || msgs[1].(map[string]any)["seq"] != strconv.Itoa(2*i+2) {
			t.Fatalf("save-turn %d: %d %v", i, status, out)
		}
	}
	status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations/save-turn", ada,
		fmt.Sprintf(`{"conversationId":"%s","turnId":"t-1","userMessage":"hi","assistantMessage":"hello"}`, convID))
	if status != http.StatusOK || out["replayed"] != true {
		t.Errorf("replayed save-turn: %d %v", status, out)
	}

	t.Run("list messages is ListMessages", func(t *testing.T) {
		status, _, rest := restCall(t, http.MethodGet, base+"/api/v1/conversations/"+convID+"/messages?limit=3", ada, "")
		if status != http.StatusOK {
			t.Fatalf("GET messages: %d %v", status, rest)
		}
		_, _, rpc := restCall(t, http.MethodPost, base+"/parley.v1.ConversationService/ListMessages", ada,
			fmt.Sprintf(`{"conversationId":"%s","pageSize":3}`, convID))
		if fmt.Sprint(rest) != fmt.Sprint(rpc) {
			t.Errorf("REST answered\n%v\nConnect answered\n%v", rest, rpc)
		}
		if msgs := rest["messages"].([]any); len(msgs) != 3 || msgs[0].(map[string]any)["seq"] != "4" || rest["nextPageToken"] == "" {
			t.Errorf("first page = %v", rest)
		}
		status, _, next := restCall(t, http.MethodGet, base+"/api/v1/conversations/"+convID+"/messages?limit=3&page_token="+rest["nextPageToken"].(string), ada, "")
		if msgs, _ := next["messages"].([]any); status != http.StatusOK || len(msgs) != 1 || msgs[0].(map[string]any)["seq"] != "1" {
			t.Errorf("second page: %d %v", status, next)
		}
		status, _, oldest := restCall(t, http.MethodGet, base+"/api/v1/conversations/"+convID+"/messages?order=ORDER_OLDEST_FIRST&page_size=2", ada, "")
		if msgs, _ := oldest["messages"].([]any); status != http.StatusOK || len(msgs) != 2 || msgs[0].(map[string]any)["seq"] != "1" {
			t.Errorf("oldest first: %d %v", status, oldest)
		}
	})

	t.Run("list items takes after_seq", func(t *testing.T) {
		status, _, out := restCall(t, http.MethodGet, base+"/api/v1/conversations/"+convID+"/items?after_seq=1&order=ORDER_OLDEST_FIRST&limit=2", ada, "")
		items, _ := out["items"].([]any)
		if status != http.StatusOK || len(items) != 2 || items[0].(map[string]any)["seq"] != "2" || items[1].(map[string]any)["seq"] != "3" {
			t.Errorf("GET items after seq 1: %d %v", status, out)
		}
	})

	t.Run("errors keep their codes and HTTP statuses", func(t *testing.T) {
		status, _, out := restCall(t, http.MethodPost, base+"/api/v1/conversations", "", `{"title":"x"}`)
		wantError(t, "no token", status, out, http.StatusUnauthorized, connect.CodeUnauthenticated)
		status, _, out = restCall(t, http.MethodGet, base+"/api/v1/profile", "not-a-token", "")
		wantError(t, "bad token", status, out, http.StatusUnauthorized, connect.CodeUnauthenticated)
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations", ada, `{"title":"`+strings.Repeat("x", 201)+`"}`)
		wantError(t, "title too long", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
		status, _, out = restCall(t, http.MethodGet, base+"/api/v1/conversations/"+convID+"/messages?limit=500", ada, "")
		wantError(t, "limit over 200", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
		status, _, out = restCall(t, http.MethodGet, base+"/api/v1/conversations/not-a-uuid/messages", ada, "")
		wantError(t, "malformed id", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations/save-turn", ada, fmt.Sprintf(`{"conversationId":"%s"}`, convID))
		wantError(t, "empty turn", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations/save-turn", ada,
			fmt.Sprintf(`{"conversationId":"%s","turnId":"t-1","userMessage":"hi","assistantMessage":"changed"}`, convID))
		wantError(t, "same turn id, other content", status, out, http.StatusConflict, connect.CodeAlreadyExists)
		status, _, out = restCall(t, http.MethodGet, base+"/api/v1/conversations/"+convID+"/messages", bob, "")
		wantError(t, "someone else's conversation", status, out, http.StatusNotFound, connect.CodeNotFound)
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations/save-turn", bob,
			fmt.Sprintf(`{"conversationId":"%s","userMessage":"intruder"}`, convID))
		wantError(t, "saving into someone else's conversation", status, out, http.StatusNotFound, connect.CodeNotFound)
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations", ada, `{"title": 42`)
		wantError(t, "malformed JSON", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
		status, _, out = restCall(t, http.MethodPost, base+"/api/v1/conversations", ada, `{"title":"`+strings.Repeat("x", 2<<20)+`"}`)
		wantError(t, "body over the request limit", status, out, http.StatusTooManyRequests, connect.CodeResourceExhausted)
	})

	t.Run("rooms", func(t *testing.T) {
		status, _, out := restCall(t, http.MethodPost, base+"/api/v1/rooms", ada, `{"name":"standup"}`)
		if status != http.StatusOK {
			t.Fatalf("POST /api/v1/rooms: %d %v", status, out)
		}
		room, join := out["room"].(map[string]any), out["join"].(map[string]any)
		if room["name"] != "standup" || room["conversationId"] == "" || join["token"] == "" || join["livekitUrl"] != "wss://livekit.example.com" {
			t.Errorf("created room %v", out)
		}
	})

	// Last: it spends ada's token.
	t.Run("logout revokes the token", func(t *testing.T) {
		status, _, out := restCall(t, http.MethodPost, base+"/api/v1/auth/logout", ada, `{}`)
		if status != http.StatusOK {
			t.Fatalf("POST /api/v1/auth/logout: %d %v", status, out)
		}
		status, _, out = restCall(t, http.MethodGet, base+"/api/v1/profile", ada, "")
		wantError(t, "after logout", status, out, http.StatusUnauthorized, connect.CodeUnauthenticated)
	})
}

func TestRESTRateLimits(t *testing.T) {
	t.Parallel()
	t.Run("per user", func(t *testing.T) {
		t.Parallel()
		base := newRESTServer(t, Limits{UserPerMinute: 3, AgentPerMinute: 3, IPPerMinute: 1000})
		tok := register(t, base)
		for i := range 3 {
			if status, hdr, out := restCall(t, http.MethodGet, base+"/api/v1/profile", tok, ""); status != http.StatusOK || hdr.Get("RateLimit") == "" {
				t.Fatalf("request %d: %d %v %v", i, status, hdr, out)
			}
		}
		status, hdr, out := restCall(t, http.MethodGet, base+"/api/v1/profile", tok, "")
		wantError(t, "fourth request", status, out, http.StatusTooManyRequests, connect.CodeResourceExhausted)
		if hdr.Get("Retry-After") != "7" || hdr.Get("X-Request-Id") == "" {
			t.Errorf("Retry-After = %q, X-Request-Id %q; want 7 and an id (headers %v)", hdr.Get("Retry-After"), hdr.Get("X-Request-Id"), hdr)
		}
		// The refusal is counted like any call's answer.
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := `parley_rpc_requests_total{code="resource_exhausted",procedure="(admission)"} 1`; !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	})
	t.Run("per address", func(t *testing.T) {
		t.Parallel()
		base := newRESTServer(t, Limits{UserPerMinute: 1000, AgentPerMinute: 1000, IPPerMinute: 2})
		for i := range 2 {
			if status, _, out := restCall(t, http.MethodGet, base+"/api/v1/profile", "", ""); status != http.StatusUnauthorized {
				t.Fatalf("request %d: %d %v", i, status, out)
			}
		}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/api/v1/profile", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "7" {
			t.Errorf("third request: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	})
}

// TestAdmissionOneLimiterCall checks that a request spends its address's and
// its caller's budgets in one limiter call, over every protocol, and that a
// request the handler refuses before its interceptors (a body that is not
// JSON) still counts against the address.
func TestAdmissionOneLimiterCall(t *testing.T) {
	t.Parallel()
	lim := &countingLimiter{count: map[string]int{}}
	base := newRESTServerWith(t, Limits{UserPerMinute: 1000, AgentPerMinute: 1000, IPPerMinute: 1000}, lim)
	tok := register(t, base)
	calls := func() [][]string {
		lim.mu.Lock()
		defer lim.mu.Unlock()
		return slices.Clone(lim.calls)
	}
	before := len(calls())

	if status, _, out := restCall(t, http.MethodPost, base+"/parley.v1.UserService/GetProfile", tok, `{}`); status != http.StatusOK {
		t.Fatalf("Connect GetProfile: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodGet, base+"/api/v1/profile", tok, ""); status != http.StatusOK {
		t.Fatalf("REST GetProfile: %d %v", status, out)
	}
	got := calls()[before:]
	if len(got) != 2 {
		t.Fatalf("limiter called %d times for 2 requests: %v", len(got), got)
	}
	for i, keys := range got {
		if len(keys) != 2 || !strings.HasPrefix(keys[0], "ip:") || !strings.HasPrefix(keys[1], "user:") {
			t.Errorf("call %d checked %v, want the address then the user", i, keys)
		}
	}

	before = len(calls())
	status, _, _ := restCall(t, http.MethodPost, base+"/parley.v1.UserService/GetProfile", tok, `{not json`)
	if status == http.StatusOK {
		t.Fatal("a body that is not JSON was accepted")
	}
	if got := calls()[before:]; len(got) != 1 || !strings.HasPrefix(got[0][0], "ip:") {
		t.Errorf("a refused body was counted as %v, want once against the address", got)
	}
}

// TestRevokedTokenSpendsNoUserBudget checks that whoever holds a revoked
// token cannot spend its owner's budget: the charge is given back.
func TestRevokedTokenSpendsNoUserBudget(t *testing.T) {
	t.Parallel()
	base := newRESTServerWith(t, Limits{UserPerMinute: 3, AgentPerMinute: 3, IPPerMinute: 1000}, &countingLimiter{count: map[string]int{}})
	email := uuid.NewString() + "@example.com"
	status, _, out := restCall(t, http.MethodPost, base+"/parley.v1.AuthService/Register", "",
		fmt.Sprintf(`{"email":%q,"password":"correct horse battery","displayName":"Ada"}`, email))
	if status != http.StatusOK {
		t.Fatalf("register: %d %v", status, out)
	}
	stolen := out["tokens"].(map[string]any)["accessToken"].(string)
	if status, _, out := restCall(t, http.MethodPost, base+"/api/v1/auth/logout", stolen, `{}`); status != http.StatusOK {
		t.Fatalf("logout: %d %v", status, out)
	}
	for i := range 6 {
		status, _, out := restCall(t, http.MethodGet, base+"/api/v1/profile", stolen, "")
		wantError(t, fmt.Sprintf("revoked token, request %d", i), status, out, http.StatusUnauthorized, connect.CodeUnauthenticated)
	}
	status, _, out = restCall(t, http.MethodPost, base+"/parley.v1.AuthService/Login", "",
		fmt.Sprintf(`{"email":%q,"password":"correct horse battery"}`, email))
	if status != http.StatusOK {
		t.Fatalf("login: %d %v", status, out)
	}
	fresh := out["tokens"].(map[string]any)["accessToken"].(string)
	// The logout spent one request of the budget of 3.
	for i := range 2 {
		if status, _, out := restCall(t, http.MethodGet, base+"/api/v1/profile", fresh, ""); status != http.StatusOK {
			t.Fatalf("owner's request %d after the revoked token's: %d %v", i, status, out)
		}
	}
}
