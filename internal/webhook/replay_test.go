package webhook_test

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/rule"
	"github.com/parley-dev/parley/internal/webhook"
)

func ids(events []webhook.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID.String()
	}
	return out
}

// settled waits until p's events after cursor number n: an event is listed
// only once every transaction older than its own has ended, and other
// tests' transactions on the same server hold that horizon back a moment.
func settled(t *testing.T, events *webhook.Events, p auth.Principal, cursor string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		page, _, err := events.ListEvents(t.Context(), p, cursor, webhook.MaxEventPageSize)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events listed after 10s, want %d", len(page), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestListEventsReplaysFromACursor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now})
	alice, bob := e.user(t), e.user(t)
	var want []string
	for i := range 5 {
		want = append(want, e.publish(t, alice, webhook.CallEnded, i))
	}
	e.publish(t, bob, webhook.CallEnded, 9)
	settled(t, events, alice, "", len(want))

	var got []string
	cursor := ""
	for range 3 {
		page, next, err := events.ListEvents(t.Context(), alice, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids(page)...)
		cursor = next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged %v, want %v", got, want)
	}
	page, next, err := events.ListEvents(t.Context(), alice, cursor, 2)
	if err != nil || len(page) != 0 || next != cursor {
		t.Fatalf("past the end: %v, %q, %v; want nothing and the same cursor", ids(page), next, err)
	}
	later := e.publish(t, alice, webhook.ExportReady, 5)
	settled(t, events, alice, cursor, 1)
	page, _, err = events.ListEvents(t.Context(), alice, cursor, 0)
	if err != nil || !slices.Equal(ids(page), []string{later}) {
		t.Fatalf("after a new event: %v, %v; want %s", ids(page), err, later)
	}
	if page[0].Type != webhook.ExportReady || !strings.Contains(string(page[0].Payload), `"type":"export.ready"`) {
		t.Fatalf("listed %+v", page[0])
	}
	settled(t, events, bob, "", 1)
	all, _, err := events.ListEvents(t.Context(), bob, "", 0)
	if err != nil || len(all) != 1 {
		t.Fatalf("bob's events: %v, %v; want his one", ids(all), err)
	}

	for _, bad := range []string{"nope", cursor + "A", strings.TrimRight(cursor, "A") + "=", webhook.Cursor{XID: -1}.Text()} {
		if _, _, err := events.ListEvents(t.Context(), alice, bad, 0); !errors.Is(err, rule.ErrBroken) {
			t.Errorf("ListEvents(cursor %q) = %v, want invalid", bad, err)
		}
	}
	if _, _, err := events.ListEvents(t.Context(), alice, "", webhook.MaxEventPageSize+1); !errors.Is(err, rule.ErrBroken) {
		t.Errorf("oversized page: %v, want invalid", err)
	}
	if _, _, err := events.ListEvents(t.Context(), auth.Principal{ID: uuid.New(), Kind: auth.KindAgent}, "", 0); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("agent: %v, want ErrPermissionDenied", err)
	}
}

func TestCursorText(t *testing.T) {
	t.Parallel()
	c := webhook.Cursor{XID: 1<<40 + 7, ID: uuid.New()}
	got, err := webhook.ParseCursor(c.Text())
	if err != nil || got != c {
		t.Fatalf("ParseCursor(Text()) = %v, %v; want %v", got, err, c)
	}
	if got, err := webhook.ParseCursor(""); err != nil || got != (webhook.Cursor{}) {
		t.Fatalf(`ParseCursor("") = %v, %v; want the start`, got, err)
	}
}

// A parked delivery shows as parked with its last answer, is redelivered
// on request with a new retry window, and arrives once the receiver is up.
func TestParkedDeliveryIsVisibleAndRedeliverable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now})
	alice, bob := e.user(t), e.user(t)
	var mu sync.Mutex
	down := true
	r := newReceiver(t, "", func() bool { mu.Lock(); defer mu.Unlock(); return down })
	ep := e.register(t, alice, r, webhook.CallEnded)
	id := e.publish(t, alice, webhook.CallEnded, 1)
	eventID := uuid.MustParse(id)
	d := e.dispatcher(webhook.DispatcherOptions{})

	if _, err := events.Redeliver(t.Context(), alice, eventID); !errors.Is(err, webhook.ErrNothingToRedeliver) {
		t.Fatalf("Redeliver of a pending event = %v, want ErrNothingToRedeliver", err)
	}
	start := e.clock.now()
	for e.clock.now().Sub(start) <= webhook.RetryWindow+2*webhook.MaxRetryDelay {
		if _, err := d.RunOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		e.clock.add(15 * time.Minute)
	}
	st, err := events.Deliveries(t.Context(), alice, eventID)
	if err != nil || len(st) != 1 {
		t.Fatalf("Deliveries = %+v, %v", st, err)
	}
	if s := st[0]; s.EndpointID != ep.ID || s.State != webhook.DeliveryParked || s.LastStatus != 500 || !strings.Contains(s.LastError, "answered 500") ||
		s.Attempts != r.tries() || s.FinishedAt.Sub(start) < webhook.RetryWindow {
		t.Fatalf("parked delivery = %+v (receiver saw %d attempts)", s, r.tries())
	}
	if _, err := events.Deliveries(t.Context(), bob, eventID); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("bob's Deliveries(alice's event) = %v, want ErrNotFound", err)
	}
	if _, err := events.Redeliver(t.Context(), bob, eventID); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("bob's Redeliver(alice's event) = %v, want ErrNotFound", err)
	}

	// Redelivered while still down: a new window, so a failure is retried.
	if n, err := events.Redeliver(t.Context(), alice, eventID); err != nil || n != 1 {
		t.Fatalf("Redeliver = %d, %v; want 1", n, err)
	}
	if _, err := d.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	st, err = events.Deliveries(t.Context(), alice, eventID)
	if err != nil || st[0].State != webhook.DeliveryPending || !st[0].FinishedAt.IsZero() {
		t.Fatalf("after a failed redelivery: %+v, %v; want pending", st, err)
	}
	if wait := st[0].NextAttemptAt.Sub(e.clock.now()); wait > webhook.FirstRetryDelay {
		t.Fatalf("after a redelivery the backoff starts at %v, want at most %v", wait, webhook.FirstRetryDelay)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	drain(t, e, d, 10*time.Second, 10, func() bool { return len(r.taken()) == 1 })
	st, err = events.Deliveries(t.Context(), alice, eventID)
	if err != nil || st[0].State != webhook.DeliveryDelivered || st[0].LastStatus != 204 || st[0].LastError != "" || st[0].FinishedAt.IsZero() {
		t.Fatalf("after recovery: %+v, %v; want delivered", st, err)
	}
}

// Prune forgets events past EventRetention, except those a delivery still
// waits on.
func TestPruneKeepsRecentAndPendingEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var logs strings.Builder
	events := webhook.NewEvents(e.store, webhook.Options{Now: e.clock.now, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	alice := e.user(t)
	up := newReceiver(t, "", nil)
	down := newReceiver(t, "", func() bool { return true })
	e.register(t, alice, up, webhook.CallEnded)
	e.register(t, alice, down, webhook.ExportReady)
	d := e.dispatcher(webhook.DispatcherOptions{})

	e.clock.add(-webhook.EventRetention - time.Hour)
	old := uuid.MustParse(e.publish(t, alice, webhook.CallEnded, 1))
	waiting := uuid.MustParse(e.publish(t, alice, webhook.ExportReady, 2))
	drain(t, e, d, 0, 5, func() bool { return len(up.taken()) == 1 })
	e.clock.add(webhook.EventRetention + time.Hour)
	// No pass after the jump: the waiting delivery would be parked by it
	// (its window is over), and then pruned with the old.
	recent := uuid.MustParse(e.publish(t, alice, webhook.CallEnded, 3))

	events.Prune(t.Context())
	if !strings.Contains(logs.String(), "pruned outbound webhook events") || !strings.Contains(logs.String(), "count=1") {
		t.Fatalf("Prune logged %q, want one event pruned", logs.String())
	}
	if _, err := events.Deliveries(t.Context(), alice, old); !errors.Is(err, webhook.ErrNotFound) {
		t.Errorf("the old delivered event: %v, want ErrNotFound", err)
	}
	for name, id := range map[string]uuid.UUID{"old but pending": waiting, "recent": recent} {
		if st, err := events.Deliveries(t.Context(), alice, id); err != nil || len(st) != 1 {
			t.Errorf("%s event: %+v, %v; want kept", name, st, err)
		}
	}
	if n, err := e.store.PruneEvents(t.Context(), e.clock.now().Add(-webhook.EventRetention)); err != nil || n != 0 {
		t.Fatalf("a second prune deleted %d, %v; want 0", n, err)
	}
}
