//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/testenv"
)

const (
	// mixedTurns is how many turns each of the two agents saves.
	mixedTurns = 20
)

// previousRevision is the commit a rolling update comes from, as
// e2e/previous-release names it (PARLEY_E2E_PREVIOUS overrides), so the
// older binary does not know the newer migrations and runs against a schema
// ahead of it.
func previousRevision(t *testing.T) string {
	t.Helper()
	if rev := os.Getenv("PARLEY_E2E_PREVIOUS"); rev != "" {
		return rev
	}
	b, err := os.ReadFile("previous-release")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			return line
		}
	}
	t.Fatal("e2e/previous-release names no commit")
	return ""
}

// buildRevision builds cmd/parley as it was at rev, from git's own copy of
// the tree, leaving the checkout alone.
func buildRevision(t *testing.T, rev string) string {
	t.Helper()
	src := t.TempDir()
	archive := exec.Command("git", "-C", "..", "archive", "--format=tar", rev)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	var archiveErr strings.Builder
	archive.Stderr = &archiveErr
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s (a clone with its history is needed, or set PARLEY_E2E_PREVIOUS): %v: %s", rev, err, archiveErr.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("untar %s: %v", rev, err)
	}
	bin := filepath.Join(t.TempDir(), "parley-previous")
	build := exec.Command("go", "build", "-o", bin, "./cmd/parley")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build parley at %s: %v\n%s", rev, err, out)
	}
	return bin
}

// testMixedVersions runs the previous release's binary beside the new ones
// on the database they migrated, as a rolling update does: agents save
// turns into one conversation through both at once, and each serves every
// turn, in order, whichever wrote it.
func testMixedVersions(t *testing.T, c *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	rev := previousRevision(t)
	resolved, err := exec.Command("git", "-C", "..", "rev-parse", "--short", rev).Output()
	if err != nil {
		t.Fatalf("git rev-parse %s: %v", rev, err)
	}
	t.Logf("previous binary: %s (%s)", rev, strings.TrimSpace(string(resolved)))
	old := &replica{index: len(c.replicas), addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), bin: buildRevision(t, rev),
		logPath: filepath.Join(c.outDir, "replica-previous.log")}
	old.env = append(append([]string{}, c.env...), "PARLEY_HTTP_ADDR="+old.addr)
	_ = os.Remove(old.logPath)
	t.Cleanup(old.kill)
	if err := old.start(); err != nil {
		t.Fatal(err)
	}
	if err := old.waitReady(ctx); err != nil {
		t.Fatalf("previous binary on the migrated database: %v\n%s", err, old.tail(40))
	}
	defer func() {
		if t.Failed() {
			t.Logf("last lines of the previous binary's log (%s):\n%s", old.logPath, old.tail(30))
		}
	}()
	current := c.replicas[0]

	w := newWeb(current.base(), "mixed-web")
	reg, err := w.auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: "mixed@example.com", Password: password}))
	if err != nil {
		t.Fatal(err)
	}
	token := reg.Msg.GetTokens().GetAccessToken()
	conv, err := w.conversations.CreateConversation(ctx, bearer(&parleyv1.CreateConversationRequest{Title: "mixed versions"}, token))
	if err != nil {
		t.Fatal(err)
	}
	convID := conv.Msg.GetConversation().GetId()

	key := c.agentKey(t, "mixed-agent")
	sides := []struct {
		name  string
		agent *agent
	}{
		{"previous", newAgent(old.base(), "mixed-previous", key)},
		{"current", newAgent(current.base(), "mixed-current", key)},
	}
	acks := make([][]ack, len(sides))
	errs := make([]error, len(sides))
	var wg sync.WaitGroup
	for i, side := range sides {
		wg.Go(func() {
			for n := 1; n <= mixedTurns; n++ {
				a := ack{conv: convID, turnID: fmt.Sprintf("mixed-%s-%02d", side.name, n),
					user: fmt.Sprintf("%s question %d", side.name, n), assistant: fmt.Sprintf("%s answer %d", side.name, n)}
				resp, err := side.agent.SaveTurn(ctx, convID, a.turnID, a.user, a.assistant)
				if err != nil {
					errs[i] = fmt.Errorf("%s binary: SaveTurn %s: %w", side.name, a.turnID, err)
					return
				}
				for _, m := range resp.GetMessages() {
					a.seqs = append(a.seqs, m.GetSeq())
				}
				acks[i] = append(acks[i], a)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	all := append(append([]ack{}, acks[0]...), acks[1]...)

	// Each binary serves every turn, the other's included, and replays the
	// other's turns without storing them again.
	var lists [][]*parleyv1.Message
	for _, side := range sides {
		msgs, err := side.agent.ListMessages(ctx, convID)
		if err != nil {
			t.Fatalf("%s binary: ListMessages: %v", side.name, err)
		}
		lost, duplicated, strays, problems := compare(all, msgs)
		t.Logf("%s binary lists %d messages: %d lost, %d duplicated, %d strays", side.name, len(msgs), lost, duplicated, strays)
		if lost != 0 || duplicated != 0 || strays != 0 || len(problems) != 0 {
			t.Errorf("%s binary: %d lost, %d duplicated, %d strays:\n%s", side.name, lost, duplicated, strays, strings.Join(problems, "\n"))
		}
		lists = append(lists, msgs)
	}
	if !sameMessages(lists[0], lists[1]) {
		t.Errorf("the two binaries list different messages")
	}
	for i := range sides {
		other := sides[1-i]
		for _, a := range acks[i][:5] {
			resp, err := other.agent.SaveTurn(ctx, convID, a.turnID, a.user, a.assistant)
			if err != nil {
				t.Fatalf("%s binary replaying %s: %v", other.name, a.turnID, err)
			}
			if !resp.GetReplayed() || len(resp.GetMessages()) != 2 || resp.GetMessages()[0].GetSeq() != a.seqs[0] {
				t.Errorf("%s binary replaying %s: replayed %v, messages %v; want the first call's seqs %v",
					other.name, a.turnID, resp.GetReplayed(), resp.GetMessages(), a.seqs)
			}
		}
	}
	checkSQL(ctx, t, c, convID, 4*mixedTurns)
	checkItems(ctx, t, w, token, convID, lists[0])
}

// checkItems checks that every message is an item, whichever binary saved
// it (a binary from before items gets its items from the migration's
// trigger): item seqs run 1..n without gaps, in the messages' order, each
// with SaveTurn's item id and its message's seq and text.
func checkItems(ctx context.Context, t *testing.T, w *web, token, convID string, msgs []*parleyv1.Message) {
	t.Helper()
	var items []*parleyv1.Item
	for page := ""; ; {
		resp, err := w.conversations.ListItems(ctx, bearer(&parleyv1.ListItemsRequest{
			ConversationId: convID, PageSize: 200, PageToken: page, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
		}, token))
		if err != nil {
			t.Fatalf("current binary: ListItems: %v", err)
		}
		items = append(items, resp.Msg.GetItems()...)
		if page = resp.Msg.GetNextPageToken(); page == "" {
			break
		}
	}
	if len(items) != len(msgs) {
		t.Fatalf("%d items for %d messages", len(items), len(msgs))
	}
	role := map[parleyv1.Role]string{parleyv1.Role_ROLE_USER: "user", parleyv1.Role_ROLE_ASSISTANT: "assistant"}
	for i, it := range items {
		m := it.GetItem().GetMessage()
		want := "saveturn:" + msgs[i].GetTurnId() + ":" + role[msgs[i].GetRole()]
		if it.GetSeq() != int64(i+1) || it.GetMessageSeq() != msgs[i].GetSeq() || m.GetId() != want ||
			len(m.GetContent()) != 1 || m.GetContent()[0].GetText() != msgs[i].GetContent() {
			t.Fatalf("item %d = %v, for message %v", i, it, msgs[i])
		}
	}
	t.Logf("current binary lists %d items, seqs 1..%d, one per message", len(items), len(items))
}
