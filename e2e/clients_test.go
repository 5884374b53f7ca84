//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// bearer wraps msg in a request carrying the access token.
func bearer[T any](msg *T, token string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if token != "" {
		r.Header().Set("Authorization", "Bearer "+token)
	}
	return r
}

// web is a browser-like client: Connect with JSON over HTTP/1.1.
type web struct {
	auth          parleyv1connect.AuthServiceClient
	users         parleyv1connect.UserServiceClient
	rooms         parleyv1connect.RoomServiceClient
	conversations parleyv1connect.ConversationServiceClient
	files         parleyv1connect.FileServiceClient
	http          *http.Client // for signed blob URLs, which bypass Parley
}

func newWeb(base, client string) *web {
	hc := &http.Client{Transport: labelled{client: client, next: &http.Transport{MaxIdleConnsPerHost: 16}}}
	opts := []connect.ClientOption{connect.WithProtoJSON()}
	return &web{
		auth:          parleyv1connect.NewAuthServiceClient(hc, base, opts...),
		users:         parleyv1connect.NewUserServiceClient(hc, base, opts...),
		rooms:         parleyv1connect.NewRoomServiceClient(hc, base, opts...),
		conversations: parleyv1connect.NewConversationServiceClient(hc, base, opts...),
		files:         parleyv1connect.NewFileServiceClient(hc, base, opts...),
		http:          &http.Client{Timeout: 30 * time.Second},
	}
}

// listAll pages through a conversation's messages.
func listAll(ctx context.Context, c parleyv1connect.ConversationServiceClient, token, conv string, pageSize int32, order parleyv1.Order) ([]*parleyv1.Message, error) {
	var all []*parleyv1.Message
	page := ""
	for range 10_000 {
		resp, err := c.ListMessages(ctx, bearer(&parleyv1.ListMessagesRequest{
			ConversationId: conv, PageSize: pageSize, PageToken: page, Order: order,
		}, token))
		if err != nil {
			return all, err
		}
		all = append(all, resp.Msg.GetMessages()...)
		if page = resp.Msg.GetNextPageToken(); page == "" {
			return all, nil
		}
	}
	return all, errors.New("ListMessages never ran out of pages")
}

// agent is a voice agent's backend client, over gRPC with h2c. Its retry
// policy is examples/agent's: idempotent calls (SaveTurn with its turn_id)
// are tried again, with jittered exponential backoff, after failures that a
// retry can fix, and nothing else.
type agent struct {
	key           string
	auth          parleyv1connect.AuthServiceClient
	conversations parleyv1connect.ConversationServiceClient

	attempts       int
	attemptTimeout time.Duration
	backoff        time.Duration
	maxBackoff     time.Duration

	mu      sync.Mutex
	token   string
	renewAt time.Time
	retries map[string]int // retried failures, by kind
}

func newAgent(base, client, key string) *agent {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: labelled{client: client, next: tr}}
	return &agent{
		key:            key,
		auth:           parleyv1connect.NewAuthServiceClient(hc, base, connect.WithGRPC()),
		conversations:  parleyv1connect.NewConversationServiceClient(hc, base, connect.WithGRPC()),
		attempts:       8,
		attemptTimeout: 5 * time.Second,
		backoff:        50 * time.Millisecond,
		maxBackoff:     time.Second,
		retries:        map[string]int{},
	}
}

// SaveTurn saves one turn, retrying with the same turn_id.
func (a *agent) SaveTurn(ctx context.Context, conv, turnID, user, assistant string) (*parleyv1.SaveTurnResponse, error) {
	var out *parleyv1.SaveTurnResponse
	err := a.retry(ctx, func(ctx context.Context, token string) error {
		resp, err := a.conversations.SaveTurn(ctx, bearer(&parleyv1.SaveTurnRequest{
			ConversationId: conv, TurnId: turnID, UserMessage: user, AssistantMessage: assistant,
		}, token))
		if err != nil {
			return err
		}
		out = resp.Msg
		return nil
	})
	return out, err
}

// ListMessages pages through a conversation, retrying each page.
func (a *agent) ListMessages(ctx context.Context, conv string) ([]*parleyv1.Message, error) {
	var all []*parleyv1.Message
	page := ""
	for range 10_000 {
		var resp *parleyv1.ListMessagesResponse
		err := a.retry(ctx, func(ctx context.Context, token string) error {
			r, err := a.conversations.ListMessages(ctx, bearer(&parleyv1.ListMessagesRequest{
				ConversationId: conv, PageSize: 200, PageToken: page, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
			}, token))
			if err == nil {
				resp = r.Msg
			}
			return err
		})
		if err != nil {
			return all, err
		}
		all = append(all, resp.GetMessages()...)
		if page = resp.GetNextPageToken(); page == "" {
			return all, nil
		}
	}
	return all, errors.New("ListMessages never ran out of pages")
}

// errTokenRefused marks a call refused for its token; a fresh one fixes it.
var errTokenRefused = errors.New("access token refused")

func (a *agent) retry(ctx context.Context, call func(ctx context.Context, token string) error) error {
	wait := a.backoff
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, a.attemptTimeout)
		err := a.try(actx, call)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil || attempt >= a.attempts {
			return err
		}
		a.mu.Lock()
		a.retries[errorKind(err)]++
		a.mu.Unlock()
		select {
		case <-time.After(rand.N(wait) + time.Millisecond):
		case <-ctx.Done():
			return err
		}
		wait = min(2*wait, a.maxBackoff)
	}
}

func (a *agent) try(ctx context.Context, call func(ctx context.Context, token string) error) error {
	token, err := a.accessToken(ctx)
	if err != nil {
		return err
	}
	err = call(ctx, token)
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		a.mu.Lock()
		if a.token == token {
			a.token = ""
		}
		a.mu.Unlock()
		return fmt.Errorf("%w: %w", errTokenRefused, err)
	}
	return err
}

// accessToken exchanges the agent key when no token is held or a third of
// its life is left.
func (a *agent) accessToken(ctx context.Context) (string, error) {
	a.mu.Lock()
	token, renewAt := a.token, a.renewAt
	a.mu.Unlock()
	if token != "" && time.Now().Before(renewAt) {
		return token, nil
	}
	resp, err := a.auth.ExchangeAgentKey(ctx, connect.NewRequest(&parleyv1.ExchangeAgentKeyRequest{ApiKey: a.key}))
	if err != nil {
		return "", fmt.Errorf("exchange agent key: %w", err)
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.token = resp.Msg.GetAccessToken()
	a.renewAt = now.Add(resp.Msg.GetExpiresAt().AsTime().Sub(now) * 2 / 3)
	return a.token, nil
}

// retryKinds returns the agent's retried failures, by kind.
func (a *agent) retryKinds() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.retries))
	for k, v := range a.retries {
		out[k] = v
	}
	return out
}

// retryable is examples/agent's rule: the server was unreachable or
// unready, the try timed out, the connection broke, or the token went stale.
// It adds one case that rule misses: an HTTP/2 stream reset by the peer.
// A balancer resets the client's stream when the replica dies after sending
// its response headers (a SIGKILL between commit and answer), and connect
// reports a reset with INTERNAL_ERROR as internal, as the gRPC spec says.
// The call's outcome is unknown, exactly as with a broken connection, and
// the turn_id makes trying again safe.
func retryable(err error) bool {
	if errors.Is(err, errTokenRefused) || streamReset(err) {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// streamReset reports whether err is an HTTP/2 RST_STREAM from the peer.
// net/http's bundled HTTP/2 does not export its StreamError, so this reads
// the message, as connect itself does.
func streamReset(err error) bool {
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeInternal {
		return false
	}
	cause := cerr.Unwrap()
	return cause != nil && strings.HasPrefix(cause.Error(), "stream error: ") && strings.HasSuffix(cause.Error(), "; received from peer")
}

var streamID = regexp.MustCompile(`stream ID \d+`)

// errorKind is a short label of a failure for the report.
func errorKind(err error) string {
	msg := streamID.ReplaceAllString(err.Error(), "stream ID N")
	if len(msg) > 90 {
		msg = msg[:90] + "…"
	}
	return msg
}

// watcher follows a conversation with WatchMessages through the balancer,
// as the web app does: when a stream ends (a replica drains or dies) it
// opens a new one after the last seq it saw.
type watcher struct {
	conversations parleyv1connect.ConversationServiceClient
	token, conv   string

	mu         sync.Mutex
	msgs       []*parleyv1.Message
	problems   []string       // gaps, duplicates, disorder
	ends       map[string]int // how streams ended, by kind
	heartbeats int
}

func newWatcher(w *web, token, conv string) *watcher {
	return &watcher{conversations: w.conversations, token: token, conv: conv, ends: map[string]int{}}
}

// run watches until ctx ends. It returns the number of streams opened.
func (w *watcher) run(ctx context.Context) int {
	wait := 50 * time.Millisecond
	opened := 0
	for opened < 1000 && ctx.Err() == nil {
		opened++
		if w.stream(ctx) {
			wait = 50 * time.Millisecond
		}
		select {
		case <-time.After(rand.N(wait) + time.Millisecond):
		case <-ctx.Done():
		}
		wait = min(2*wait, time.Second)
	}
	return opened
}

// stream reads one stream to its end and reports whether it delivered
// anything.
func (w *watcher) stream(ctx context.Context) bool {
	after := w.last()
	s, err := w.conversations.WatchMessages(ctx, bearer(&parleyv1.WatchMessagesRequest{ConversationId: w.conv, AfterSeq: after}, w.token))
	if err != nil {
		w.end(ctx, err)
		return false
	}
	defer s.Close()
	got := false
	for s.Receive() {
		got = true
		w.add(s.Msg())
	}
	w.end(ctx, s.Err())
	return got
}

func (w *watcher) add(resp *parleyv1.WatchMessagesResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := resp.GetMessage()
	if m == nil {
		w.heartbeats++
		return
	}
	last := int64(0)
	if len(w.msgs) > 0 {
		last = w.msgs[len(w.msgs)-1].GetSeq()
	}
	switch {
	case m.GetSeq() <= last:
		w.problems = append(w.problems, fmt.Sprintf("seq %d again after seq %d", m.GetSeq(), last))
		return // keep the list in order
	case m.GetSeq() > last+1:
		w.problems = append(w.problems, fmt.Sprintf("seq %d after seq %d: a gap", m.GetSeq(), last))
	}
	w.msgs = append(w.msgs, m)
}

func (w *watcher) end(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	kind := "clean end"
	if err != nil {
		kind = connect.CodeOf(err).String()
	}
	w.mu.Lock()
	w.ends[kind]++
	w.mu.Unlock()
}

func (w *watcher) last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.msgs) == 0 {
		return 0
	}
	return w.msgs[len(w.msgs)-1].GetSeq()
}

// waitFor waits until the watcher has seen seq n.
func (w *watcher) waitFor(ctx context.Context, n int64) error {
	for w.last() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("watch of %s stopped at seq %d of %d: %w", w.conv, w.last(), n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// snapshot returns what the watcher received.
func (w *watcher) snapshot() (msgs []*parleyv1.Message, problems []string, ends map[string]int, heartbeats int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ends = make(map[string]int, len(w.ends))
	for k, v := range w.ends {
		ends[k] = v
	}
	return append([]*parleyv1.Message(nil), w.msgs...), append([]string(nil), w.problems...), ends, w.heartbeats
}

// formatCounts renders a count map as "k1 n1, k2 n2" in a stable order.
func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}
