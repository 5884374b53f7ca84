package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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
	// Agent tokens that expire several times within the session, so the
	// client must renew them (and after the outage).
	p := startAgentParley(t, "node-agent", "6s")
	conv := p.conversation(t, "node session")
	kinds := p.conversation(t, "every kind")
	cmd := exec.CommandContext(t.Context(), node, "dist/tests/session_check.js")
	cmd.Dir = nodeSDKDir
	cmd.Env = append(os.Environ(), "PARLEY_URL="+p.r.base, "PARLEY_AGENT_KEY="+p.apiKey, "CONVERSATION_ID="+conv, "KINDS_CONVERSATION_ID="+kinds)
	p.checkSession(t, cmd, conv)
}
