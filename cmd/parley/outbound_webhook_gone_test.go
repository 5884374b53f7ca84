package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// A receiver that answers 410 Gone has its endpoint disabled by the
// running server's dispatcher: the endpoint shows it, the events published
// meanwhile are kept (listed, parked, never attempted), and once the
// customer enables it again through the API the receiver gets every event
// once, in order, each verified by the pinned Standard Webhooks reference
// library.
func TestOutboundWebhookGoneDisablesUntilEnabled(t *testing.T) {
	dbURL := testenv.DatabaseURL(t)
	verifier := testenv.WebhookReceiver(t)
	env := baseEnv(t, dbURL)
	env["PARLEY_WEBHOOK_ALLOW_HTTP"] = "true"
	env["PARLEY_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"

	var (
		mu     sync.Mutex
		secret webhook.Secret
		gone   = true
		tries  int
		taken  []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		tries++
		isGone, s := gone, secret
		mu.Unlock()
		if isGone {
			http.Error(w, "no such hook", http.StatusGone)
			return
		}
		takeVerified(t, w, r, body, verifier, s, func(id string) { mu.Lock(); taken = append(taken, id); mu.Unlock() })
	}))
	t.Cleanup(srv.Close)

	s := startServer(t, env)
	c := newHookCustomer(t, s.base, dbURL, srv.URL+"/hooks")
	mu.Lock()
	secret = c.secret
	mu.Unlock()
	var want []string
	publish := func(n int) { want = append(want, c.publish(t, n)) }
	waitFor := func(what string, done func() bool) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for !done() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 45s:\n%s", what, s.stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	getEndpoint := func() *parleyv1.WebhookEndpoint {
		t.Helper()
		res, err := c.hooks.GetEndpoint(t.Context(), authed(c, &parleyv1.GetEndpointRequest{EndpointId: c.endpoint}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetEndpoint()
	}
	inState := func(state parleyv1.DeliveryState) []*parleyv1.WebhookDelivery {
		t.Helper()
		res, err := c.hooks.ListEndpointDeliveries(t.Context(), authed(c, &parleyv1.ListEndpointDeliveriesRequest{
			EndpointId: c.endpoint, State: state, Order: parleyv1.Order_ORDER_OLDEST_FIRST,
		}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetDeliveries()
	}

	publish(0)
	publish(1)
	waitFor("the endpoint disabled", func() bool { return getEndpoint().GetDisabledAt() != nil })
	if e := getEndpoint(); !strings.Contains(e.GetDisabledReason(), "410") {
		t.Fatalf("disabled endpoint %v, want the 410 as its reason", e)
	}
	publish(2)
	publish(3)
	ds := inState(parleyv1.DeliveryState_DELIVERY_STATE_PARKED)
	var parkedIDs []string
	for _, d := range ds {
		parkedIDs = append(parkedIDs, d.GetEventId())
	}
	if !slices.Equal(parkedIDs, want) || ds[0].GetLastStatus() != http.StatusGone || ds[3].GetAttempts() != 0 {
		t.Fatalf("parked %v, want %v: the first answered 410, the later ones never attempted", ds, want)
	}
	waitFor("every event listed", func() bool {
		res, err := c.hooks.ListEvents(t.Context(), authed(c, &parleyv1.ListEventsRequest{}))
		return err == nil && len(res.Msg.GetEvents()) == len(want)
	})
	mu.Lock()
	gone = false
	if tries != 1 {
		t.Errorf("the disabled endpoint was tried %d times, want once", tries)
	}
	mu.Unlock()

	enabled, err := c.hooks.EnableEndpoint(t.Context(), authed(c, &parleyv1.EnableEndpointRequest{EndpointId: c.endpoint}))
	if err != nil || enabled.Msg.GetRedelivered() != int32(len(want)) || enabled.Msg.GetEndpoint().GetDisabledAt() != nil {
		t.Fatalf("EnableEndpoint = %v, %v; want enabled with %d redelivered", enabled, err, len(want))
	}
	publish(4)
	// Every delivery recorded delivered: nothing is left to send again.
	waitFor("every delivery finished", func() bool {
		return len(inState(parleyv1.DeliveryState_DELIVERY_STATE_DELIVERED)) == len(want)
	})
	if p := inState(parleyv1.DeliveryState_DELIVERY_STATE_PENDING); len(p) != 0 {
		t.Fatalf("still pending: %v", p)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(taken, want) {
		t.Fatalf("took %v, want each event once, in order: %v", taken, want)
	}
}
