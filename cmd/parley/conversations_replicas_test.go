package main

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestConversationsAcrossReplicas checks issue 3's promises over real
// processes: three replicas behind no balancer at all, each call aimed at a
// different one.
func TestConversationsAcrossReplicas(t *testing.T) {
	bin := buildBinary(t)
	dbURL := testenv.DatabaseURL(t)
	env := baseEnv(t, dbURL)
	vk := testenv.NewValkey(t)
	env["VALKEY_URL"] = vk.URL()
	env["PARLEY_RATE_LIMIT_AGENT_PER_MINUTE"] = "100000"
	replicas := startReplicas(t, bin, env, 3)
	ctx := context.Background()
	convOn := func(i int) parleyv1connect.ConversationServiceClient {
		return parleyv1connect.NewConversationServiceClient(http.DefaultClient, replicas[i%len(replicas)].base)
	}

	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, replicas[0].base).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Email: "owner@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	userToken := reg.Msg.GetTokens().GetAccessToken()

	// The agent signs in with a key made by the CLI, as a deployment would.
	cmd := exec.Command(bin, "agent-key", "create", "--name", "writer")
	cmd.Env = []string{"DATABASE_URL=" + dbURL}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent-key create: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	ex, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, replicas[1].base).ExchangeAgentKey(ctx,
		connect.NewRequest(&parleyv1.ExchangeAgentKeyRequest{ApiKey: lines[len(lines)-1]}))
	if err != nil {
		t.Fatal(err)
	}
	agentToken := ex.Msg.GetAccessToken()

	newConversation := func(t *testing.T) string {
		t.Helper()
		c, err := convOn(0).CreateConversation(ctx, bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: t.Name()}), userToken))
		if err != nil {
			t.Fatal(err)
		}
		return c.Msg.GetConversation().GetId()
	}
	saveTurn := func(replica int, convID, turnID, user, assistant string) (*parleyv1.SaveTurnResponse, error) {
		resp, err := convOn(replica).SaveTurn(ctx, bearer(connect.NewRequest(&parleyv1.SaveTurnRequest{
			ConversationId: convID, TurnId: turnID, UserMessage: user, AssistantMessage: assistant,
		}), agentToken))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}
	allMessages := func(t *testing.T, replica int, convID string) []*parleyv1.Message {
		t.Helper()
		var msgs []*parleyv1.Message
		token := ""
		for {
			resp, err := convOn(replica).ListMessages(ctx, bearer(connect.NewRequest(&parleyv1.ListMessagesRequest{
				ConversationId: convID, PageSize: 200, PageToken: token, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
			}), userToken))
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, resp.Msg.GetMessages()...)
			if token = resp.Msg.GetNextPageToken(); token == "" {
				return msgs
			}
		}
	}

	t.Run("20 writers over 3 replicas: seq 1..400 without gap or duplicate", func(t *testing.T) {
		convID := newConversation(t)
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for w := 0; w < 20; w++ {
			wg.Go(func() {
				for i := 0; i < 10; i++ {
					_, err := saveTurn(w+i, convID, fmt.Sprintf("w%d-t%d", w, i), fmt.Sprintf("u %d %d", w, i), fmt.Sprintf("a %d %d", w, i))
					if err != nil {
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
		msgs := allMessages(t, 2, convID)
		if len(msgs) != 400 {
			t.Fatalf("%d messages, want 400", len(msgs))
		}
		for i, m := range msgs {
			if m.GetSeq() != int64(i+1) {
				t.Fatalf("message %d has seq %d", i, m.GetSeq())
			}
			// A turn's two messages are adjacent, user first.
			if i%2 == 1 && (msgs[i-1].GetTurnId() != m.GetTurnId() || msgs[i-1].GetRole() != parleyv1.Role_ROLE_USER || m.GetRole() != parleyv1.Role_ROLE_ASSISTANT) {
				t.Fatalf("messages %d and %d are not one turn: %v / %v", i-1, i, msgs[i-1], m)
			}
		}
	})

	t.Run("answered on replica 2, listed on replica 3, 200 times", func(t *testing.T) {
		convID := newConversation(t)
		for i := 0; i < 200; i++ {
			saved, err := saveTurn(1, convID, fmt.Sprintf("t%d", i), fmt.Sprintf("hello %d", i), "")
			if err != nil {
				t.Fatal(err)
			}
			resp, err := convOn(2).ListMessages(ctx, bearer(connect.NewRequest(&parleyv1.ListMessagesRequest{ConversationId: convID}), userToken))
			if err != nil {
				t.Fatal(err)
			}
			newest := resp.Msg.GetMessages()
			if len(newest) == 0 || newest[0].GetSeq() != saved.GetMessages()[0].GetSeq() {
				t.Fatalf("try %d: replica 3 does not show seq %d just saved on replica 2", i, saved.GetMessages()[0].GetSeq())
			}
		}
	})

	t.Run("the same SaveTurn 10 times at once on different replicas stores one turn", func(t *testing.T) {
		convID := newConversation(t)
		var wg sync.WaitGroup
		results := make([]*parleyv1.SaveTurnResponse, 10)
		errs := make([]error, 10)
		for i := range results {
			wg.Go(func() { results[i], errs[i] = saveTurn(i, convID, "retry-me", "question", "answer") })
		}
		wg.Wait()
		replayed := 0
		for i, r := range results {
			if errs[i] != nil {
				t.Fatalf("call %d: %v", i, errs[i])
			}
			if r.GetReplayed() {
				replayed++
			}
			if len(r.GetMessages()) != 2 || r.GetMessages()[0].GetSeq() != 1 || r.GetMessages()[1].GetSeq() != 2 {
				t.Fatalf("call %d answered %v", i, r.GetMessages())
			}
		}
		if replayed != 9 {
			t.Fatalf("%d replays, want 9", replayed)
		}
		if n := len(allMessages(t, 0, convID)); n != 2 {
			t.Fatalf("%d messages stored, want 2", n)
		}
	})

	t.Run("a watch on replica 1 sees turns saved on 2 and 3 in order, across a Valkey restart", func(t *testing.T) {
		convID := newConversation(t)
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		stream, err := convOn(0).WatchMessages(wctx, bearer(connect.NewRequest(&parleyv1.WatchMessagesRequest{ConversationId: convID}), userToken))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		const turns = 20
		got := make(chan int64, 2*turns)
		go func() {
			defer close(got)
			for stream.Receive() {
				if m := stream.Msg().GetMessage(); m != nil {
					got <- m.GetSeq()
				}
			}
		}()
		for i := 0; i < turns; i++ {
			if i == turns/2 {
				vk.Stop()
				vk.Start()
			}
			if _, err := saveTurn(1+i%2, convID, fmt.Sprintf("w%d", i), "u", "a"); err != nil {
				t.Fatal(err)
			}
		}
		want := int64(1)
		for want <= 2*turns {
			select {
			case seq, ok := <-got:
				if !ok {
					t.Fatalf("stream ended at seq %d: %v", want, stream.Err())
				}
				if seq != want {
					t.Fatalf("got seq %d, want %d", seq, want)
				}
				want++
			case <-wctx.Done():
				t.Fatalf("timed out waiting for seq %d", want)
			}
		}
	})
}
