package webhook_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// switchable is a flag a receiver reads on every request.
type switchable struct {
	mu sync.Mutex
	on bool
}

func (s *switchable) get() bool   { s.mu.Lock(); defer s.mu.Unlock(); return s.on }
func (s *switchable) set(on bool) { s.mu.Lock(); defer s.mu.Unlock(); s.on = on }

// newGoneReceiver is a receiver that answers 410 Gone while gone says so,
// and otherwise as newReceiver's.
func newGoneReceiver(t *testing.T, verifier string, gone func() bool) *receiver {
	r := &receiver{t: t, verifier: verifier, bodies: map[string][]byte{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if gone() {
			r.mu.Lock()
			r.attempts++
			r.mu.Unlock()
			http.Error(w, "this endpoint is gone", http.StatusGone)
			return
		}
		r.serve(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func eventIDs(ds []webhook.DeliveryStatus) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.EventID.String()
	}
	return out
}

// listAll pages through an endpoint's deliveries in state with pages of
// size, returning them and how many pages it took.
func listAll(t *testing.T, events *webhook.Events, p auth.Principal, q webhook.DeliveryQuery) ([]webhook.DeliveryStatus, int) {
	t.Helper()
	var all []webhook.DeliveryStatus
	for pages := 1; ; pages++ {
		page, err := events.ListEndpointDeliveries(t.Context(), p, q)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Deliveries...)
		if page.NextPageToken == "" {
			return all, pages
		}
		if pages > 100 {
			t.Fatal("more than 100 pages")
		}
		q.PageToken = page.NextPageToken
	}
}

func uuidOf(t *testing.T, s string) uuid.UUID {
	t.Helper()
	id, err := uuid.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func reversed(s []string) []string {
	s = slices.Clone(s)
	slices.Reverse(s)
	return s
}

// A receiver down for more than the retry window gets each of its
// events parked; the parked deliveries are listed across events, paged
// both ways, and one RedeliverParked sends them all, oldest first and
// before the event that was pending behind them, each verified by the
// reference library. The dispatcher's clock starts 26 hours back, so that
// the redelivery happens at about the real time the library checks.
func TestParkedDeliveriesAreListedAndRedeliveredInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.clock.add(-26 * time.Hour)
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now})
	alice, bob := e.user(t), e.user(t)
	down := &switchable{on: true}
	r := newReceiver(t, testenv.WebhookReceiver(t), down.get)
	ep := e.register(t, alice, r, webhook.CallEnded, webhook.CallStarted)
	bobs := e.register(t, bob, newReceiver(t, "", nil), webhook.CallEnded)

	var want []string
	var created []time.Time
	for i := range 5 {
		typ := webhook.CallEnded
		if i == 2 {
			typ = webhook.CallStarted
		}
		want = append(want, e.publish(t, alice, typ, i))
		created = append(created, e.clock.now())
		e.clock.add(time.Second)
	}
	parked := webhook.DeliveryQuery{EndpointID: ep.ID, State: webhook.DeliveryParked, OldestFirst: true, PageSize: 2}
	d := e.dispatcher(webhook.DispatcherOptions{Jitter: func() float64 { return 0 }})
	for i := 0; ; i++ {
		if i > 300 {
			t.Fatal("not all parked after 300 passes")
		}
		if _, err := d.RunOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		if all, _ := listAll(t, events, alice, parked); len(all) == len(want) {
			break
		}
		e.clock.add(10 * time.Minute)
	}
	if now := e.clock.now(); now.After(time.Now()) {
		t.Fatalf("parked at %v, after the real clock: the library would refuse the redelivery", now)
	}
	// Published while the receiver is still down, not yet tried: pending,
	// behind the parked ones in the endpoint's line.
	later := e.publish(t, alice, webhook.CallEnded, 5)

	all, pages := listAll(t, events, alice, parked)
	if !slices.Equal(eventIDs(all), want) || pages != 3 {
		t.Fatalf("parked, oldest first: %v in %d pages, want %v in 3", eventIDs(all), pages, want)
	}
	for i, d := range all {
		wantType := webhook.CallEnded
		if i == 2 {
			wantType = webhook.CallStarted
		}
		if d.EventType != wantType || !d.EventCreatedAt.Equal(created[i]) || d.EndpointID != ep.ID || d.State != webhook.DeliveryParked ||
			d.Attempts < 1 || d.LastStatus != http.StatusInternalServerError || d.FinishedAt.IsZero() {
			t.Fatalf("parked delivery %d: %+v, want event type %s created %v", i, d, wantType, created[i])
		}
	}
	newest := parked
	newest.OldestFirst = false
	if all, pages := listAll(t, events, alice, newest); !slices.Equal(eventIDs(all), reversed(want)) || pages != 3 {
		t.Fatalf("parked, newest first: %v in %d pages, want %v", eventIDs(all), pages, reversed(want))
	}
	pending := webhook.DeliveryQuery{EndpointID: ep.ID, State: webhook.DeliveryPending}
	if all, _ := listAll(t, events, alice, pending); !slices.Equal(eventIDs(all), []string{later}) {
		t.Fatalf("pending: %v, want %s", eventIDs(all), later)
	}
	if all, _ := listAll(t, events, alice, webhook.DeliveryQuery{EndpointID: ep.ID, State: webhook.DeliveryDelivered}); len(all) != 0 {
		t.Fatalf("delivered: %v, want none", eventIDs(all))
	}

	// Page tokens: only for the state and order that made them.
	first, err := events.ListEndpointDeliveries(t.Context(), alice, parked)
	if err != nil || first.NextPageToken == "" {
		t.Fatalf("first page: %+v, %v", first, err)
	}
	for name, q := range map[string]webhook.DeliveryQuery{
		"another order": {EndpointID: ep.ID, State: webhook.DeliveryParked, PageToken: first.NextPageToken},
		"another state": {EndpointID: ep.ID, State: webhook.DeliveryPending, OldestFirst: true, PageToken: first.NextPageToken},
		"forged":        {EndpointID: ep.ID, State: webhook.DeliveryParked, OldestFirst: true, PageToken: "AAAA"},
		"truncated":     {EndpointID: ep.ID, State: webhook.DeliveryParked, OldestFirst: true, PageToken: first.NextPageToken[:len(first.NextPageToken)-1]},
	} {
		if _, err := events.ListEndpointDeliveries(t.Context(), alice, q); !errors.Is(err, webhook.ErrInvalidPageToken) {
			t.Errorf("%s page token: %v, want ErrInvalidPageToken", name, err)
		}
	}
	if _, err := events.ListEndpointDeliveries(t.Context(), alice, webhook.DeliveryQuery{EndpointID: ep.ID}); err == nil || !strings.Contains(err.Error(), "state") {
		t.Errorf("no state: %v, want it refused", err)
	}
	// Another user's endpoint is not found, and stays untouched.
	if _, err := events.ListEndpointDeliveries(t.Context(), bob, parked); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("bob lists alice's endpoint: %v, want ErrNotFound", err)
	}
	if _, err := events.RedeliverParked(t.Context(), bob, ep.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("bob redelivers alice's endpoint: %v, want ErrNotFound", err)
	}
	if n, err := events.RedeliverParked(t.Context(), alice, bobs.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("alice redelivers bob's endpoint: %d, %v, want ErrNotFound", n, err)
	}

	// The receiver is back, on the real clock: one call redelivers all.
	e.clock.add(time.Since(e.clock.now()))
	down.set(false)
	n, err := events.RedeliverParked(t.Context(), alice, ep.ID)
	if err != nil || n != len(want) {
		t.Fatalf("RedeliverParked = %d, %v; want %d", n, err, len(want))
	}
	wantAll := append(slices.Clone(want), later)
	drain(t, e, d, 0, 20, func() bool { return len(r.taken()) >= len(wantAll) })
	if got := r.taken(); !slices.Equal(got, wantAll) {
		t.Fatalf("took %v, want the redelivered ones in order, then the pending one: %v", got, wantAll)
	}
	delivered := webhook.DeliveryQuery{EndpointID: ep.ID, State: webhook.DeliveryDelivered, OldestFirst: true, PageSize: 4}
	if all, _ := listAll(t, events, alice, delivered); !slices.Equal(eventIDs(all), wantAll) {
		t.Fatalf("delivered: %v, want %v", eventIDs(all), wantAll)
	}
	if all, _ := listAll(t, events, alice, parked); len(all) != 0 {
		t.Fatalf("still parked: %v", eventIDs(all))
	}
	if n, err := events.RedeliverParked(t.Context(), alice, ep.ID); err != nil || n != 0 {
		t.Fatalf("RedeliverParked with none parked = %d, %v; want 0", n, err)
	}
}

// A receiver that answers 410 Gone disables its endpoint: the delivery
// and those behind it park, later events are recorded (listed, parked)
// but never attempted, and another endpoint of the user goes on. Enabling
// it redelivers every parked one: the receiver then has each event once,
// in order, the ones published after the enabling last.
func TestGoneDisablesTheEndpointUntilEnabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now})
	verifier := testenv.WebhookReceiver(t)
	alice, bob := e.user(t), e.user(t)
	gone := &switchable{on: true}
	r := newGoneReceiver(t, verifier, gone.get)
	healthy := newReceiver(t, verifier, nil)
	ep := e.register(t, alice, r, webhook.CallEnded)
	e.register(t, alice, healthy, webhook.CallEnded)

	var want []string
	for i := range 3 {
		want = append(want, e.publish(t, alice, webhook.CallEnded, i))
	}
	d := e.dispatcher(webhook.DispatcherOptions{})
	if _, err := d.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, err := e.svc.Endpoint(t.Context(), alice, ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.DisabledAt.Equal(e.clock.now()) || !strings.Contains(got.DisabledReason, "410") || !strings.Contains(got.DisabledReason, want[0]) {
		t.Fatalf("after a 410 the endpoint is %+v, want disabled now, for event %s", got, want[0])
	}
	parked := webhook.DeliveryQuery{EndpointID: ep.ID, State: webhook.DeliveryParked, OldestFirst: true}
	all, _ := listAll(t, events, alice, parked)
	if !slices.Equal(eventIDs(all), want) || all[0].LastStatus != http.StatusGone || all[0].Attempts != 1 ||
		all[1].Attempts != 0 || !strings.Contains(all[1].LastError, "disabled") {
		t.Fatalf("parked after the 410: %+v, want %v, the first answered 410, the others not attempted", all, want)
	}

	// Recorded while disabled: listed and parked, never attempted.
	for i := range 2 {
		want = append(want, e.publish(t, alice, webhook.CallEnded, 10+i))
	}
	drain(t, e, d, 0, 20, func() bool { return len(healthy.taken()) == len(want) })
	// The clock stays within the reference library's 5 minutes of the
	// real one; nothing of a disabled endpoint is due at any time anyway.
	for range 3 {
		e.clock.add(time.Minute)
		if _, err := d.RunOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if r.tries() != 1 || len(r.taken()) != 0 {
		t.Fatalf("the disabled endpoint was tried %d times, want only the first (410)", r.tries())
	}
	if got := healthy.taken(); !slices.Equal(got, want) {
		t.Fatalf("the other endpoint took %v, want %v", got, want)
	}
	settled(t, events, alice, "", len(want))
	if listed, _, err := events.ListEvents(t.Context(), alice, "", 0); err != nil || !slices.Equal(ids(listed), want) {
		t.Fatalf("ListEvents = %v, %v; want every event %v", ids(listed), err, want)
	}
	if all, _ := listAll(t, events, alice, parked); !slices.Equal(eventIDs(all), want) {
		t.Fatalf("parked while disabled: %v, want %v", eventIDs(all), want)
	}
	if _, err := events.RedeliverParked(t.Context(), alice, ep.ID); !errors.Is(err, webhook.ErrEndpointDisabled) {
		t.Fatalf("RedeliverParked while disabled: %v, want ErrEndpointDisabled", err)
	}
	if _, err := events.Redeliver(t.Context(), alice, uuidOf(t, want[1])); !errors.Is(err, webhook.ErrNothingToRedeliver) {
		t.Fatalf("Redeliver of an event parked at a disabled endpoint: %v, want ErrNothingToRedeliver", err)
	}
	if _, _, err := e.svc.EnableEndpoint(t.Context(), bob, ep.ID, false); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("bob enables alice's endpoint: %v, want ErrNotFound", err)
	}

	// The receiver is back and the customer enables the endpoint.
	gone.set(false)
	enabled, n, err := e.svc.EnableEndpoint(t.Context(), alice, ep.ID, false)
	if err != nil || n != len(want) || !enabled.DisabledAt.IsZero() || enabled.DisabledReason != "" {
		t.Fatalf("EnableEndpoint = %+v, %d, %v; want enabled, %d redelivered", enabled, n, err, len(want))
	}
	want = append(want, e.publish(t, alice, webhook.CallEnded, 20))
	drain(t, e, d, 0, 20, func() bool { return len(r.taken()) >= len(want) })
	if got := r.taken(); !slices.Equal(got, want) {
		t.Fatalf("after enabling took %v, want each event once, in order: %v", got, want)
	}
	if n, err := d.RunOnce(t.Context()); err != nil || n != 0 {
		t.Fatalf("a pass after all were delivered claimed %d, %v", n, err)
	}
	if again, n, err := e.svc.EnableEndpoint(t.Context(), alice, ep.ID, false); err != nil || n != 0 || !again.DisabledAt.IsZero() {
		t.Fatalf("enabling an enabled endpoint = %+v, %d, %v; want it unchanged", again, n, err)
	}
}

// EnableEndpoint with keepParked leaves the parked deliveries parked: new
// events flow, and RedeliverParked can send the old ones later.
func TestEnableKeepingParked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now})
	alice := e.user(t)
	gone := &switchable{on: true}
	r := newGoneReceiver(t, "", gone.get)
	ep := e.register(t, alice, r, webhook.CallEnded)
	old := e.publish(t, alice, webhook.CallEnded, 1)
	d := e.dispatcher(webhook.DispatcherOptions{})
	if _, err := d.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	gone.set(false)
	if _, n, err := e.svc.EnableEndpoint(t.Context(), alice, ep.ID, true); err != nil || n != 0 {
		t.Fatalf("EnableEndpoint keeping parked = %d, %v", n, err)
	}
	next := e.publish(t, alice, webhook.CallEnded, 2)
	drain(t, e, d, 0, 5, func() bool { return len(r.taken()) == 1 })
	if n, err := events.RedeliverParked(t.Context(), alice, ep.ID); err != nil || n != 1 {
		t.Fatalf("RedeliverParked = %d, %v", n, err)
	}
	drain(t, e, d, 0, 5, func() bool { return len(r.taken()) == 2 })
	if got := r.taken(); !slices.Equal(got, []string{next, old}) {
		t.Fatalf("took %v, want %v", got, []string{next, old})
	}
}

// A redelivery while a newer delivery of the endpoint is in flight puts
// the redelivered one at the head of the line, due once that lease ends:
// the endpoint still gets one delivery at a time, the one in flight
// first, then the redelivered one, then the rest.
func TestRedeliveryWaitsForTheDeliveryInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now})
	alice := e.user(t)
	r := newReceiver(t, "", nil)
	ep := e.register(t, alice, r, webhook.CallEnded)
	old := e.publish(t, alice, webhook.CallEnded, 1)
	claim := func(want string) webhook.Delivery {
		t.Helper()
		ds, err := e.store.ClaimDeliveries(t.Context(), e.clock.now(), 10, time.Minute)
		if err != nil || len(ds) != 1 || ds[0].Event.ID.String() != want {
			t.Fatalf("claim = %v, %v; want the delivery of %s", ds, err, want)
		}
		return ds[0]
	}
	if err := e.store.FinishDelivery(t.Context(), claim(old), webhook.Outcome{Park: true, Status: 500, Error: "down", At: e.clock.now()}); err != nil {
		t.Fatal(err)
	}
	inFlight := e.publish(t, alice, webhook.CallEnded, 2)
	behind := e.publish(t, alice, webhook.CallEnded, 3)
	held := claim(inFlight)

	if n, err := events.RedeliverParked(t.Context(), alice, ep.ID); err != nil || n != 1 {
		t.Fatalf("RedeliverParked = %d, %v", n, err)
	}
	d := e.dispatcher(webhook.DispatcherOptions{Lease: time.Minute})
	if n, err := d.RunOnce(t.Context()); err != nil || n != 0 {
		t.Fatalf("while %s is in flight a pass claimed %d, %v; want nothing", inFlight, n, err)
	}
	if err := e.store.FinishDelivery(t.Context(), held, webhook.Outcome{Delivered: true, Status: 204, At: e.clock.now()}); err != nil {
		t.Fatal(err)
	}
	e.clock.add(time.Minute)
	drain(t, e, d, time.Second, 10, func() bool { return len(r.taken()) == 2 })
	if got := r.taken(); !slices.Equal(got, []string{old, behind}) {
		t.Fatalf("took %v, want the redelivered %s, then %s", got, old, behind)
	}
}
