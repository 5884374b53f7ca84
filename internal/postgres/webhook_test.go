package postgres_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// An event whose transaction began before another event's but commits
// after it is never passed by a cursor: the later-committed event is not
// listed while the earlier transaction runs, and once it commits both come
// in (xid, id) order.
func TestWebhookEventsAreListedOnlyBehindRunningTransactions(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	store := postgres.NewWebhookStore(db)
	user := roomSeedUser(t, postgres.NewAccountStore(db), "alice")
	event := func(n int) webhook.Event {
		ev, err := webhook.NewEvent(user, webhook.CallEnded, json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	list := func() []uuid.UUID {
		l, err := store.Events(t.Context(), user, webhook.Cursor{}, 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []uuid.UUID
		for _, e := range l {
			out = append(out, e.ID)
		}
		return out
	}

	early := event(1)
	tx, err := db.DB.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	// The long change takes its transaction id first...
	if _, err := tx.ExecContext(t.Context(), `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	// ...another change commits an event meanwhile...
	late := event(2)
	if err := store.Publish(t.Context(), late); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("listed %v while an older transaction still runs, want nothing yet", got)
	}
	// ...and the long change writes its event and commits last.
	if _, err := tx.ExecContext(t.Context(), `INSERT INTO webhook_events (id, user_id, type, payload, created_at) VALUES ($1, $2, $3, $4, $5)`,
		early.ID, early.UserID, early.Type, early.Payload, early.CreatedAt); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// Another test's transaction anywhere on the server may hold the
	// horizon back a moment; it delays the list, never reorders it.
	want := []uuid.UUID{early.ID, late.ID}
	deadline := time.Now().Add(10 * time.Second)
	got := list()
	for !slices.Equal(got, want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		got = list()
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v (transaction order)", got, want)
	}
}
