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
		takeVerified(t, w, r, body, verifier, s, func(id string) { mu.Lock(); taken = append(taken, id); mu.Unlock() })
	}))
	t.Cleanup(srv.Close)

	first := startReplica(t, bin, env)
	first.waitReady(t, 60*time.Second)
	c := newHookCustomer(t, first.base, dbURL, srv.URL+"/hooks")
	mu.Lock()
	secret = c.secret
	mu.Unlock()
	var want []string
	for i := range 3 {
		want = append(want, c.publish(t, i))
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

// hookCustomer is a user with one endpoint, registered through the API,
// and the store its events are published through, as the calls that cause
// them would.
type hookCustomer struct {
	userID   uuid.UUID
	token    string
	hooks    parleyv1connect.WebhookServiceClient
	endpoint string
	secret   webhook.Secret
	store    *postgres.WebhookStore
}

// newHookCustomer registers a user at the server at base and its endpoint
// at url for call.ended.
func newHookCustomer(t *testing.T, base, dbURL, url string) *hookCustomer {
	t.Helper()
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, base).Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{
		Email: "hooks-" + uuid.NewString() + "@example.com", Password: "correct horse",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := &hookCustomer{
		userID: uuid.MustParse(reg.Msg.GetUser().GetId()),
		token:  reg.Msg.GetTokens().GetAccessToken(),
		hooks:  parleyv1connect.NewWebhookServiceClient(http.DefaultClient, base),
	}
	created, err := c.hooks.CreateEndpoint(t.Context(), authed(c, &parleyv1.CreateEndpointRequest{Url: url, EventTypes: []string{webhook.CallEnded}}))
	if err != nil {
		t.Fatal(err)
	}
	c.endpoint = created.Msg.GetEndpoint().GetId()
	if c.secret, err = webhook.ParseSecret(created.Msg.GetSecret()); err != nil {
		t.Fatal(err)
	}
	db, err := postgres.Open(t.Context(), dbURL, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c.store = postgres.NewWebhookStore(db)
	return c
}

// authed is msg as a request of c's.
func authed[T any](c *hookCustomer, msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set("Authorization", "Bearer "+c.token)
	return req
}

// publish writes a call.ended event of c's with data {"n": n} and returns
// its webhook-id.
func (c *hookCustomer) publish(t *testing.T, n int) string {
	t.Helper()
	ev, err := webhook.NewEvent(c.userID, webhook.CallEnded, json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.store.Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID.String()
}

// takeVerified answers a delivery the pinned reference library verifies
// with secret 204 and hands take its webhook-id; any other 401.
func takeVerified(t *testing.T, w http.ResponseWriter, r *http.Request, body []byte, verifier string, secret webhook.Secret, take func(id string)) {
	if err := testenv.VerifyWebhook(r.Context(), verifier, secret.Text(), r.Header, body); err != nil {
		t.Error(err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	take(r.Header.Get("webhook-id"))
	w.WriteHeader(http.StatusNoContent)
}
