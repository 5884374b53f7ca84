package main

import (
	"bufio"
	"bytes"
	"context"
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

// nodeSDKDir is sdk/node (@parley/livekit), whose pinned @livekit/agents
// make node-sdk-deps installs.
const nodeSDKDir = "../../sdk/node"

// buildNodeSDK compiles sdk/node and its tests with its pinned TypeScript,
// so the test runs the sources as they are, never a stale build.
func buildNodeSDK(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed to run @livekit/agents: %v", err)
	}
	if _, err := os.Stat(filepath.Join(nodeSDKDir, "node_modules", "@livekit", "agents", "package.json")); err != nil {
		t.Fatalf("@livekit/agents is not installed in %s: run make node-sdk-deps (%v)", nodeSDKDir, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "node_modules/typescript/bin/tsc", "-p", ".")
	cmd.Dir = nodeSDKDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tsc -p sdk/node: %v\n%s", err, out)
	}
	return node
}

// TestLiveKitAgentsNodeSession is sdk/node's proof on the real framework:
// an @livekit/agents AgentSession in text-only mode (AgentSession.run, no
// room), with a scripted LLM (canned replies and one function call),
// persisted by @parley/livekit to a real Parley process that is killed for
// 10 s mid-session and restarted on the same port and database, and at the
// end killed for good to check the restore and shutdown deadlines.
// sdk/node/tests/session_check.ts checks the session's side; this test
// checks Parley's: every item once, in order.
func TestLiveKitAgentsNodeSession(t *testing.T) {
	node := buildNodeSDK(t)
	bin := buildBinary(t)
	env := baseEnv(t, testenv.DatabaseURL(t))
	// Agent tokens that expire several times within the session, so the
	// client must renew them (and after the outage).
	env["PARLEY_AGENT_TOKEN_TTL"] = "6s"
	parley := startReplica(t, bin, env)
	parley.waitReady(t, 60*time.Second)

	var keyOut bytes.Buffer
	if code := run(t.Context(), []string{"agent-key", "create", "--name", "node-agent"}, func(k string) string { return env[k] }, &keyOut, io.Discard); code != 0 {
		t.Fatalf("agent-key create exited %d", code)
	}
	lines := strings.Split(strings.TrimSpace(keyOut.String()), "\n")
	apiKey := lines[len(lines)-1]

	tok := registerUser(t, parley.base)
	convs := parleyv1connect.NewConversationServiceClient(http.DefaultClient, parley.base)
	c, err := convs.CreateConversation(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "node session"}), tok))
	if err != nil {
		t.Fatal(err)
	}
	conv := c.Msg.GetConversation().GetId()
	kc, err := convs.CreateConversation(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "every kind"}), tok))
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(t.Context(), node, "dist/tests/session_check.js")
	cmd.Dir = nodeSDKDir
	cmd.Env = append(os.Environ(), "PARLEY_URL="+parley.base, "PARLEY_AGENT_KEY="+apiKey, "CONVERSATION_ID="+conv, "KINDS_CONVERSATION_ID="+kc.Msg.GetConversation().GetId())
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
	var result struct {
		Session1 []string `json:"session1"`
		Session2 []string `json:"session2"`
		Waited   int      `json:"waited"`
	}
	var out []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		out = append(out, line)
		switch {
		case line == "KILL":
			// SIGKILL: no drain, requests in flight are cut.
			if err := parley.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			_ = parley.cmd.Wait()
			time.Sleep(10 * time.Second)
			parley = startReplica(t, bin, env)
			parley.waitReady(t, 60*time.Second)
			if _, err := io.WriteString(stdin, "RESTARTED\n"); err != nil {
				t.Fatal(err)
			}
		case line == "DISPATCH":
			// Session 2 is the agent of a room that resumes the
			// conversation: its job metadata is the dispatch CreateRoom
			// puts in the join token's room configuration.
			if _, err := io.WriteString(stdin, dispatchMetadata(t, parley.base, tok, conv, "node-agent")+"\n"); err != nil {
				t.Fatal(err)
			}
		case line == "STOP":
			if err := parley.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			_ = parley.cmd.Wait()
			if _, err := io.WriteString(stdin, "STOPPED\n"); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(line, "RESULT "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "RESULT ")), &result); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("session_check.js: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(out, "\n"), stderr.String())
	}
	t.Logf("session_check.js:\n%s", strings.Join(out, "\n"))
	if len(result.Session1) == 0 || len(result.Session2) == 0 {
		t.Fatalf("no RESULT from session_check.js:\n%s", strings.Join(out, "\n"))
	}
	if result.Waited == 0 {
		t.Errorf("no item waited while Parley was down: the outage was not mid-session")
	}

	// Parley's own view, through the user's ListItems: both sessions'
	// items, each once, in history order, with gap-free seqs (and nothing
	// of the session that ran with Parley stopped for good).
	parley = startReplica(t, bin, env)
	parley.waitReady(t, 60*time.Second)
	want := append(append([]string{}, result.Session1...), result.Session2...)
	var got []string
	var pageToken string
	for {
		page, err := convs.ListItems(t.Context(), bearer(connect.NewRequest(&parleyv1.ListItemsRequest{
			ConversationId: conv, PageSize: 200, PageToken: pageToken, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
		}), tok))
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Msg.GetItems() {
			if it.GetSeq() != int64(len(got)+1) {
				t.Errorf("item %d has seq %d", len(got)+1, it.GetSeq())
			}
			if it.GetAgent() != "node-agent" {
				t.Errorf("item %d stored for agent %q, want node-agent", it.GetSeq(), it.GetAgent())
			}
			got = append(got, nodeItemID(it.GetItem()))
		}
		if pageToken = page.Msg.GetNextPageToken(); pageToken == "" {
			break
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Parley's items:\n %v\nthe sessions' history:\n %v", got, want)
	}
}

// nodeItemID is the LiveKit id of any kind of chat item.
func nodeItemID(it *parleyv1.ChatContext_ChatItem) string {
	switch v := it.GetItem().(type) {
	case *parleyv1.ChatContext_ChatItem_Message:
		return v.Message.GetId()
	case *parleyv1.ChatContext_ChatItem_FunctionCall:
		return v.FunctionCall.GetId()
	case *parleyv1.ChatContext_ChatItem_FunctionCallOutput:
		return v.FunctionCallOutput.GetId()
	case *parleyv1.ChatContext_ChatItem_AgentHandoff:
		return v.AgentHandoff.GetId()
	case *parleyv1.ChatContext_ChatItem_AgentConfigUpdate:
		return v.AgentConfigUpdate.GetId()
	}
	return ""
}
