package conversation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
)

func message(id string, role conversation.Role, text string) conversation.Item {
	return conversation.Item{ID: id, Kind: conversation.ItemMessage, Role: role, Text: text,
		Payload: fmt.Appendf(nil, `{"message":{"id":%q,"content":[{"text":%q}]}}`, id, text)}
}

func call(id, callID string) conversation.Item {
	return conversation.Item{ID: id, Kind: conversation.ItemFunctionCall, CallID: callID,
		Payload: fmt.Appendf(nil, `{"functionCall":{"id":%q,"callId":%q}}`, id, callID)}
}

func appendTo(t testing.TB, r *replica, p auth.Principal, id uuid.UUID, items ...conversation.Item) conversation.AppendedItems {
	t.Helper()
	out, err := r.svc.AppendItems(context.Background(), p, conversation.AppendItemsRequest{ConversationID: id, Agent: "bot", Items: items})
	if err != nil {
		t.Fatalf("AppendItems: %v", err)
	}
	return out
}

func itemSeqsOf(items []conversation.Item) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.Seq
	}
	return out
}

// listAllItems pages through every item oldest first.
func listAllItems(t testing.TB, r *replica, p auth.Principal, id uuid.UUID, size int) []conversation.Item {
	t.Helper()
	var all []conversation.Item
	token := ""
	for {
		page, err := r.svc.ListItems(context.Background(), p, conversation.ListItemsRequest{ConversationID: id, PageSize: size, PageToken: token, Order: conversation.OrderOldestFirst})
		if err != nil {
			t.Fatalf("ListItems: %v", err)
		}
		all = append(all, page.Items...)
		if page.NextPageToken == "" {
			return all
		}
		token = page.NextPageToken
	}
}

func TestAppendItemsRules(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner := seedUser(t, r.db)
	c := create(t, r, owner)
	many := make([]conversation.Item, conversation.MaxItemsPerBatch+1)
	for i := range many {
		many[i] = call(fmt.Sprint("c", i), "x")
	}
	big := call("big", "x")
	big.Payload = []byte(`"` + strings.Repeat("x", conversation.MaxItemBytes) + `"`)
	noKind := call("k", "x")
	noKind.Kind = 0
	for _, tc := range []struct {
		name  string
		req   conversation.AppendItemsRequest
		inErr string
	}{
		{"empty", conversation.AppendItemsRequest{}, "items must not be empty"},
		{"too many", conversation.AppendItemsRequest{Items: many}, "at most 200 items"},
		{"no id", conversation.AppendItemsRequest{Items: []conversation.Item{call("", "x")}}, "items[0]: the item id must be 1 to 128"},
		{"long id", conversation.AppendItemsRequest{Items: []conversation.Item{call(strings.Repeat("i", 129), "x")}}, "1 to 128 characters"},
		{"reserved id", conversation.AppendItemsRequest{Items: []conversation.Item{call("saveturn:t1:user", "x")}}, "reserved for SaveTurn"},
		{"twice", conversation.AppendItemsRequest{Items: []conversation.Item{call("a", "x"), call("a", "y")}}, `items[1]: id "a" appears twice`},
		{"big", conversation.AppendItemsRequest{Items: []conversation.Item{big}}, "at most 262144 bytes"},
		{"no kind", conversation.AppendItemsRequest{Items: []conversation.Item{noKind}}, "one known kind"},
		{"no role", conversation.AppendItemsRequest{Items: []conversation.Item{message("m", 0, "hi")}}, "a message needs a role"},
		{"long text", conversation.AppendItemsRequest{Items: []conversation.Item{message("m", conversation.RoleUser, strings.Repeat("x", conversation.MaxMessageBytes+1))}}, "at most 65536 bytes of text"},
		{"long agent", conversation.AppendItemsRequest{Agent: strings.Repeat("a", 129), Items: []conversation.Item{call("a", "x")}}, "agent must be"},
	} {
		tc.req.ConversationID = c.ID
		_, err := r.svc.AppendItems(t.Context(), owner, tc.req)
		if !errors.Is(err, conversation.ErrInvalid) || !strings.Contains(err.Error(), tc.inErr) {
			t.Errorf("%s: AppendItems = %v, want ErrInvalid saying %q", tc.name, err, tc.inErr)
		}
	}
	if items := listAllItems(t, r, owner, c.ID, 50); len(items) != 0 {
		t.Errorf("refused batches stored %d items", len(items))
	}
}

func TestAppendItemsAccess(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner, stranger := seedUser(t, r.db), seedUser(t, r.db)
	c := create(t, r, owner)
	appendTo(t, r, agent, c.ID, call("by-agent", "x"))
	if _, err := r.svc.AppendItems(t.Context(), stranger, conversation.AppendItemsRequest{ConversationID: c.ID, Items: []conversation.Item{call("s", "x")}}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("stranger's AppendItems = %v, want ErrNotFound", err)
	}
	if _, err := r.svc.ListItems(t.Context(), stranger, conversation.ListItemsRequest{ConversationID: c.ID}); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("stranger's ListItems = %v, want ErrNotFound", err)
	}
	if _, err := r.svc.WatchItems(t.Context(), stranger, c.ID, 0); !errors.Is(err, conversation.ErrNotFound) {
		t.Errorf("stranger's WatchItems = %v, want ErrNotFound", err)
	}
	if got := listAllItems(t, r, owner, c.ID, 10); len(got) != 1 || got[0].ID != "by-agent" || got[0].Agent != "bot" {
		t.Errorf("owner lists %+v, want the agent's item", got)
	}
}

// TestItemsAndMessages: text messages appended as items are Messages too,
// and SaveTurn's messages are items; other kinds and developer messages
// are items only.
func TestItemsAndMessages(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner := seedUser(t, r.db)
	c := create(t, r, owner)
	saveTurn(t, r, owner, c.ID, "t1", "hi", "hello")
	out := appendTo(t, r, owner, c.ID,
		message("dev", conversation.RoleDeveloper, "be brief"),
		call("call", "c1"),
		message("ans", conversation.RoleAssistant, "done"))
	if got := itemSeqsOf(out.Items); !slices.Equal(got, []int64{3, 4, 5}) {
		t.Fatalf("appended seqs %v, want [3 4 5]", got)
	}
	if out.Items[0].MessageSeq != 0 || out.Items[1].MessageSeq != 0 || out.Items[2].MessageSeq != 3 {
		t.Errorf("message seqs %d %d %d, want 0 0 3", out.Items[0].MessageSeq, out.Items[1].MessageSeq, out.Items[2].MessageSeq)
	}
	msgs := listAll(t, r, owner, c.ID, conversation.OrderOldestFirst, 10)
	if !slices.Equal(seqsOf(msgs), []int64{1, 2, 3}) || msgs[2].Content != "done" || msgs[2].Role != conversation.RoleAssistant {
		t.Errorf("messages %+v, want the turn and the assistant item", msgs)
	}
	items := listAllItems(t, r, owner, c.ID, 2)
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.ID
	}
	if !slices.Equal(ids, []string{"saveturn:t1:user", "saveturn:t1:assistant", "dev", "call", "ans"}) {
		t.Errorf("item ids %v", ids)
	}
	if items[0].MessageID != "t1" || items[0].MessageSeq != 1 || len(items[0].Payload) == 0 {
		t.Errorf("SaveTurn's item %+v", items[0])
	}
	got, err := r.svc.GetConversation(t.Context(), owner, c.ID)
	if err != nil || got.MessageCount != 3 || got.LastSeq != 3 {
		t.Errorf("conversation %+v, %v; want 3 messages", got, err)
	}
	// A replayed SaveTurn still answers as before.
	if again := saveTurn(t, r, owner, c.ID, "t1", "hi", "hello"); !again.Replayed || !slices.Equal(seqsOf(again.Messages), []int64{1, 2}) {
		t.Errorf("replayed SaveTurn = %+v", again)
	}
	if _, err := r.svc.SaveTurn(t.Context(), owner, conversation.Turn{ConversationID: c.ID, TurnID: "t1", UserMessage: "hi"}); !errors.Is(err, conversation.ErrTurnConflict) {
		t.Errorf("SaveTurn of half the turn = %v, want ErrTurnConflict", err)
	}
}

// TestAppendItemsConcurrentWritersOnThreeReplicas: 20 writers append over
// 3 replicas, and replay each batch on another replica.
func TestAppendItemsConcurrentWritersOnThreeReplicas(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 3, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	const writers, batches = 20, 5
	var wg sync.WaitGroup
	errs := make(chan error, writers*batches)
	for w := range writers {
		wg.Go(func() {
			for b := range batches {
				items := []conversation.Item{call(fmt.Sprintf("w%d-b%d-call", w, b), "c"), message(fmt.Sprintf("w%d-b%d-msg", w, b), conversation.RoleUser, "m")}
				req := conversation.AppendItemsRequest{ConversationID: c.ID, Items: items}
				first, err := rs[(w+b)%3].svc.AppendItems(context.Background(), owner, req)
				if err != nil {
					errs <- err
					return
				}
				again, err := rs[(w+b+1)%3].svc.AppendItems(context.Background(), agent, req)
				switch {
				case err != nil:
					errs <- err
				case first.Replayed || !again.Replayed || first.Items[1].Seq != first.Items[0].Seq+1 || !slices.Equal(itemSeqsOf(first.Items), itemSeqsOf(again.Items)):
					errs <- fmt.Errorf("batch %d of writer %d: first %v (replayed %v), replay %v (replayed %v)", b, w, itemSeqsOf(first.Items), first.Replayed, itemSeqsOf(again.Items), again.Replayed)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	items := listAllItems(t, rs[1], owner, c.ID, 37)
	if !slices.Equal(itemSeqsOf(items), oneTo(writers*batches*2)) {
		t.Fatalf("item seqs %v, want 1..%d", itemSeqsOf(items), writers*batches*2)
	}
	ids := map[string]bool{}
	for _, it := range items {
		if ids[it.ID] {
			t.Errorf("item %s stored twice", it.ID)
		}
		ids[it.ID] = true
	}
	if msgs := listAll(t, rs[2], owner, c.ID, conversation.OrderOldestFirst, 200); !slices.Equal(seqsOf(msgs), oneTo(writers*batches)) {
		t.Errorf("message seqs %v, want 1..%d", seqsOf(msgs), writers*batches)
	}
}

func collectItems(t testing.TB, w *conversation.ItemWatch, n int, timeout time.Duration) []conversation.Item {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var got []conversation.Item
	for len(got) < n {
		items, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %v: %v", itemSeqsOf(got), err)
		}
		got = append(got, items...)
		if len(items) > 0 {
			continue
		}
		select {
		case <-w.Ready():
		case <-ctx.Done():
			t.Fatalf("timed out with seqs %v, want %d items", itemSeqsOf(got), n)
		}
	}
	return got
}

func TestWatchItemsAcrossReplicas(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 3, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	for i := range 110 { // more than one internal page of catch-up
		appendTo(t, rs[1], owner, c.ID, call(fmt.Sprint("old", i), "x"), call(fmt.Sprint("old-out", i), "x"))
	}
	w, err := rs[0].svc.WatchItems(t.Context(), owner, c.ID, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	go func() {
		for i := range 20 {
			if i%2 == 0 {
				saveTurn(t, rs[2], agent, c.ID, fmt.Sprint("t", i), "u", "a")
			} else {
				appendTo(t, rs[1], agent, c.ID, call(fmt.Sprint("new", i), "x"))
			}
		}
	}()
	got := collectItems(t, w, 220-5+30, 15*time.Second)
	if !slices.Equal(itemSeqsOf(got), oneTo(250)[5:]) {
		t.Fatalf("watch seqs = %v", itemSeqsOf(got))
	}
	if last := got[len(got)-1]; last.ID != "new19" || len(last.Payload) == 0 {
		t.Errorf("last item %+v", last)
	}

	if err := rs[0].svc.DeleteConversation(t.Context(), owner, c.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		_, err := w.Next(ctx)
		if errors.Is(err, conversation.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("Next after delete: %v", err)
		}
		select {
		case <-w.Ready():
		case <-ctx.Done():
			t.Fatal("the item watch did not end after the delete")
		}
	}
}
