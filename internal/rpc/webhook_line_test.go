package rpc

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/webhook"
)

// An endpoint's parked deliveries are listed across its events, paged,
// each with its event; RedeliverParked makes them all pending; a 410
// disables the endpoint (shown on it) until EnableEndpoint. Another
// user's endpoint is not found, and tokens only page the list that made
// them.
func TestWebhookEndpointDeliveries(t *testing.T) {
	a := newTestAPI(t, apiOptions{})
	for name, c := range clients(a, parleyv1connect.NewWebhookServiceClient) {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			owner, other := a.user(t), a.user(t)
			endpoint := createEndpoint(t, c, owner, webhook.CallEnded, webhook.ReportReady).GetEndpoint().GetId()
			var want []string
			for i := range 3 {
				typ := webhook.CallEnded
				if i == 1 {
					typ = webhook.ReportReady
				}
				ev, err := webhook.NewEvent(owner.UUID, typ, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if err := a.webhooks.Publish(ctx, ev); err != nil {
					t.Fatal(err)
				}
				park(t, a, ev.ID)
				want = append(want, ev.ID.String())
			}
			list := func(u caller, req *parleyv1.ListEndpointDeliveriesRequest) ([]string, string, error) {
				t.Helper()
				res, err := c.ListEndpointDeliveries(ctx, as(u, req))
				if err != nil {
					return nil, "", err
				}
				var got []string
				for i, d := range res.Msg.GetDeliveries() {
					if d.GetEndpointId() != endpoint || d.GetEventCreatedAt() == nil || (i == 0 && req.GetPageToken() == "" && req.GetOrder() == parleyv1.Order_ORDER_OLDEST_FIRST && d.GetEventType() != webhook.CallEnded) {
						t.Fatalf("delivery %v", d)
					}
					got = append(got, d.GetEventId())
				}
				return got, res.Msg.GetNextPageToken(), nil
			}
			parked := &parleyv1.ListEndpointDeliveriesRequest{EndpointId: endpoint, State: parleyv1.DeliveryState_DELIVERY_STATE_PARKED, Order: parleyv1.Order_ORDER_OLDEST_FIRST, PageSize: 2}
			first, token, err := list(owner, parked)
			if err != nil || len(first) != 2 || token == "" {
				t.Fatalf("first page %v, %q, %v", first, token, err)
			}
			next := &parleyv1.ListEndpointDeliveriesRequest{EndpointId: endpoint, State: parked.State, Order: parked.Order, PageSize: 2, PageToken: token}
			rest, last, err := list(owner, next)
			if err != nil || last != "" || !slices.Equal(append(first, rest...), want) {
				t.Fatalf("parked, oldest first: %v then %v (%q, %v), want %v", first, rest, last, err, want)
			}
			newest, _, err := list(owner, &parleyv1.ListEndpointDeliveriesRequest{EndpointId: endpoint, State: parked.State})
			if err != nil || !slices.Equal(newest, []string{want[2], want[1], want[0]}) {
				t.Fatalf("parked, newest first: %v, %v", newest, err)
			}

			// Tokens and states the list did not make are invalid_argument.
			var endpointsToken string
			createEndpoint(t, c, owner, webhook.CallEnded)
			if res, err := c.ListEndpoints(ctx, as(owner, &parleyv1.ListEndpointsRequest{PageSize: 1})); err != nil || res.Msg.GetNextPageToken() == "" {
				t.Fatalf("ListEndpoints: %v, %v", res, err)
			} else {
				endpointsToken = res.Msg.GetNextPageToken()
			}
			for name, req := range map[string]*parleyv1.ListEndpointDeliveriesRequest{
				"forged token":          {EndpointId: endpoint, State: parked.State, PageToken: "AAAA"},
				"another order's token": {EndpointId: endpoint, State: parked.State, PageToken: token},
				"another state's token": {EndpointId: endpoint, State: parleyv1.DeliveryState_DELIVERY_STATE_PENDING, Order: parked.Order, PageToken: token},
				"ListEndpoints' token":  {EndpointId: endpoint, State: parked.State, PageToken: endpointsToken},
				"no state":              {EndpointId: endpoint},
				"unknown state":         {EndpointId: endpoint, State: 7},
				"page size over 200":    {EndpointId: endpoint, State: parked.State, PageSize: 201},
				"malformed endpoint id": {EndpointId: "x", State: parked.State},
			} {
				if _, _, err := list(owner, req); codeOf(err) != connect.CodeInvalidArgument {
					t.Errorf("%s: %v, want invalid_argument", name, err)
				}
			}

			// Another user's endpoint: not found, whatever the call.
			if _, _, err := list(other, parked); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's ListEndpointDeliveries: %v", err)
			}
			if _, err := c.RedeliverParked(ctx, as(other, &parleyv1.RedeliverParkedRequest{EndpointId: endpoint})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's RedeliverParked: %v", err)
			}
			if _, err := c.EnableEndpoint(ctx, as(other, &parleyv1.EnableEndpointRequest{EndpointId: endpoint})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's EnableEndpoint: %v", err)
			}

			res, err := c.RedeliverParked(ctx, as(owner, &parleyv1.RedeliverParkedRequest{EndpointId: endpoint}))
			if err != nil || res.Msg.GetRedelivered() != 3 {
				t.Fatalf("RedeliverParked = %v, %v", res, err)
			}
			if got, _, err := list(owner, parked); err != nil || len(got) != 0 {
				t.Fatalf("parked after RedeliverParked: %v, %v", got, err)
			}
			pending := &parleyv1.ListEndpointDeliveriesRequest{EndpointId: endpoint, State: parleyv1.DeliveryState_DELIVERY_STATE_PENDING, Order: parleyv1.Order_ORDER_OLDEST_FIRST}
			if got, _, err := list(owner, pending); err != nil || !slices.Equal(got, want) {
				t.Fatalf("pending after RedeliverParked: %v, %v; want %v", got, err, want)
			}

			// The receiver answers 410: the endpoint is disabled.
			gone(t, a, want[0])
			got, err := c.GetEndpoint(ctx, as(owner, &parleyv1.GetEndpointRequest{EndpointId: endpoint}))
			if err != nil || got.Msg.GetEndpoint().GetDisabledAt() == nil || !strings.Contains(got.Msg.GetEndpoint().GetDisabledReason(), "410") {
				t.Fatalf("GetEndpoint after a 410: %v, %v", got, err)
			}
			if ids, _, err := list(owner, &parleyv1.ListEndpointDeliveriesRequest{EndpointId: endpoint, State: parked.State, Order: parked.Order}); err != nil || !slices.Equal(ids, want) {
				t.Fatalf("parked after a 410: %v, %v; want %v", ids, err, want)
			}
			if _, err := c.RedeliverParked(ctx, as(owner, &parleyv1.RedeliverParkedRequest{EndpointId: endpoint})); codeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("RedeliverParked while disabled: %v", err)
			}
			enabled, err := c.EnableEndpoint(ctx, as(owner, &parleyv1.EnableEndpointRequest{EndpointId: endpoint}))
			if err != nil || enabled.Msg.GetRedelivered() != 3 || enabled.Msg.GetEndpoint().GetDisabledAt() != nil || enabled.Msg.GetEndpoint().GetDisabledReason() != "" {
				t.Fatalf("EnableEndpoint = %v, %v", enabled, err)
			}
			if got, _, err := list(owner, pending); err != nil || !slices.Equal(got, want) {
				t.Fatalf("pending after EnableEndpoint: %v, %v; want %v", got, err, want)
			}
		})
	}
}

// gone answers the delivery of event with 410 Gone, as the dispatcher
// records it.
func gone(t *testing.T, a *testAPI, event string) {
	t.Helper()
	now := time.Now()
	ds, err := a.webhooks.ClaimDeliveries(t.Context(), now, 100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Event.ID.String() == event {
			o := webhook.Outcome{Park: true, Status: http.StatusGone, Error: "answered 410", Disable: "answered 410 Gone to event " + event, At: now}
			if err := a.webhooks.FinishDelivery(t.Context(), d, o); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no delivery of %s to claim", event)
}
