package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/token"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// replica is a parley process.
type replica struct {
	base string
	cmd  *exec.Cmd
	log  *syncBuffer
}

func buildParley(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/parley").CombinedOutput(); err != nil {
		t.Fatalf("build parley: %v\n%s", err, out)
	}
	return bin
}

func environ(env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

func startReplica(t *testing.T, bin string, env map[string]string) *replica {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	r := &replica{base: "http://" + addr, log: &syncBuffer{}}
	r.cmd = exec.Command(bin, "serve")
	r.cmd.Env = append(environ(env), "PARLEY_HTTP_ADDR="+addr)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	})
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(r.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("replica %s not ready:\n%s", r.base, r.log.String())
	return nil
}

// stack is Parley's replicas on one database, an agent key and a user's
// conversation for the agent to talk in.
type stack struct {
	replicas  []*replica
	agentKey  string
	userToken string
	convID    string
}

func startStack(t *testing.T, replicas int) *stack {
	t.Helper()
	bin := buildParley(t)
	keys := filepath.Join(t.TempDir(), "jwks.json")
	set, err := token.GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keys, set, 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"DATABASE_URL":          testenv.DatabaseURL(t),
		"VALKEY_URL":            testenv.ValkeyURL(t),
		"PARLEY_JWT_KEYS":       keys,
		"LIVEKIT_API_KEY":       "APIagenttest",
		"LIVEKIT_API_SECRET":    "an-agent-test-secret-of-at-least-thirty-two-characters",
		"PARLEY_BLOB_DIR":       filepath.Join(t.TempDir(), "blobs"),
		"PARLEY_SHUTDOWN_DELAY": "0s",
		"PARLEY_LOG_LEVEL":      "warn",
		// Short-lived agent tokens, so a run has to renew them.
		"PARLEY_AGENT_TOKEN_TTL":             "2s",
		"PARLEY_RATE_LIMIT_IP_PER_MINUTE":    "100000",
		"PARLEY_RATE_LIMIT_USER_PER_MINUTE":  "100000",
		"PARLEY_RATE_LIMIT_AGENT_PER_MINUTE": "100000",
	}
	s := &stack{}
	for range replicas {
		s.replicas = append(s.replicas, startReplica(t, bin, env))
	}

	keyCmd := exec.Command(bin, "agent-key", "create", "--name", "test-agent")
	keyCmd.Env = environ(env)
	out, err := keyCmd.Output()
	if err != nil {
		t.Fatalf("agent-key create: %v", err)
	}
	outLines := strings.Split(strings.TrimSpace(string(out)), "\n")
	s.agentKey = outLines[len(outLines)-1]

	base := s.replicas[len(s.replicas)-1].base
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, base).Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{
		Email: "owner@example.com", Password: "correct horse battery", DisplayName: "Owner",
	}))
	if err != nil {
		t.Fatal(err)
	}
	s.userToken = reg.Msg.GetTokens().GetAccessToken()
	created, err := s.conversations(base).CreateConversation(t.Context(), asUser(s, &parleyv1.CreateConversationRequest{Title: "with an agent"}))
	if err != nil {
		t.Fatal(err)
	}
	s.convID = created.Msg.GetConversation().GetId()
	return s
}

func (s *stack) conversations(base string) parleyv1connect.ConversationServiceClient {
	return parleyv1connect.NewConversationServiceClient(http.DefaultClient, base)
}

func asUser[T any](s *stack, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set("Authorization", "Bearer "+s.userToken)
	return r
}

// TestAgentSurvivesReplicaKill points the agent at two replicas, SIGKILLs
// the one it is talking to in the middle of the run, and checks that every
// item is stored exactly once and in order.
func TestAgentSurvivesReplicaKill(t *testing.T) {
	const turns = 30
	s := startStack(t, 2)
	replicas := s.replicas
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// The agent starts on the first URL; the kill comes halfway through,
	// on whichever replica saved the last turn. Every fifth turn calls the
	// tool, so function calls and outputs go through the failover too.
	var input strings.Builder
	toolTurns := 0
	for i := 1; i <= turns; i++ {
		fmt.Fprintf(&input, "question %d\tanswer %d", i, i)
		if i%5 == 0 {
			input.WriteString("\tcontext_items")
			toolTurns++
		}
		input.WriteString("\n")
	}
	stdoutR, stdoutW := io.Pipe()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	getenv := func(k string) string {
		return map[string]string{
			"PARLEY_URLS":              replicas[0].base + "," + replicas[1].base,
			"PARLEY_AGENT_KEY":         s.agentKey,
			"PARLEY_DISPATCH_METADATA": `{"conversation_id":"` + s.convID + `"}`,
		}[k]
	}
	go func() {
		// Pace the input so the run spans several token lifetimes.
		in := &slowReader{lines: strings.SplitAfter(input.String(), "\n"), every: 100 * time.Millisecond}
		err := run(ctx, getenv, in, stdoutW, slog.New(slog.NewTextHandler(logs, nil)))
		stdoutW.CloseWithError(err)
		done <- err
	}()

	saved := bufio.NewScanner(stdoutR)
	var lines []string
	killed := ""
	for saved.Scan() {
		line := saved.Text()
		lines = append(lines, line)
		if len(lines) == turns/2 {
			for _, r := range replicas {
				if strings.HasSuffix(line, " via "+r.base) {
					killed = r.base
					if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("agent: %v\noutput:\n%s\nlogs:\n%s", err, strings.Join(lines, "\n"), logs.String())
	}
	if killed == "" {
		t.Fatalf("no replica was killed; output:\n%s", strings.Join(lines, "\n"))
	}
	if len(lines) != turns {
		t.Fatalf("agent printed %d lines for %d turns:\n%s", len(lines), turns, strings.Join(lines, "\n"))
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Errorf("the agent never retried, so the kill tested nothing; logs:\n%s", logs.String())
	}
	if n := strings.Count(logs.String(), "agent token renewed"); n < 2 {
		t.Errorf("agent token obtained %d times, want renewals; logs:\n%s", n, logs.String())
	}
	for _, line := range lines[turns/2:] {
		if strings.HasSuffix(line, " via "+killed) {
			t.Errorf("saved through the killed replica: %s", line)
		}
	}

	var survivor string
	for _, r := range replicas {
		if r.base != killed {
			survivor = r.base
		}
	}
	// The message items are the conversation's messages too.
	page, err := s.conversations(survivor).ListMessages(ctx, asUser(s, &parleyv1.ListMessagesRequest{ConversationId: s.convID, PageSize: 200, Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
	if err != nil {
		t.Fatal(err)
	}
	msgs := page.Msg.GetMessages()
	if len(msgs) != 2*turns {
		t.Fatalf("%d messages stored for %d turns", len(msgs), turns)
	}
	for i, m := range msgs {
		turn := i/2 + 1
		wantRole, wantContent := parleyv1.Role_ROLE_USER, fmt.Sprintf("question %d", turn)
		if i%2 == 1 {
			wantRole, wantContent = parleyv1.Role_ROLE_ASSISTANT, fmt.Sprintf("answer %d", turn)
		}
		if m.GetSeq() != int64(i+1) || m.GetRole() != wantRole || m.GetContent() != wantContent {
			t.Errorf("message %d = seq %d %v %q", i, m.GetSeq(), m.GetRole(), m.GetContent())
		}
	}

	items := listItems(t, s, survivor)
	if want := 2*turns + 2*toolTurns; len(items) != want {
		t.Fatalf("%d items stored, want %d", len(items), want)
	}
	ids := map[string]bool{}
	perTurn := map[string]int{}
	turn := 0
	for i, it := range items {
		kind := itemKind(it.GetItem())
		if kind == "user" {
			turn++
		}
		want := []string{"user", "assistant"}
		if turn%5 == 0 {
			want = []string{"user", "function_call", "function_call_output", "assistant"}
		}
		if pos := perTurn[it.GetMessageId()]; pos >= len(want) || kind != want[pos] {
			t.Errorf("item %d (turn %d) is a %s, at place %d of %v", i, turn, kind, pos, want)
		}
		perTurn[it.GetMessageId()]++
		id := itemID(it.GetItem())
		if it.GetSeq() != int64(i+1) || !itemIDPattern.MatchString(id) || ids[id] || it.GetAgent() != "example-agent" {
			t.Errorf("item %d = seq %d id %q agent %q (id seen before: %t)", i, it.GetSeq(), id, it.GetAgent(), ids[id])
		}
		ids[id] = true
	}
	if len(perTurn) != turns {
		t.Errorf("%d distinct turn message ids, want %d", len(perTurn), turns)
	}
}

// TestRestartRestoresContext stops an agent after a few turns and starts a
// new one for the same conversation: it restores exactly the items the
// first appended, kinds, ids and all; a dispatch's last_seq cuts the
// restore there; and the restored context is what the agent's tool sees.
func TestRestartRestoresContext(t *testing.T) {
	s := startStack(t, 1)
	base := s.replicas[0].base
	ctx := t.Context()

	first := newAgent(t, s, base, &syncBuffer{})
	if err := first.Restore(ctx, Dispatch{ConversationID: s.convID}); err != nil {
		t.Fatal(err)
	}
	if n := len(first.History()); n != 0 {
		t.Fatalf("a new conversation restored %d items", n)
	}
	var last int64
	for i, tc := range [][3]string{
		{"hello", "hi there!", ""},
		{"how long is our chat?", "five items so far.", "context_items"},
		{"", "still there?", ""},
		{"yes", "", "no_such_tool {\"x\":1}"},
	} {
		turn, err := first.Turn(ctx, tc[0], tc[1], tc[2])
		if err != nil {
			t.Fatalf("turn %d: %v", i, err)
		}
		if turn.Replayed {
			t.Errorf("turn %d replayed on its first try", i)
		}
		last = turn.Items[len(turn.Items)-1].GetSeq()
	}
	sent := first.History()
	if len(sent) != 10 {
		t.Fatalf("the first agent holds %d items, want 10", len(sent))
	}
	var kinds []string
	for _, it := range sent {
		kinds = append(kinds, itemKind(it))
	}
	wantKinds := "user assistant user function_call function_call_output assistant assistant user function_call function_call_output"
	if got := strings.Join(kinds, " "); got != wantKinds {
		t.Errorf("kinds sent = %s, want %s", got, wantKinds)
	}
	if out := sent[4].GetFunctionCallOutput(); out.GetOutput() != `{"items":4}` || out.GetIsError() {
		t.Errorf("context_items answered %q (error %t), want 4 items", out.GetOutput(), out.GetIsError())
	}
	if out := sent[9].GetFunctionCallOutput(); !out.GetIsError() {
		t.Errorf("an unknown tool answered %q without an error", out.GetOutput())
	}

	// The restart: a new process, its own client and token.
	restarted := newAgent(t, s, base, &syncBuffer{})
	if err := restarted.Restore(ctx, Dispatch{ConversationID: s.convID, LastSeq: last}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sent, restarted.History(), protocmp.Transform()); diff != "" {
		t.Errorf("restored context differs from what the first agent sent (-sent +restored):\n%s", diff)
	}

	// The first agent goes on; a dispatch made before that (its last_seq)
	// restores only what came before, and the tool counts the restored items.
	if _, err := first.Turn(ctx, "one more", "sure", ""); err != nil {
		t.Fatal(err)
	}
	resumed := newAgent(t, s, base, &syncBuffer{})
	if err := resumed.Restore(ctx, Dispatch{ConversationID: s.convID, LastSeq: last}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sent, resumed.History(), protocmp.Transform()); diff != "" {
		t.Errorf("a restore until last_seq %d differs from the items up to it (-want +restored):\n%s", last, diff)
	}
	turn, err := resumed.Turn(ctx, "how long now?", "twelve.", "context_items")
	if err != nil {
		t.Fatal(err)
	}
	if out := resumed.History()[len(sent)+2].GetFunctionCallOutput().GetOutput(); out != `{"items":12}` {
		t.Errorf("context_items after the restore answered %q, want 12 items (10 restored, this user message and call)", out)
	}
	if n := len(turn.Items); n != 4 {
		t.Errorf("the resumed agent's turn stored %d items, want 4", n)
	}
	if n := len(listItems(t, s, base)); n != 10+2+4 {
		t.Errorf("%d items stored in all, want 16", n)
	}
}

// TestRetriedAppendStoresNothingTwice loses the answer to the first
// AppendItems after Parley committed it: the agent retries the same items,
// Parley answers them as replayed, and each is stored once.
func TestRetriedAppendStoresNothingTwice(t *testing.T) {
	s := startStack(t, 1)
	ctx := t.Context()
	proxy := loseFirstAnswer(t, s.replicas[0].base, "/parley.v1.ConversationService/AppendItems")

	logs := &syncBuffer{}
	a := newAgent(t, s, proxy, logs)
	if err := a.Restore(ctx, Dispatch{ConversationID: s.convID}); err != nil {
		t.Fatal(err)
	}
	turn, err := a.Turn(ctx, "what do you know?", "four items.", "context_items")
	if err != nil {
		t.Fatalf("turn: %v\nlogs:\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Fatalf("the agent never retried, so the lost answer tested nothing; logs:\n%s", logs.String())
	}
	if !turn.Replayed {
		t.Errorf("the retry was not answered as replayed")
	}
	stored := listItems(t, s, s.replicas[0].base)
	if len(stored) != 4 {
		t.Fatalf("%d items stored for a turn of 4", len(stored))
	}
	for i, it := range stored {
		if want := itemID(a.History()[i]); itemID(it.GetItem()) != want || it.GetSeq() != int64(i+1) || turn.Items[i].GetSeq() != it.GetSeq() {
			t.Errorf("item %d = seq %d id %q (answered seq %d), want seq %d id %q", i, it.GetSeq(), itemID(it.GetItem()), turn.Items[i].GetSeq(), i+1, want)
		}
	}
	conv, err := s.conversations(s.replicas[0].base).GetConversation(ctx, asUser(s, &parleyv1.GetConversationRequest{ConversationId: s.convID}))
	if err != nil {
		t.Fatal(err)
	}
	if c := conv.Msg.GetConversation(); c.GetItemCount() != 4 || c.GetLastItemSeq() != 4 || c.GetMessageCount() != 2 {
		t.Errorf("conversation counts %d items (last seq %d) and %d messages, want 4 (4) and 2", c.GetItemCount(), c.GetLastItemSeq(), c.GetMessageCount())
	}
}

func TestDispatchOf(t *testing.T) {
	const conv = "0b7c2a52-5d9e-4c53-9a4e-2f3f1b0c9d11"
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Dispatch
		err  string
	}{
		{"dispatch metadata", map[string]string{"PARLEY_DISPATCH_METADATA": `{"conversation_id":"` + conv + `","last_seq":42,"agent_metadata":"x"}`, "PARLEY_LAST_SEQ": "7"},
			Dispatch{ConversationID: conv, LastSeq: 42, AgentMetadata: "x"}, ""},
		{"a new room's metadata", map[string]string{"PARLEY_DISPATCH_METADATA": `{"conversation_id":"` + conv + `"}`}, Dispatch{ConversationID: conv}, ""},
		{"standalone", map[string]string{"PARLEY_CONVERSATION_ID": conv, "PARLEY_LAST_SEQ": "7"}, Dispatch{ConversationID: conv, LastSeq: 7}, ""},
		{"standalone to the newest", map[string]string{"PARLEY_CONVERSATION_ID": conv}, Dispatch{ConversationID: conv}, ""},
		{"no conversation", map[string]string{}, Dispatch{}, "neither PARLEY_DISPATCH_METADATA nor PARLEY_CONVERSATION_ID"},
		{"metadata without one", map[string]string{"PARLEY_DISPATCH_METADATA": `{"last_seq":3}`}, Dispatch{}, "no conversation_id"},
		{"bad metadata", map[string]string{"PARLEY_DISPATCH_METADATA": `{`}, Dispatch{}, "PARLEY_DISPATCH_METADATA"},
		{"bad seq", map[string]string{"PARLEY_CONVERSATION_ID": conv, "PARLEY_LAST_SEQ": "-1"}, Dispatch{}, "PARLEY_LAST_SEQ"},
	} {
		got, err := dispatchOf(func(k string) string { return tc.env[k] })
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one about %s", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: dispatchOf = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

func newAgent(t *testing.T, s *stack, base string, logs *syncBuffer) *Agent {
	t.Helper()
	c, err := NewClient(s.agentKey, []string{base}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c.Backoff = 10 * time.Millisecond
	return &Agent{client: c, conversationID: s.convID, name: "example-agent", log: c.log}
}

// loseFirstAnswer is a proxy to base that passes the first request to path
// through to Parley and then answers it 503 (unavailable), as a replica
// dying after its commit would, and passes everything else through.
func loseFirstAnswer(t *testing.T, base, path string) string {
	t.Helper()
	backend, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	proxy := httputil.NewSingleHostReverseProxy(backend)
	proxy.Transport = h2c
	var lost atomic.Bool
	srv := &http.Server{Protocols: new(http.Protocols), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path && lost.CompareAndSwap(false, true) {
			rec := httptest.NewRecorder()
			proxy.ServeHTTP(rec, r)
			if got := rec.Result().Trailer.Get("Grpc-Status"); got != "0" {
				t.Errorf("the request whose answer is lost failed on Parley: grpc-status %q", got)
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	})}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// listItems reads every item of the stack's conversation, oldest first.
func listItems(t *testing.T, s *stack, base string) []*parleyv1.Item {
	t.Helper()
	page, err := s.conversations(base).ListItems(t.Context(), asUser(s, &parleyv1.ListItemsRequest{ConversationId: s.convID, PageSize: 200, Order: parleyv1.Order_ORDER_OLDEST_FIRST}))
	if err != nil {
		t.Fatal(err)
	}
	if page.Msg.GetNextPageToken() != "" {
		t.Fatal("more than a page of items")
	}
	return page.Msg.GetItems()
}

var itemIDPattern = regexp.MustCompile(`^item_[0-9a-f]{12}$`)

func itemKind(it *parleyv1.ChatContext_ChatItem) string {
	switch {
	case it.GetMessage() != nil:
		return strings.ToLower(strings.TrimPrefix(it.GetMessage().GetRole().String(), "CHAT_ROLE_"))
	case it.GetFunctionCall() != nil:
		return "function_call"
	case it.GetFunctionCallOutput() != nil:
		return "function_call_output"
	}
	return fmt.Sprintf("%T", it.GetItem())
}

func itemID(it *parleyv1.ChatContext_ChatItem) string {
	switch {
	case it.GetMessage() != nil:
		return it.GetMessage().GetId()
	case it.GetFunctionCall() != nil:
		return it.GetFunctionCall().GetId()
	case it.GetFunctionCallOutput() != nil:
		return it.GetFunctionCallOutput().GetId()
	}
	return ""
}

// slowReader hands out one line per read, at most one every interval.
type slowReader struct {
	lines []string
	every time.Duration
}

func (r *slowReader) Read(p []byte) (int, error) {
	for len(r.lines) > 0 && r.lines[0] == "" {
		r.lines = r.lines[1:]
	}
	if len(r.lines) == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.every)
	n := copy(p, r.lines[0])
	r.lines[0] = r.lines[0][n:]
	return n, nil
}
