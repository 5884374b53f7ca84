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
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/webhook"
)

// receiverURL is an https URL on 127.0.0.1, which the test policy allows;
// nothing is delivered in these tests.
const receiverURL = "https://127.0.0.1:9/hooks"

func createEndpoint(t *testing.T, c parleyv1connect.WebhookServiceClient, u caller, types ...string) *parleyv1.CreateEndpointResponse {
	t.Helper()
	res, err := c.CreateEndpoint(t.Context(), as(u, &parleyv1.CreateEndpointRequest{Url: receiverURL, EventTypes: types}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg
}

func TestWebhookEndpoints(t *testing.T) {
	a := newTestAPI(t, apiOptions{})
	for name, c := range clients(a, parleyv1connect.NewWebhookServiceClient) {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			owner, other := a.user(t), a.user(t)
			created := createEndpoint(t, c, owner, webhook.CallEnded, webhook.CallStarted, webhook.CallEnded)
			e := created.GetEndpoint()
			if e.GetUrl() != receiverURL || !slices.Equal(e.GetEventTypes(), []string{webhook.CallEnded, webhook.CallStarted}) || e.GetCreatedAt() == nil {
				t.Fatalf("created %v", e)
			}
			first, err := webhook.ParseSecret(created.GetSecret())
			if err != nil {
				t.Fatalf("secret %q: %v", created.GetSecret(), err)
			}

			got, err := c.GetEndpoint(ctx, as(owner, &parleyv1.GetEndpointRequest{EndpointId: e.GetId()}))
			if err != nil || got.Msg.GetEndpoint().GetId() != e.GetId() || got.Msg.GetEndpoint().GetUrl() != receiverURL {
				t.Fatalf("GetEndpoint = %v, %v", got, err)
			}

			// Paging: newest first, two a page, with no repeats or gaps.
			second := createEndpoint(t, c, owner, webhook.ReportReady).GetEndpoint().GetId()
			third := createEndpoint(t, c, owner, webhook.ItemsAppended).GetEndpoint().GetId()
			var ids []string
			token := ""
			for pages := 0; ; pages++ {
				res, err := c.ListEndpoints(ctx, as(owner, &parleyv1.ListEndpointsRequest{PageSize: 2, PageToken: token}))
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range res.Msg.GetEndpoints() {
					ids = append(ids, e.GetId())
				}
				if token = res.Msg.GetNextPageToken(); token == "" {
					if pages != 1 {
						t.Fatalf("%d pages, want 2", pages+1)
					}
					break
				}
			}
			if want := []string{third, second, e.GetId()}; !slices.Equal(ids, want) {
				t.Fatalf("listed %v, want %v", ids, want)
			}

			// Another user's endpoint does not exist for the caller.
			if _, err := c.GetEndpoint(ctx, as(other, &parleyv1.GetEndpointRequest{EndpointId: e.GetId()})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's GetEndpoint: %v", err)
			}
			if _, err := c.RotateSecret(ctx, as(other, &parleyv1.RotateSecretRequest{EndpointId: e.GetId()})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's RotateSecret: %v", err)
			}
			if _, err := c.DeleteEndpoint(ctx, as(other, &parleyv1.DeleteEndpointRequest{EndpointId: e.GetId()})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's DeleteEndpoint: %v", err)
			}
			if res, err := c.ListEndpoints(ctx, as(other, &parleyv1.ListEndpointsRequest{})); err != nil || len(res.Msg.GetEndpoints()) != 0 {
				t.Fatalf("another's ListEndpoints = %v, %v", res, err)
			}

			// A rotation's new secret signs at once; the old one goes on
			// signing beside it for the overlap, then stops.
			rotated, err := c.RotateSecret(ctx, as(owner, &parleyv1.RotateSecretRequest{EndpointId: e.GetId(), Overlap: durationpb.New(time.Hour)}))
			if err != nil {
				t.Fatal(err)
			}
			next, err := webhook.ParseSecret(rotated.Msg.GetSecret())
			if err != nil || next.Equal(first) {
				t.Fatalf("rotated secret %q: %v", rotated.Msg.GetSecret(), err)
			}
			id := uuid.MustParse(e.GetId())
			now := time.Now()
			for _, tc := range []struct {
				at   time.Time
				want []webhook.Secret
			}{{now, []webhook.Secret{next, first}}, {now.Add(2 * time.Hour), []webhook.Secret{next}}} {
				signing, err := a.webhooks.Secrets(ctx, id, tc.at)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.EqualFunc(signing, tc.want, webhook.Secret.Equal) {
					t.Fatalf("at %v: %d signing secrets, want %d", tc.at.Sub(now), len(signing), len(tc.want))
				}
			}

			if _, err := c.DeleteEndpoint(ctx, as(owner, &parleyv1.DeleteEndpointRequest{EndpointId: e.GetId()})); err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetEndpoint(ctx, as(owner, &parleyv1.GetEndpointRequest{EndpointId: e.GetId()})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("deleted endpoint: %v", err)
			}
		})
	}
}

func TestWebhookEventsAndDeliveries(t *testing.T) {
	a := newTestAPI(t, apiOptions{})
	for name, c := range clients(a, parleyv1connect.NewWebhookServiceClient) {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			owner, other := a.user(t), a.user(t)
			endpoint := createEndpoint(t, c, owner, webhook.CallEnded).GetEndpoint().GetId()
			var want []webhook.Event
			for i := range 3 {
				ev, err := webhook.NewEvent(owner.UUID, webhook.CallEnded, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if err := a.webhooks.Publish(ctx, ev); err != nil {
					t.Fatal(err)
				}
				want = append(want, ev)
			}

			// Replay: two, then one, then none with the cursor unchanged.
			var got []*parleyv1.WebhookEvent
			cursor := ""
			for _, size := range []int{2, 1, 0} {
				res, err := c.ListEvents(ctx, as(owner, &parleyv1.ListEventsRequest{Cursor: cursor, PageSize: 2}))
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Msg.GetEvents()) != size || res.Msg.GetCursor() == "" || (size == 0 && res.Msg.GetCursor() != cursor) {
					t.Fatalf("after %q: %d events, cursor %q; want %d", cursor, len(res.Msg.GetEvents()), res.Msg.GetCursor(), size)
				}
				got, cursor = append(got, res.Msg.GetEvents()...), res.Msg.GetCursor()
			}
			for i, ev := range want {
				if got[i].GetId() != ev.ID.String() || got[i].GetType() != webhook.CallEnded || got[i].GetPayload() != string(ev.Payload) {
					t.Fatalf("event %d = %v, want id %s payload %s", i, got[i], ev.ID, ev.Payload)
				}
			}
			if res, err := c.ListEvents(ctx, as(other, &parleyv1.ListEventsRequest{})); err != nil || len(res.Msg.GetEvents()) != 0 {
				t.Fatalf("another's ListEvents = %v, %v", res, err)
			}

			// The first event's delivery fails for good and parks; a
			// Redeliver makes it pending again, once.
			ev := want[0]
			deliveries := func() []*parleyv1.WebhookDelivery {
				t.Helper()
				res, err := c.ListDeliveries(ctx, as(owner, &parleyv1.ListDeliveriesRequest{EventId: ev.ID.String()}))
				if err != nil {
					t.Fatal(err)
				}
				return res.Msg.GetDeliveries()
			}
			if ds := deliveries(); len(ds) != 1 || ds[0].GetEndpointId() != endpoint || ds[0].GetState() != parleyv1.DeliveryState_DELIVERY_STATE_PENDING {
				t.Fatalf("deliveries %v, want one pending to %s", ds, endpoint)
			}
			if _, err := c.Redeliver(ctx, as(owner, &parleyv1.RedeliverRequest{EventId: ev.ID.String()})); codeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("Redeliver with nothing parked: %v", err)
			}
			park(t, a, ev.ID)
			ds := deliveries()
			if len(ds) != 1 || ds[0].GetState() != parleyv1.DeliveryState_DELIVERY_STATE_PARKED || ds[0].GetLastStatus() != 500 ||
				ds[0].GetAttempts() != 1 || ds[0].GetFinishedAt() == nil || !strings.Contains(ds[0].GetLastError(), "down") {
				t.Fatalf("deliveries %v, want one parked after a 500", ds)
			}
			if _, err := c.Redeliver(ctx, as(other, &parleyv1.RedeliverRequest{EventId: ev.ID.String()})); codeOf(err) != connect.CodeNotFound {
				t.Fatalf("another's Redeliver: %v", err)
			}
			if _, err := c.ListDeliveries(ctx, as(other, &parleyv1.ListDeliveriesRequest{EventId: ev.ID.String()})); codeOf(err) != connect.CodeNotFound ||
				!strings.Contains(err.Error(), "webhook event not found") {
				t.Fatalf("another's ListDeliveries: %v", err)
			}
			res, err := c.Redeliver(ctx, as(owner, &parleyv1.RedeliverRequest{EventId: ev.ID.String()}))
			if err != nil || res.Msg.GetRedelivered() != 1 {
				t.Fatalf("Redeliver = %v, %v", res, err)
			}
			if ds := deliveries(); ds[0].GetState() != parleyv1.DeliveryState_DELIVERY_STATE_PENDING {
				t.Fatalf("after Redeliver: %v", ds)
			}
		})
	}
}

// park fails the delivery of event for good, as the dispatcher does once
// the retry window has passed.
func park(t *testing.T, a *testAPI, event uuid.UUID) {
	t.Helper()
	now := time.Now()
	for range 10 {
		ds, err := a.webhooks.ClaimDeliveries(t.Context(), now, 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Event.ID == event {
				if err := a.webhooks.FinishDelivery(t.Context(), d, webhook.Outcome{Park: true, Status: 500, Error: "receiver down", At: now}); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	t.Fatalf("no delivery of %s to claim", event)
}

// Agents have no endpoints or events; refusals of bad input come before
// any store.
func TestWebhookRefusals(t *testing.T) {
	a := newTestAPI(t, apiOptions{})
	c := parleyv1connect.NewWebhookServiceClient(a.hc, a.url)
	ctx := t.Context()
	user, agent := a.user(t), a.agent(t)
	id := createEndpoint(t, c, user, webhook.ExportReady).GetEndpoint().GetId()

	for name, call := range map[string]func() error{
		"CreateEndpoint": func() error {
			_, err := c.CreateEndpoint(ctx, as(agent, &parleyv1.CreateEndpointRequest{Url: receiverURL, EventTypes: []string{webhook.CallEnded}}))
			return err
		},
		"ListEndpoints": func() error { _, err := c.ListEndpoints(ctx, as(agent, &parleyv1.ListEndpointsRequest{})); return err },
		"GetEndpoint": func() error {
			_, err := c.GetEndpoint(ctx, as(agent, &parleyv1.GetEndpointRequest{EndpointId: id}))
			return err
		},
		"ListEvents": func() error { _, err := c.ListEvents(ctx, as(agent, &parleyv1.ListEventsRequest{})); return err },
		"Redeliver": func() error {
			_, err := c.Redeliver(ctx, as(agent, &parleyv1.RedeliverRequest{EventId: uuid.NewString()}))
			return err
		},
		"ListEndpointDeliveries": func() error {
			_, err := c.ListEndpointDeliveries(ctx, as(agent, &parleyv1.ListEndpointDeliveriesRequest{EndpointId: id, State: parleyv1.DeliveryState_DELIVERY_STATE_PARKED}))
			return err
		},
		"RedeliverParked": func() error {
			_, err := c.RedeliverParked(ctx, as(agent, &parleyv1.RedeliverParkedRequest{EndpointId: id}))
			return err
		},
		"EnableEndpoint": func() error {
			_, err := c.EnableEndpoint(ctx, as(agent, &parleyv1.EnableEndpointRequest{EndpointId: id}))
			return err
		},
	} {
		if err := call(); codeOf(err) != connect.CodePermissionDenied {
			t.Errorf("agent's %s: %v, want permission_denied", name, err)
		}
	}

	for _, tc := range []struct {
		name  string
		url   string
		types []string
	}{
		{"http", "http://127.0.0.1:9/hooks", []string{webhook.CallEnded}},
		{"private address", "https://10.1.2.3/hooks", []string{webhook.CallEnded}},
		{"link-local address", "https://169.254.169.254/latest", []string{webhook.CallEnded}},
		{"loopback not allowed", "https://[::1]/hooks", []string{webhook.CallEnded}},
		{"credentials", "https://u:p@127.0.0.1/hooks", []string{webhook.CallEnded}},
		{"not a URL", "hooks.example.com", []string{webhook.CallEnded}},
		{"empty URL", "", []string{webhook.CallEnded}},
		{"long URL", "https://127.0.0.1/" + strings.Repeat("a", 2048), []string{webhook.CallEnded}},
		{"unknown event type", receiverURL, []string{"call.exploded"}},
		{"no event type", receiverURL, nil},
	} {
		_, err := c.CreateEndpoint(ctx, as(user, &parleyv1.CreateEndpointRequest{Url: tc.url, EventTypes: tc.types}))
		if codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want invalid_argument", tc.name, err)
		}
	}
	for name, call := range map[string]func() error{
		"malformed endpoint id": func() error {
			_, err := c.GetEndpoint(ctx, as(user, &parleyv1.GetEndpointRequest{EndpointId: "x"}))
			return err
		},
		"overlap over 7 days": func() error {
			_, err := c.RotateSecret(ctx, as(user, &parleyv1.RotateSecretRequest{EndpointId: id, Overlap: durationpb.New(8 * 24 * time.Hour)}))
			return err
		},
		"negative overlap": func() error {
			_, err := c.RotateSecret(ctx, as(user, &parleyv1.RotateSecretRequest{EndpointId: id, Overlap: durationpb.New(-time.Second)}))
			return err
		},
		"forged cursor": func() error {
			_, err := c.ListEvents(ctx, as(user, &parleyv1.ListEventsRequest{Cursor: "AAAA"}))
			return err
		},
		"forged page token": func() error {
			_, err := c.ListEndpoints(ctx, as(user, &parleyv1.ListEndpointsRequest{PageToken: "AAAA"}))
			return err
		},
		"page size over 500": func() error {
			_, err := c.ListEvents(ctx, as(user, &parleyv1.ListEventsRequest{PageSize: 501}))
			return err
		},
	} {
		if err := call(); codeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want invalid_argument", name, err)
		}
	}

	// A user has at most MaxEndpoints; one more is refused until one goes.
	for range webhook.MaxEndpoints - 1 {
		createEndpoint(t, c, user, webhook.CallEnded)
	}
	_, err := c.CreateEndpoint(ctx, as(user, &parleyv1.CreateEndpointRequest{Url: receiverURL, EventTypes: []string{webhook.CallEnded}}))
	if codeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("endpoint %d: %v, want failed_precondition", webhook.MaxEndpoints+1, err)
	}
	if _, err := c.DeleteEndpoint(ctx, as(user, &parleyv1.DeleteEndpointRequest{EndpointId: id})); err != nil {
		t.Fatal(err)
	}
	createEndpoint(t, c, user, webhook.CallEnded)
}

// With PARLEY_WEBHOOK_ALLOW_HTTP, plain http registers.
func TestWebhookEndpointAllowHTTP(t *testing.T) {
	a := newTestAPI(t, apiOptions{webhookAllowHTTP: true})
	c := parleyv1connect.NewWebhookServiceClient(a.hc, a.url)
	res, err := c.CreateEndpoint(t.Context(), as(a.user(t), &parleyv1.CreateEndpointRequest{Url: "http://127.0.0.1:9/hooks", EventTypes: []string{webhook.CallEnded}}))
	if err != nil || res.Msg.GetEndpoint().GetUrl() != "http://127.0.0.1:9/hooks" {
		t.Fatalf("CreateEndpoint = %v, %v", res, err)
	}
}

// The REST paths reach the same handlers: register, read, list, rotate,
// delete, replay events, list an endpoint's deliveries, redeliver its
// parked ones and enable it, as curl would.
func TestWebhookRESTPaths(t *testing.T) {
	a := newTestAPI(t, apiOptions{})
	token := register(t, a.url)
	base := a.url + "/api/v1/webhooks"
	status, _, out := restCall(t, http.MethodPost, base+"/endpoints", token, `{"url":"`+receiverURL+`","eventTypes":["report.ready"]}`)
	if status != http.StatusOK || !strings.HasPrefix(fmt.Sprint(out["secret"]), "whsec_") {
		t.Fatalf("POST endpoints: %d %v", status, out)
	}
	id := out["endpoint"].(map[string]any)["id"].(string)
	if status, _, out := restCall(t, http.MethodGet, base+"/endpoints/"+id, token, ""); status != http.StatusOK || out["endpoint"].(map[string]any)["url"] != receiverURL {
		t.Fatalf("GET endpoint: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodGet, base+"/endpoints?limit=1", token, ""); status != http.StatusOK || len(out["endpoints"].([]any)) != 1 {
		t.Fatalf("GET endpoints: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodPost, base+"/endpoints/"+id+"/rotate-secret", token, `{"overlap":"3600s"}`); status != http.StatusOK || !strings.HasPrefix(fmt.Sprint(out["secret"]), "whsec_") {
		t.Fatalf("POST rotate-secret: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodGet, base+"/events?limit=10", token, ""); status != http.StatusOK || len(out) != 0 {
		t.Fatalf("GET events: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodGet, base+"/endpoints/"+id+"/deliveries?state=DELIVERY_STATE_PARKED&order=ORDER_OLDEST_FIRST&limit=10", token, ""); status != http.StatusOK || len(out) != 0 {
		t.Fatalf("GET endpoint deliveries: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodPost, base+"/endpoints/"+id+"/redeliver", token, `{}`); status != http.StatusOK || len(out) != 0 {
		t.Fatalf("POST redeliver: %d %v", status, out)
	}
	if status, _, out := restCall(t, http.MethodPost, base+"/endpoints/"+id+"/enable", token, `{}`); status != http.StatusOK || out["endpoint"].(map[string]any)["id"] != id {
		t.Fatalf("POST enable: %d %v", status, out)
	}
	status, _, out = restCall(t, http.MethodGet, base+"/endpoints/"+id+"/deliveries", token, "")
	wantError(t, "GET endpoint deliveries without a state", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
	status, _, out = restCall(t, http.MethodGet, base+"/events/"+uuid.NewString()+"/deliveries", token, "")
	wantError(t, "GET unknown event's deliveries", status, out, http.StatusNotFound, connect.CodeNotFound)
	status, _, out = restCall(t, http.MethodPost, base+"/endpoints", token, `{"url":"http://127.0.0.1/hooks","eventTypes":["report.ready"]}`)
	wantError(t, "POST http endpoint", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
	if status, _, out := restCall(t, http.MethodDelete, base+"/endpoints/"+id, token, ""); status != http.StatusOK {
		t.Fatalf("DELETE endpoint: %d %v", status, out)
	}
	status, _, out = restCall(t, http.MethodGet, base+"/endpoints/"+id, token, "")
	wantError(t, "GET deleted endpoint", status, out, http.StatusNotFound, connect.CodeNotFound)
}
