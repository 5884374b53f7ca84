package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// readmeHost is the address the README's commands use; the test points them
// at its own server instead.
const readmeHost = "localhost:8080"

// readmeReceiver is the README's webhook receiver, which the test swaps for
// an https address on 127.0.0.1 (allowed by the test's environment), so
// that registering it needs no DNS. Nothing is delivered to it.
const readmeReceiver = "https://hooks.example.com"

var (
	// placeholderLine is `NAME=...  # comment`: a value the reader copies,
	// from the previous answer ("path from the answer") or from elsewhere.
	placeholderLine = regexp.MustCompile(`^([A-Z_]+)=\.\.\.\s+#\s*(.*)$`)
	fromAnswer      = regexp.MustCompile(`^([A-Za-z.]+) from the answer`)
	assignmentLine  = regexp.MustCompile(`^[A-Z_]+=`)
	curlCommand     = regexp.MustCompile(`(^|\|\s*)curl\s`)
	readmePath      = regexp.MustCompile(regexp.QuoteMeta(readmeHost) + `(/[^\s"'?]*)`)
)

// readmeAPILines returns the logical lines (continuations joined) of the sh
// code blocks in the README's "## The API" section.
func readmeAPILines(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	start := strings.Index(text, "\n## The API\n")
	if start < 0 {
		t.Fatal(`README.md has no "## The API" section`)
	}
	section := text[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var lines []string
	inBlock, pending := false, ""
	for _, line := range strings.Split(section, "\n") {
		switch {
		case !inBlock && strings.HasPrefix(line, "```sh"):
			inBlock = true
		case inBlock && strings.HasPrefix(line, "```"):
			inBlock = false
		case inBlock:
			if cont, ok := strings.CutSuffix(line, "\\"); ok {
				pending += cont
				continue
			}
			lines = append(lines, strings.TrimSpace(pending+line))
			pending = ""
		}
	}
	return lines
}

// jsonPath follows a dotted path of object keys.
func jsonPath(v any, path string) (string, bool) {
	for _, key := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		v = m[key]
	}
	s, ok := v.(string)
	return s, ok && s != ""
}

// TestReadmeCurl runs the README's curl lines, in order, against a live
// server: each answer must be a successful JSON answer, the values the reader
// is told to copy are copied from the answers, and the WatchMessages stream
// must deliver a turn saved while it runs.
func TestReadmeCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to check the README: install it (apt-get install curl)")
	}
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["PARLEY_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"
	s := startServer(t, env)
	host := env["PARLEY_HTTP_ADDR"]

	// The README's agent key comes from `parley agent-key create`.
	var keyOut bytes.Buffer
	if code := run(t.Context(), []string{"agent-key", "create", "--name", "readme"}, func(k string) string { return env[k] }, &keyOut, io.Discard); code != 0 {
		t.Fatalf("agent-key create exited %d", code)
	}
	keyLines := strings.Split(strings.TrimSpace(keyOut.String()), "\n")
	vars := map[string]string{}
	provided := map[string]string{"KEY": keyLines[len(keyLines)-1]}

	var prelude []string // shell assignments the later lines rely on
	var last any         // the previous command's answer
	covered := map[string]bool{}
	for _, line := range readmeAPILines(t) {
		if m := placeholderLine.FindStringSubmatch(line); m != nil {
			name, comment := m[1], m[2]
			if p := fromAnswer.FindStringSubmatch(comment); p != nil {
				v, ok := jsonPath(last, p[1])
				if !ok {
					t.Fatalf("%s: the previous answer has no %s: %v", line, p[1], last)
				}
				vars[name] = v
			} else if v, ok := provided[name]; ok {
				vars[name] = v
			} else {
				t.Fatalf("the test does not know where %s comes from: %s", name, line)
			}
			continue
		}
		if !curlCommand.MatchString(line) {
			if assignmentLine.MatchString(line) {
				prelude = append(prelude, line)
			}
			continue
		}
		for _, m := range readmePath.FindAllStringSubmatch(line, -1) {
			covered[m[1]] = true
		}
		script := "set -euo pipefail\n" + strings.Join(prelude, "\n") + "\n" + strings.NewReplacer(readmeHost, host, readmeReceiver, "https://127.0.0.1:9").Replace(line)
		if strings.Contains(line, "/WatchMessages") {
			checkWatch(t, s, script, vars)
			continue
		}
		out := runScript(t, script, vars)
		if err := json.Unmarshal(out, &last); err != nil {
			t.Fatalf("%s\nanswered %q, not JSON", line, out)
		}
		if m, ok := last.(map[string]any); ok && m["code"] != nil {
			t.Fatalf("%s\nanswered an error: %s", line, out)
		}
	}

	for _, path := range []string{
		"/parley.v1.AuthService/Register", "/parley.v1.AuthService/Login", "/parley.v1.AuthService/ExchangeAgentKey",
		"/parley.v1.ConversationService/CreateConversation", "/parley.v1.ConversationService/SaveTurn",
		"/parley.v1.ConversationService/ListMessages", "/parley.v1.ConversationService/WatchMessages",
		"/api/v1/conversations", "/api/v1/conversations/save-turn", "/api/v1/conversations/$CONV/messages",
		"/api/v1/conversations/$META_CONV", "/parley.v1.ConversationService/ListConversations",
		"/parley.v1.ConversationService/AppendItems", "/api/v1/conversations/$CONV/items",
		"/parley.v1.WebhookService/CreateEndpoint", "/api/v1/webhooks/events",
		"/api/v1/webhooks/endpoints/$ENDPOINT/deliveries", "/parley.v1.WebhookService/RedeliverParked",
		"/parley.v1.WebhookService/EnableEndpoint",
		"/parley.v1.CallService/AggregateCalls", "/api/v1/calls:aggregate",
	} {
		if !covered[path] {
			t.Errorf("the README's API section has no curl for %s", path)
		}
	}
}

func runScript(t *testing.T, script string, vars map[string]string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := scriptCommand(ctx, script, vars)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s\nfailed: %v\n%s", script, err, stderr.String())
	}
	return out
}

func scriptCommand(ctx context.Context, script string, vars map[string]string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	// curl runs in bash's process group; ending the command ends it too,
	// or its open stdout would keep Wait waiting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// checkWatch runs the README's WatchMessages command, waits for the stored
// messages, saves another turn and waits for it to arrive too.
func checkWatch(t *testing.T, s *server, script string, vars map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream := &syncBuffer{}
	cmd := scriptCommand(ctx, script, vars)
	cmd.Stdout, cmd.Stderr = stream, stream
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	waitFor := func(what string) {
		t.Helper()
		for !strings.Contains(stream.String(), what) {
			if ctx.Err() != nil {
				t.Fatalf("the WatchMessages stream never showed %q; it printed %q", what, stream.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The turns saved earlier in the README come first.
	waitFor(`"content":"Hello, Ada."`)

	req := connect.NewRequest(&parleyv1.SaveTurnRequest{
		ConversationId: vars["CONV"], TurnId: "live", UserMessage: "Still there?", AssistantMessage: "Watching live.",
	})
	req.Header().Set("Authorization", "Bearer "+vars["TOKEN"])
	if _, err := parleyv1connect.NewConversationServiceClient(http.DefaultClient, s.base).SaveTurn(ctx, req); err != nil {
		t.Fatal(err)
	}
	waitFor(`"content":"Watching live."`)
	if out := stream.String(); !strings.HasPrefix(out, "\x00\x00\x00") || strings.Contains(out, `"error"`) {
		t.Errorf("stream output %q", out)
	}
}
