package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

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

// TestAgentSurvivesReplicaKill points the agent at two replicas, SIGKILLs
// the one it is talking to in the middle of the run, and checks that every
// turn is stored exactly once and in order.
func TestAgentSurvivesReplicaKill(t *testing.T) {
	const turns = 30
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
		// Short-lived agent tokens, so the run has to renew them.
		"PARLEY_AGENT_TOKEN_TTL":             "2s",
		"PARLEY_RATE_LIMIT_IP_PER_MINUTE":    "100000",
		"PARLEY_RATE_LIMIT_USER_PER_MINUTE":  "100000",
		"PARLEY_RATE_LIMIT_AGENT_PER_MINUTE": "100000",
	}
	replicas := []*replica{startReplica(t, bin, env), startReplica(t, bin, env)}

	keyCmd := exec.Command(bin, "agent-key", "create", "--name", "test-agent")
	keyCmd.Env = environ(env)
	out, err := keyCmd.Output()
	if err != nil {
		t.Fatalf("agent-key create: %v", err)
	}
	outLines := strings.Split(strings.TrimSpace(string(out)), "\n")
	agentKey := outLines[len(outLines)-1]

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	authClient := parleyv1connect.NewAuthServiceClient(http.DefaultClient, replicas[1].base)
	reg, err := authClient.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{
		Email: "owner@example.com", Password: "correct horse battery", DisplayName: "Owner",
	}))
	if err != nil {
		t.Fatal(err)
	}
	userToken := reg.Msg.GetTokens().GetAccessToken()
	conversations := parleyv1connect.NewConversationServiceClient(http.DefaultClient, replicas[1].base)
	createReq := connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "with an agent"})
	createReq.Header().Set("Authorization", "Bearer "+userToken)
	created, err := conversations.CreateConversation(ctx, createReq)
	if err != nil {
		t.Fatal(err)
	}
	convID := created.Msg.GetConversation().GetId()

	// The agent starts on the first URL; the kill comes halfway through,
	// on whichever replica saved the last turn.
	var input strings.Builder
	for i := 1; i <= turns; i++ {
		fmt.Fprintf(&input, "question %d\tanswer %d\n", i, i)
	}
	stdoutR, stdoutW := io.Pipe()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	getenv := func(k string) string {
		return map[string]string{
			"PARLEY_URLS":            replicas[0].base + "," + replicas[1].base,
			"PARLEY_AGENT_KEY":       agentKey,
			"PARLEY_CONVERSATION_ID": convID,
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
	list := connect.NewRequest(&parleyv1.ListMessagesRequest{ConversationId: convID, PageSize: 200, Order: parleyv1.Order_ORDER_OLDEST_FIRST})
	list.Header().Set("Authorization", "Bearer "+userToken)
	page, err := parleyv1connect.NewConversationServiceClient(http.DefaultClient, survivor).ListMessages(ctx, list)
	if err != nil {
		t.Fatal(err)
	}
	msgs := page.Msg.GetMessages()
	if len(msgs) != 2*turns {
		t.Fatalf("%d messages stored for %d turns", len(msgs), turns)
	}
	perTurn := map[string]int{}
	for i, m := range msgs {
		turn := i/2 + 1
		wantRole, wantContent := parleyv1.Role_ROLE_USER, fmt.Sprintf("question %d", turn)
		if i%2 == 1 {
			wantRole, wantContent = parleyv1.Role_ROLE_ASSISTANT, fmt.Sprintf("answer %d", turn)
		}
		if m.GetSeq() != int64(i+1) || m.GetRole() != wantRole || m.GetContent() != wantContent || m.GetTurnId() == "" {
			t.Errorf("message %d = seq %d %v %q (turn %q)", i, m.GetSeq(), m.GetRole(), m.GetContent(), m.GetTurnId())
		}
		perTurn[m.GetTurnId()]++
	}
	for id, n := range perTurn {
		if n != 2 {
			t.Errorf("turn %s has %d messages, want 2", id, n)
		}
	}
	if len(perTurn) != turns {
		t.Errorf("%d distinct turn ids, want %d", len(perTurn), turns)
	}
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
