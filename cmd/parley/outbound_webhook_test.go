package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// The replica that is delivering an event is killed (SIGKILL) while its
// receiver still holds the request; another replica delivers it once the
// lease runs out, and the events after it, in order, each verified by the
// pinned Standard Webhooks reference library. The endpoint is registered
// through the API; events are published through the store, as the calls
// that cause them would.
func TestOutboundWebhooksSurviveSIGKILLMidDelivery(t *testing.T) {
	bin := buildBinary(t)
	dbURL := testenv.DatabaseURL(t)
	verifier := testenv.WebhookReceiver(t)
	env := baseEnv(t, dbURL)
	env["PARLEY_WEBHOOK_ALLOW_HTTP"] = "true"
	env["PARLEY_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"
	env["PARLEY_WEBHOOK_TIMEOUT"] = "2s" // a 10s lease

	var (
		mu      sync.Mutex
		secret  webhook.Secret
		taken   []string
		holding = true
	)
	held := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		hold := holding
		holding = false
		s := secret
		mu.Unlock()
		if hold {
			// The first delivery never gets its answer: the replica dies.
			held <- struct{}{}
			<-r.Context().Done()
			return
		}
		if err := testenv.VerifyWebhook(r.Context(), verifier, s.Text(), r.Header, body); err != nil {
			t.Error(err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		taken = append(taken, r.Header.Get("webhook-id"))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)

	first := startReplica(t, bin, env)
	first.waitReady(t, 60*time.Second)
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, first.base).Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{
		Email: "hooks-" + uuid.NewString() + "@example.com", Password: "correct horse",
	}))
	if err != nil {
		t.Fatal(err)
	}
	userID := uuid.MustParse(reg.Msg.GetUser().GetId())
	hooks := parleyv1connect.NewWebhookServiceClient(http.DefaultClient, first.base)
	req := connect.NewRequest(&parleyv1.CreateEndpointRequest{Url: srv.URL + "/hooks", EventTypes: []string{webhook.CallEnded}})
	req.Header().Set("Authorization", "Bearer "+reg.Msg.GetTokens().GetAccessToken())
	created, err := hooks.CreateEndpoint(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	s, err := webhook.ParseSecret(created.Msg.GetSecret())
	if err != nil {
		t.Fatal(err)
	}

	db, err := postgres.Open(t.Context(), dbURL, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store := postgres.NewWebhookStore(db)
	mu.Lock()
	secret = s
	mu.Unlock()
	var want []string
	for i := range 3 {
		ev, err := webhook.NewEvent(userID, webhook.CallEnded, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		want = append(want, ev.ID.String())
	}

	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatalf("the first replica delivered nothing in 30s:\n%s", first.log.String())
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Wait()

	env["PARLEY_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	second := startReplica(t, bin, env)
	second.waitReady(t, 60*time.Second)
	deadline := time.Now().Add(45 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(taken)
		mu.Unlock()
		if len(got) >= len(want) {
			if !slices.Equal(got, want) {
				t.Fatalf("took %v, want %v", got, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("took %v after 45s, want %v:\n%s", got, want, second.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(second.log.String(), "webhook dispatch pass failed") {
		t.Fatalf("the second replica's dispatcher failed:\n%s", second.log.String())
	}
}
