package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestLiveKitAgentsSession is sdk/python's proof on the real framework: a
// livekit-agents AgentSession in text-only mode, with a scripted LLM (canned
// replies and one function call), persisted by parley_livekit to a real
// Parley process that is killed for 10 s mid-session and restarted on the
// same port and database, and at the end killed for good to check the
// restore and shutdown deadlines. sdk/python/tests/session_check.py checks
// the session's side; this test checks Parley's: every item once, in order.
func TestLiveKitAgentsSession(t *testing.T) {
	py := liveKitAgentsPython(t)
	// Agent tokens that expire several times within the session, so the
	// client must renew them (and after the outage).
	p := startAgentParley(t, "py-agent", "6s")
	conv := p.conversation(t, "python session")
	src, err := filepath.Abs("../../sdk/python/src")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), py, "../../sdk/python/tests/session_check.py")
	cmd.Env = append(os.Environ(), "PYTHONPATH="+src, "PARLEY_URL="+p.r.base, "PARLEY_AGENT_KEY="+p.apiKey, "CONVERSATION_ID="+conv)
	p.checkSession(t, cmd, conv)
}

// agentParley is a Parley process for an agent SDK's checks: its binary
// and environment (to restart it on the same port and database), an agent
// key for the agent, and a user owning the conversations.
type agentParley struct {
	bin           string
	env           map[string]string
	r             *replica
	agent, apiKey string
	tok           string // the user's
	convs         parleyv1connect.ConversationServiceClient
}

// startAgentParley starts Parley, with agent tokens living tokenTTL ("" is
// the default), and makes an agent key for agent and a user.
func startAgentParley(t *testing.T, agent, tokenTTL string) *agentParley {
	t.Helper()
	p := &agentParley{bin: buildBinary(t), env: baseEnv(t, testenv.DatabaseURL(t)), agent: agent}
	if tokenTTL != "" {
		p.env["PARLEY_AGENT_TOKEN_TTL"] = tokenTTL
	}
	p.r = startReplica(t, p.bin, p.env)
	p.r.waitReady(t, 60*time.Second)
	var keyOut bytes.Buffer
	if code := run(t.Context(), []string{"agent-key", "create", "--name", agent}, func(k string) string { return p.env[k] }, &keyOut, io.Discard); code != 0 {
		t.Fatalf("agent-key create exited %d", code)
	}
	lines := strings.Split(strings.TrimSpace(keyOut.String()), "\n")
	p.apiKey = lines[len(lines)-1]
	p.tok = registerUser(t, p.r.base)
	p.convs = parleyv1connect.NewConversationServiceClient(http.DefaultClient, p.r.base)
	return p
}

// conversation creates one of the user's conversations.
func (p *agentParley) conversation(t *testing.T, title string) string {
	t.Helper()
	c, err := p.convs.CreateConversation(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: title}), p.tok))
	if err != nil {
		t.Fatal(err)
	}
	return c.Msg.GetConversation().GetId()
}

// restart SIGKILLs Parley (no drain: requests in flight are cut), waits
// away, and starts it again on the same port and database.
func (p *agentParley) restart(t *testing.T, away time.Duration) {
	t.Helper()
	p.kill(t)
	time.Sleep(away)
	p.r = startReplica(t, p.bin, p.env)
	p.r.waitReady(t, 60*time.Second)
}

func (p *agentParley) kill(t *testing.T) {
	t.Helper()
	if err := p.r.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.r.cmd.Wait()
}

// checkSession runs a session_check script (Python or Node, same protocol)
// on conv: it answers KILL with a 10 s outage, DISPATCH with the job
// metadata of a room resuming conv, STOP by stopping Parley for good. Then,
// Parley restarted, the user's ListItems must hold both sessions' items,
// each once, in history order, with gap-free seqs, all the agent's (and
// nothing of the session that ran with Parley stopped for good).
func (p *agentParley) checkSession(t *testing.T, cmd *exec.Cmd, conv string) {
	t.Helper()
	var result struct {
		Session1 []string `json:"session1"`
		Session2 []string `json:"session2"`
		Waited   int      `json:"waited"`
	}
	runAgentScript(t, cmd, &result, func(line string) string {
		switch line {
		case "KILL":
			p.restart(t, 10*time.Second)
			return "RESTARTED"
		case "DISPATCH":
			// Session 2 is the agent of a room that resumes the
			// conversation: its job metadata is the dispatch CreateRoom
			// puts in the join token's room configuration.
			return dispatchMetadata(t, p.r.base, p.tok, conv, p.agent)
		case "STOP":
			p.kill(t)
			return "STOPPED"
		}
		return ""
	})
	if len(result.Session1) == 0 || len(result.Session2) == 0 {
		t.Fatalf("RESULT has no sessions: %+v", result)
	}
	if result.Waited == 0 {
		t.Errorf("no item waited while Parley was down: the outage was not mid-session")
	}
	p.r = startReplica(t, p.bin, p.env)
	p.r.waitReady(t, 60*time.Second)
	want := append(append([]string{}, result.Session1...), result.Session2...)
	var got []string
	for i, it := range p.items(t, conv) {
		if it.GetSeq() != int64(i+1) {
			t.Errorf("item %d has seq %d", i+1, it.GetSeq())
		}
		if it.GetAgent() != p.agent {
			t.Errorf("item %d stored for agent %q, want %s", it.GetSeq(), it.GetAgent(), p.agent)
		}
		got = append(got, chatItemID(it.GetItem()))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Parley's items:\n %v\nthe sessions' history:\n %v", got, want)
	}
}

// items is every item of conv, oldest first, through the user's ListItems.
func (p *agentParley) items(t *testing.T, conv string) []*parleyv1.Item {
	t.Helper()
	var all []*parleyv1.Item
	var pageToken string
	for {
		page, err := p.convs.ListItems(t.Context(), bearer(connect.NewRequest(&parleyv1.ListItemsRequest{
			ConversationId: conv, PageSize: 200, PageToken: pageToken, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
		}), p.tok))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Msg.GetItems()...)
		if pageToken = page.Msg.GetNextPageToken(); pageToken == "" {
			return all
		}
	}
}

// runAgentScript runs an agent SDK's check script, writing reply's answer
// (when not "") to its stdin for each line it prints, and decodes its
// "RESULT <json>" line into result. A script that fails, or ends without
// a RESULT, fails the test with its output.
func runAgentScript(t *testing.T, cmd *exec.Cmd, result any, reply func(line string) string) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(cmd.Args[len(cmd.Args)-1])
	var out []string
	var sawResult bool
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		out = append(out, line)
		if r, ok := strings.CutPrefix(line, "RESULT "); ok {
			if err := json.Unmarshal([]byte(r), result); err != nil {
				t.Fatalf("%s: RESULT: %v", name, err)
			}
			sawResult = true
			continue
		}
		if answer := reply(line); answer != "" {
			if _, err := io.WriteString(stdin, answer+"\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", name, err, strings.Join(out, "\n"), stderr.String())
	}
	t.Logf("%s:\n%s", name, strings.Join(out, "\n"))
	if !sawResult {
		t.Fatalf("no RESULT from %s", name)
	}
}

// chatItemID is the LiveKit id of any kind of chat item: every kind has
// an id field.
func chatItemID(it *parleyv1.ChatContext_ChatItem) string {
	m := it.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("item"))
	if fd == nil {
		return ""
	}
	return m.Get(fd).Message().Get(fd.Message().Fields().ByName("id")).String()
}

// dispatchMetadata creates a room resuming conv, dispatching agent, and
// returns the agent's dispatch metadata from the join token's room
// configuration (no LiveKit runs here; the token is what LiveKit would get).
func dispatchMetadata(t *testing.T, base, tok, conv, agent string) string {
	t.Helper()
	rooms := parleyv1connect.NewRoomServiceClient(http.DefaultClient, base)
	r, err := rooms.CreateRoom(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateRoomRequest{
		Name: agent + " session", AgentName: agent, ConversationId: conv,
	}), tok))
	if err != nil {
		t.Fatal(err)
	}
	return tokenDispatchMetadata(t, r.Msg.GetJoin().GetToken(), agent)
}

// tokenDispatchMetadata is the metadata of a join token's one dispatch,
// which must be of agent.
func tokenDispatchMetadata(t *testing.T, token, agent string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("join token has %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		RoomConfig struct {
			Agents []struct {
				AgentName string `json:"agentName"`
				Metadata  string `json:"metadata"`
			} `json:"agents"`
		} `json:"roomConfig"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if a := claims.RoomConfig.Agents; len(a) != 1 || a[0].AgentName != agent {
		t.Fatalf("join token dispatches %+v, want %s", a, agent)
	}
	return claims.RoomConfig.Agents[0].Metadata
}
