//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/postgres"
)

const (
	rollingConversations = 2
	rollingAgents        = 6 // spread over the conversations, so their turns interleave
	// agentPause paces each agent, so the load stays a load and not a
	// benchmark on two cores.
	agentPause = 4 * time.Millisecond
	// passes is how many times each replica is restarted per signal.
	passes = 2
	// servedAfterRestart is how many requests a restarted replica must have
	// taken before the next one goes down: it is really back in rotation.
	servedAfterRestart = 25
)

// ack is a turn an agent got an answer for.
type ack struct {
	conv      string
	turnID    string
	user      string
	assistant string
	seqs      []int64
	replayed  bool
}

// restartStats sums up the restarts of one signal.
type restartStats struct {
	count          int
	down, backInRR []time.Duration // signal to exit; exit to back in rotation
	// failed and retried count the requests the balancer could not pass on
	// and the agents' retried attempts while these restarts ran.
	failed, retried int
}

func testRollingRestart(t *testing.T, c *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	w := newWeb(c.lb.URL, "rolling-web")
	reg, err := w.auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: "grace@example.com", Password: password}))
	if err != nil {
		t.Fatal(err)
	}
	token := reg.Msg.GetTokens().GetAccessToken()
	convs := make([]string, rollingConversations)
	for i := range convs {
		resp, err := w.conversations.CreateConversation(ctx, bearer(&parleyv1.CreateConversationRequest{Title: fmt.Sprintf("rolling %d", i)}, token))
		if err != nil {
			t.Fatal(err)
		}
		convs[i] = resp.Msg.GetConversation().GetId()
	}

	// One web client watches each conversation, reconnecting after the last
	// seq it saw whenever its stream ends.
	watchCtx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	watchers := make([]*watcher, len(convs))
	watchOpened := make([]int, len(convs))
	var watchWG sync.WaitGroup
	for i, conv := range convs {
		watchers[i] = newWatcher(newWeb(c.lb.URL, fmt.Sprintf("watch-%d", i)), token, conv)
		watchWG.Go(func() { watchOpened[i] = watchers[i].run(watchCtx) })
	}

	agents := make([]*agent, rollingAgents)
	for i := range agents {
		agents[i] = newAgent(c.lb.URL, fmt.Sprintf("agent-%d", i), c.agentKey(t, fmt.Sprintf("rolling-agent-%d", i)))
	}
	acks := make([][]ack, len(agents))
	agentErrs := make([]error, len(agents))
	stop := make(chan struct{})
	var agentWG sync.WaitGroup
	for i, ag := range agents {
		conv := convs[i%len(convs)]
		agentWG.Go(func() {
			for n := 1; n <= 100_000; n++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					agentErrs[i] = ctx.Err()
					return
				case <-time.After(agentPause):
				}
				a := ack{conv: conv, turnID: fmt.Sprintf("agent-%d-turn-%d", i, n),
					user: fmt.Sprintf("agent %d asks %d", i, n), assistant: fmt.Sprintf("agent %d answers %d", i, n)}
				resp, err := ag.SaveTurn(ctx, conv, a.turnID, a.user, a.assistant)
				if err != nil {
					agentErrs[i] = fmt.Errorf("turn %s: %w", a.turnID, err)
					return
				}
				for _, m := range resp.GetMessages() {
					a.seqs = append(a.seqs, m.GetSeq())
				}
				a.replayed = resp.GetReplayed()
				acks[i] = append(acks[i], a)
			}
		})
	}

	// Rolling restarts under the load: one replica at a time, back in the
	// balancer's rotation and serving before the next one goes down.
	started := time.Now()
	time.Sleep(time.Second)
	stats := map[syscall.Signal]*restartStats{syscall.SIGTERM: {}, syscall.SIGKILL: {}}
	sigterms := make([]int, len(c.replicas))
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		failedBefore, retriedBefore := totalFailed(c.lb), totalRetried(agents)
		for range passes {
			for _, r := range c.replicas {
				if err := restart(ctx, c, r, sig, stats[sig]); err != nil {
					close(stop)
					agentWG.Wait()
					t.Fatal(err)
				}
				if sig == syscall.SIGTERM {
					sigterms[r.index]++
				}
			}
		}
		stats[sig].failed = totalFailed(c.lb) - failedBefore
		stats[sig].retried = totalRetried(agents) - retriedBefore
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	agentWG.Wait()
	loadTime := time.Since(started)

	for i, err := range agentErrs {
		if err != nil {
			t.Errorf("agent %d: an error reached the client: %v", i, err)
		}
	}

	// The verdict comes from the database, read through every replica.
	perConv := map[string][]ack{}
	acked, replays := 0, 0
	for _, as := range acks {
		for _, a := range as {
			perConv[a.conv] = append(perConv[a.conv], a)
			acked++
			if a.replayed {
				replays++
			}
		}
	}
	// The verifier reads with an agent token, which the per-user budget
	// does not limit, straight from each replica.
	verifyKey := c.agentKey(t, "verifier")
	direct := func(i int) *agent { return newAgent(c.replicas[i].base(), "verify", verifyKey) }
	verifier := direct(0)
	lost, duplicated, strays := 0, 0, 0
	stored := map[string][]*parleyv1.Message{}
	for _, conv := range convs {
		msgs, err := verifier.ListMessages(ctx, conv)
		if err != nil {
			t.Fatalf("list %s: %v", conv, err)
		}
		stored[conv] = msgs
		l, d, s, problems := compare(perConv[conv], msgs)
		lost, duplicated, strays = lost+l, duplicated+d, strays+s
		for _, p := range problems {
			t.Error(p)
		}
		// Every replica answers the same.
		for _, r := range c.replicas[1:] {
			other, err := direct(r.index).ListMessages(ctx, conv)
			if err != nil {
				t.Fatalf("list %s on replica %d: %v", conv, r.index, err)
			}
			if !sameMessages(msgs, other) {
				t.Errorf("replica %d lists %d messages of %s, replica 0 lists %d, or they differ", r.index, len(other), conv, len(msgs))
			}
		}
		checkSQL(ctx, t, c, conv, 2*len(perConv[conv]))
	}

	// The watches end with every message exactly once, in order.
	streamedTotal, watchEnds := 0, map[string]int{}
	for i, wt := range watchers {
		want := int64(len(stored[convs[i]]))
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		err := wt.waitFor(wctx, want)
		wcancel()
		if err != nil {
			t.Error(err)
		}
	}
	stopWatches()
	watchWG.Wait()
	reconnects := 0
	for i, wt := range watchers {
		msgs, problems, ends, _ := wt.snapshot()
		for _, p := range problems {
			t.Errorf("watch of conversation %d: %s", i, p)
		}
		if !sameMessages(msgs, stored[convs[i]]) {
			t.Errorf("watch of conversation %d saw %d messages, %d stored, or they differ", i, len(msgs), len(stored[convs[i]]))
		}
		streamedTotal += len(msgs)
		reconnects += watchOpened[i] - 1
		for k, v := range ends {
			watchEnds[k] += v
		}
	}

	// Each SIGTERM drained to a clean stop.
	for _, r := range c.replicas {
		lines, err := r.logLines(`"msg":"stopped"`)
		if err != nil {
			t.Fatal(err)
		}
		if len(lines) != sigterms[r.index] {
			t.Errorf("replica %d logged %d clean stops for %d SIGTERMs", r.index, len(lines), sigterms[r.index])
		}
	}

	retried := map[string]int{}
	retries := 0
	for _, ag := range agents {
		for k, v := range ag.retryKinds() {
			retried[k] += v
			retries += v
		}
	}
	errorLogs := 0
	for _, r := range c.replicas {
		lines, _ := r.logLines(`"level":"ERROR"`)
		errorLogs += len(lines)
		for _, l := range lines[:min(len(lines), 5)] {
			t.Logf("replica %d logged: %s", r.index, l)
		}
	}

	term, kill := stats[syscall.SIGTERM], stats[syscall.SIGKILL]
	summary := fmt.Sprintf("e2e: %d turns acknowledged across %d restarts (%d SIGTERM, %d SIGKILL), %d lost, %d duplicated",
		acked, term.count+kill.count, term.count, kill.count, lost, duplicated)
	details := []string{
		fmt.Sprintf("load: %d agents on %d conversations for %s (%.0f turns/s), %d unacknowledged turns stored", len(agents), len(convs), loadTime.Round(100*time.Millisecond), float64(acked)/loadTime.Seconds(), strays),
		fmt.Sprintf("agents: %d retried attempts, none surfaced; %d turns answered as replays of a commit whose answer was lost; retried: %s", retries, replays, formatCounts(retried)),
		fmt.Sprintf("watches: %d messages streamed exactly once in seq order over %d reconnects; streams ended: %s", streamedTotal, reconnects, formatCounts(watchEnds)),
		fmt.Sprintf("balancer: upstream failures per replica %v (all retried by clients); slowest /readyz per replica %v", c.lb.failed(), c.lb.slowestProbe()),
		fmt.Sprintf("SIGTERM: %d requests failed upstream, %d agent retries; signal to exit %s, exit to back in rotation %s", term.failed, term.retried, spread(term.down), spread(term.backInRR)),
		fmt.Sprintf("SIGKILL: %d requests failed upstream, %d agent retries; exit to back in rotation %s", kill.failed, kill.retried, spread(kill.backInRR)),
		fmt.Sprintf("replicas logged %d errors", errorLogs),
	}
	fmt.Println(summary)
	for _, d := range details {
		fmt.Println("  " + d)
	}
	_ = os.WriteFile(filepath.Join(c.outDir, "summary.txt"), []byte(summary+"\n  "+strings.Join(details, "\n  ")+"\n"), 0o644)

	if lost > 0 || duplicated > 0 || strays > 0 {
		t.Errorf("%d lost, %d duplicated, %d stored without an answer", lost, duplicated, strays)
	}
	// A rolling update by SIGTERM drains: the balancer takes the replica
	// out of rotation before its listener closes, so nothing fails at all.
	if term.failed > 0 || term.retried > 0 {
		t.Errorf("SIGTERM restarts: %d requests failed upstream and %d were retried; a drain should fail none", term.failed, term.retried)
	}
	if errorLogs > 0 {
		t.Errorf("replicas logged %d errors (internal or unknown answers)", errorLogs)
	}
	if acked < 1000 {
		t.Errorf("only %d turns acknowledged: the load was too light to mean much", acked)
	}
}

func totalFailed(lb *balancer) int {
	n := 0
	for _, v := range lb.failed() {
		n += v
	}
	return n
}

func totalRetried(agents []*agent) int {
	n := 0
	for _, ag := range agents {
		for _, v := range ag.retryKinds() {
			n += v
		}
	}
	return n
}

// restart stops r with sig, starts it again on the same address, and waits
// until the balancer has it back in rotation and it has served requests.
func restart(ctx context.Context, c *cluster, r *replica, sig syscall.Signal, st *restartStats) error {
	before := c.lb.served(r.index)
	t0 := time.Now()
	if err := r.signal(sig); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := r.wait(wctx)
	cancel()
	switch {
	case sig == syscall.SIGTERM && err != nil:
		return fmt.Errorf("replica %d after SIGTERM: %v\n%s", r.index, err, r.tail(30))
	case sig == syscall.SIGKILL && err == nil:
		return fmt.Errorf("replica %d exited cleanly on SIGKILL", r.index)
	}
	exited := time.Now()
	if err := r.start(); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := r.waitReady(rctx); err != nil {
		return fmt.Errorf("%w\n%s", err, r.tail(30))
	}
	if err := c.lb.waitReady(rctx, r.index, true); err != nil {
		return err
	}
	for c.lb.served(r.index) < before+servedAfterRestart {
		select {
		case <-rctx.Done():
			return fmt.Errorf("replica %d back in rotation but served only %d requests", r.index, c.lb.served(r.index)-before)
		case <-time.After(10 * time.Millisecond):
		}
	}
	st.count++
	st.down = append(st.down, exited.Sub(t0))
	st.backInRR = append(st.backInRR, time.Since(exited))
	return nil
}

// compare checks a conversation's stored messages against the turns
// acknowledged in it: seqs 1..N, each acknowledged turn stored once with the
// seqs and content it was acknowledged with, nothing else stored.
func compare(acks []ack, msgs []*parleyv1.Message) (lost, duplicated, strays int, problems []string) {
	byTurn := map[string][]*parleyv1.Message{}
	for i, m := range msgs {
		if m.GetSeq() != int64(i+1) && len(problems) < 10 {
			problems = append(problems, fmt.Sprintf("conversation %s: message %d has seq %d", m.GetConversationId(), i, m.GetSeq()))
		}
		byTurn[m.GetTurnId()] = append(byTurn[m.GetTurnId()], m)
	}
	acked := map[string]bool{}
	for _, a := range acks {
		acked[a.turnID] = true
		got := byTurn[a.turnID]
		switch {
		case len(got) == 0:
			lost++
			problems = append(problems, fmt.Sprintf("turn %s acknowledged with seqs %v is not stored", a.turnID, a.seqs))
			continue
		case len(got) > 2:
			duplicated++
			problems = append(problems, fmt.Sprintf("turn %s stored %d times", a.turnID, len(got)/2))
			continue
		case len(got) != 2 || len(a.seqs) != 2:
			problems = append(problems, fmt.Sprintf("turn %s: %d messages stored, %d acknowledged", a.turnID, len(got), len(a.seqs)))
			continue
		}
		u, as := got[0], got[1]
		if u.GetSeq() != a.seqs[0] || as.GetSeq() != a.seqs[1] || as.GetSeq() != u.GetSeq()+1 ||
			u.GetRole() != parleyv1.Role_ROLE_USER || as.GetRole() != parleyv1.Role_ROLE_ASSISTANT ||
			u.GetContent() != a.user || as.GetContent() != a.assistant {
			problems = append(problems, fmt.Sprintf("turn %s acknowledged as seqs %v, stored as %d %v %q, %d %v %q",
				a.turnID, a.seqs, u.GetSeq(), u.GetRole(), u.GetContent(), as.GetSeq(), as.GetRole(), as.GetContent()))
		}
	}
	for id := range byTurn {
		if !acked[id] {
			strays++
			problems = append(problems, fmt.Sprintf("turn %q is stored but was never acknowledged", id))
		}
	}
	if len(problems) > 20 {
		problems = append(problems[:20], fmt.Sprintf("… and %d more", len(problems)-20))
	}
	return lost, duplicated, strays, problems
}

func sameMessages(a, b []*parleyv1.Message) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].GetId() != b[i].GetId() || a[i].GetSeq() != b[i].GetSeq() {
			return false
		}
	}
	return true
}

// checkSQL counts the conversation's rows in PostgreSQL itself.
func checkSQL(ctx context.Context, t *testing.T, c *cluster, conv string, want int) {
	t.Helper()
	db, err := postgres.Open(ctx, c.dbURL, postgres.Options{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows, turns, maxSeq int
	err = db.QueryRowContext(ctx, `SELECT count(*), count(DISTINCT turn_id), coalesce(max(seq), 0) FROM messages WHERE conversation_id = ?`, conv).Scan(&rows, &turns, &maxSeq)
	if err != nil {
		t.Fatal(err)
	}
	if rows != want || turns != want/2 || maxSeq != want {
		t.Errorf("conversation %s in PostgreSQL: %d rows, %d turn ids, max seq %d; want %d, %d, %d", conv, rows, turns, maxSeq, want, want/2, want)
	}
}

// spread renders durations as min/median/max.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	return fmt.Sprintf("%v/%v/%v (min/median/max)", r(s[0]), r(s[len(s)/2]), r(s[len(s)-1]))
}
