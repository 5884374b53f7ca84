package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestItemsAcrossReplicas checks issue 14's concurrency promise over real
// processes: 20 writers append batches of items over 3 replicas, then
// replay every batch on another replica. The items' seqs have no gap,
// every item id is stored once, the replays store nothing new, and a
// watch on a third replica sees every item in order.
func TestItemsAcrossReplicas(t *testing.T) {
	bin := buildBinary(t)
	env := baseEnv(t, testenv.DatabaseURL(t))
	vk := testenv.NewValkey(t)
	env["VALKEY_URL"] = vk.URL()
	env["PARLEY_RATE_LIMIT_USER_PER_MINUTE"] = "100000"
	replicas := startReplicas(t, bin, env, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	convOn := func(i int) parleyv1connect.ConversationServiceClient {
		return parleyv1connect.NewConversationServiceClient(http.DefaultClient, replicas[i%len(replicas)].base)
	}
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, replicas[0].base).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Email: "items@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	token := reg.Msg.GetTokens().GetAccessToken()
	created, err := convOn(0).CreateConversation(ctx, bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "items"}), token))
	if err != nil {
		t.Fatal(err)
	}
	convID := created.Msg.GetConversation().GetId()

	const writers, batches, perBatch = 20, 5, 3
	const total = writers * batches * perBatch
	watch, err := convOn(2).WatchItems(ctx, bearer(connect.NewRequest(&parleyv1.WatchItemsRequest{ConversationId: convID}), token))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	watched := make(chan []int64, 1)
	go func() {
		var seqs []int64
		for len(seqs) < total && watch.Receive() {
			if it := watch.Msg().GetItem(); it != nil {
				seqs = append(seqs, it.GetSeq())
			}
		}
		watched <- seqs
	}()

	batch := func(w, b int) *parleyv1.AppendItemsRequest {
		p := fmt.Sprintf("w%d-b%d-", w, b)
		return &parleyv1.AppendItemsRequest{ConversationId: convID, Agent: fmt.Sprint("agent-", w%4), Items: []*parleyv1.ChatContext_ChatItem{
			{Item: &parleyv1.ChatContext_ChatItem_Message{Message: &parleyv1.ChatMessage{Id: p + "msg", Role: parleyv1.ChatRole_CHAT_ROLE_USER,
				Content: []*parleyv1.ChatMessage_ChatContent{{Payload: &parleyv1.ChatMessage_ChatContent_Text{Text: p}}}}}},
			{Item: &parleyv1.ChatContext_ChatItem_FunctionCall{FunctionCall: &parleyv1.FunctionCall{Id: p + "call", CallId: p + "c", Name: "f"}}},
			{Item: &parleyv1.ChatContext_ChatItem_FunctionCallOutput{FunctionCallOutput: &parleyv1.FunctionCallOutput{Id: p + "out", CallId: p + "c", Output: "ok"}}},
		}}
	}
	appendOn := func(replica int, req *parleyv1.AppendItemsRequest) (*parleyv1.AppendItemsResponse, error) {
		resp, err := convOn(replica).AppendItems(ctx, bearer(connect.NewRequest(req), token))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}
	// run has every writer do f for each of its batches, at once.
	run := func(f func(w, b int) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, writers*batches)
		for w := range writers {
			wg.Go(func() {
				for b := range batches {
					if err := f(w, b); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}

	firstSeqs := make([][]int64, writers*batches)
	run(func(w, b int) error {
		resp, err := appendOn(w+b, batch(w, b))
		if err != nil {
			return err
		}
		seqs := make([]int64, 0, perBatch)
		for _, it := range resp.GetItems() {
			seqs = append(seqs, it.GetSeq())
		}
		if resp.GetReplayed() || len(seqs) != perBatch || seqs[1] != seqs[0]+1 || seqs[2] != seqs[1]+1 {
			return fmt.Errorf("batch %d/%d: seqs %v replayed %v, want %d consecutive new", w, b, seqs, resp.GetReplayed(), perBatch)
		}
		firstSeqs[w*batches+b] = seqs
		return nil
	})
	run(func(w, b int) error {
		resp, err := appendOn(w+b+1, batch(w, b))
		if err != nil {
			return err
		}
		for i, it := range resp.GetItems() {
			if it.GetSeq() != firstSeqs[w*batches+b][i] {
				return fmt.Errorf("replay of batch %d/%d on another replica answered seq %d, first %v", w, b, it.GetSeq(), firstSeqs[w*batches+b])
			}
		}
		if !resp.GetReplayed() {
			return fmt.Errorf("replay of batch %d/%d was not replayed", w, b)
		}
		return nil
	})

	var seqs []int64
	ids := map[string]bool{}
	page := ""
	for {
		resp, err := convOn(1).ListItems(ctx, bearer(connect.NewRequest(&parleyv1.ListItemsRequest{
			ConversationId: convID, PageSize: 200, PageToken: page, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
		}), token))
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range resp.Msg.GetItems() {
			seqs = append(seqs, it.GetSeq())
			id := it.GetItem().GetMessage().GetId() + it.GetItem().GetFunctionCall().GetId() + it.GetItem().GetFunctionCallOutput().GetId()
			if ids[id] {
				t.Errorf("item %q stored twice", id)
			}
			ids[id] = true
		}
		if page = resp.Msg.GetNextPageToken(); page == "" {
			break
		}
	}
	if len(seqs) != total || len(ids) != total {
		t.Fatalf("%d items with %d ids listed, want %d", len(seqs), len(ids), total)
	}
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("item %d has seq %d: a gap", i, s)
		}
	}
	got, err := convOn(2).GetConversation(ctx, bearer(connect.NewRequest(&parleyv1.GetConversationRequest{ConversationId: convID}), token))
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Msg.GetConversation(); c.GetItemCount() != total || c.GetLastItemSeq() != total || c.GetMessageCount() != writers*batches {
		t.Errorf("conversation counts items %d, last item seq %d, messages %d; want %d, %d, %d",
			c.GetItemCount(), c.GetLastItemSeq(), c.GetMessageCount(), total, total, writers*batches)
	}
	select {
	case w := <-watched:
		if len(w) != total {
			t.Fatalf("the watch on replica 3 saw %d items (%v), want %d", len(w), watch.Err(), total)
		}
		for i, s := range w {
			if s != int64(i+1) {
				t.Fatalf("the watch saw seq %d at %d", s, i)
			}
		}
	case <-ctx.Done():
		t.Fatal("the watch did not see every item")
	}
	t.Logf("%d writers over %d replicas: %d items, seqs 1..%d without gaps, %d ids once each; %d replayed batches stored nothing",
		writers, len(replicas), len(seqs), seqs[len(seqs)-1], len(ids), writers*batches)
}
