package postgres_test

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// callEvent is one outbound call event as the outbox holds it.
type callEvent struct {
	Type string
	Data room.CallEventData
	// XMin is the transaction that wrote the event.
	XMin       string
	Deliveries int
}

// callEventsOf reads the outbox's events about room id, oldest first.
func callEventsOf(t *testing.T, db *bun.DB, id uuid.UUID) []callEvent {
	t.Helper()
	rows, err := db.DB.QueryContext(t.Context(), `SELECT e.type, e.payload, e.xmin::text,
       (SELECT count(*) FROM webhook_deliveries d WHERE d.event_id = e.id)
  FROM webhook_events e ORDER BY e.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []callEvent
	for rows.Next() {
		var (
			e       callEvent
			payload []byte
		)
		if err := rows.Scan(&e.Type, &payload, &e.XMin, &e.Deliveries); err != nil {
			t.Fatal(err)
		}
		var p struct {
			Type string             `json:"type"`
			Data room.CallEventData `json:"data"`
		}
		if err := json.Unmarshal(payload, &p); err != nil || p.Type != e.Type {
			t.Fatalf("payload %s: %v", payload, err)
		}
		e.Data = p.Data
		if e.Data.CallID == id {
			out = append(out, e)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// xminOf is the transaction that last wrote the row of table with id col.
func xminOf(t *testing.T, db *bun.DB, table, col string, id uuid.UUID) string {
	t.Helper()
	var x string
	if err := db.DB.QueryRowContext(t.Context(), `SELECT xmin::text FROM `+table+` WHERE `+col+` = $1`, id).Scan(&x); err != nil {
		t.Fatal(err)
	}
	return x
}

func subscribe(t *testing.T, db *bun.DB, user uuid.UUID, types ...string) {
	t.Helper()
	if _, err := postgres.NewWebhookStore(db).CreateEndpoint(t.Context(), webhook.Endpoint{
		ID: uuid.New(), UserID: user, URL: "https://127.0.0.1:9/hooks", EventTypes: types, CreatedAt: time.Now(),
	}, webhook.NewSecret(), 10); err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, rooms *postgres.RoomStore, events ...room.Event) {
	t.Helper()
	for _, e := range events {
		if _, err := rooms.ApplyEvent(t.Context(), e); err != nil {
			t.Fatalf("apply %s: %v", e.ID, err)
		}
	}
}

// Each transition writes its event in the transaction that makes it, and
// only the transition: duplicates and later events write nothing more.
func TestCallEventsInTheTransitionsTransaction(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	subscribe(t, db, owner, webhook.CallStarted, webhook.CallEnded)
	other := roomSeedUser(t, postgres.NewAccountStore(db), "Bob")
	subscribe(t, db, other, webhook.CallStarted, webhook.CallEnded)
	r := roomCreate(t, rooms, owner, "support")
	script := callScript()
	evs := callEvents(r, script, inOrder(len(script)))

	apply(t, rooms, evs[0])
	got := callEventsOf(t, db, r.ID)
	if len(got) != 1 || got[0].Type != webhook.CallStarted || got[0].XMin != xminOf(t, db, "calls", "room_id", r.ID) {
		t.Fatalf("after room_started: %+v, want one call.started written with the call", got)
	}
	s := got[0].Data
	if s.Status != "live" || s.StartedAt == nil || !s.StartedAt.Equal(callAt(1)) || s.EndedAt != nil || s.EndReason != "" ||
		s.ConversationID != r.ConversationID.String() || s.LiveKitRoom != r.LiveKitRoom || s.RoomName != "support" {
		t.Errorf("call.started data = %+v", s)
	}
	if got[0].Deliveries != 1 {
		t.Errorf("call.started has %d deliveries, want 1 (the owner's endpoint only)", got[0].Deliveries)
	}

	apply(t, rooms, evs[0], evs[1], evs[2], evs[1])
	if got := callEventsOf(t, db, r.ID); len(got) != 1 {
		t.Fatalf("after a duplicate and more joins: %+v, want still one event", got)
	}
	apply(t, rooms, evs[3:]...)
	got = callEventsOf(t, db, r.ID)
	if len(got) != 2 || got[1].Type != webhook.CallEnded || got[1].XMin != xminOf(t, db, "rooms", "id", r.ID) {
		t.Fatalf("after room_finished: %+v, want call.ended written with the room's end", got)
	}
	e := got[1].Data
	if e.Status != "ended" || e.EndReason != "room_finished" || e.EndedAt == nil || !e.EndedAt.Equal(callAt(23)) || !e.StartedAt.Equal(callAt(1)) {
		t.Errorf("call.ended data = %+v", e)
	}
	apply(t, rooms, evs[len(evs)-1])
	if _, _, err := rooms.EndRoom(t.Context(), r.ID, owner, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := callEventsOf(t, db, r.ID); len(got) != 2 {
		t.Fatalf("after a duplicate room_finished and EndRoom: %+v, want still two", got)
	}
}

// An event whose outbox write fails takes its cause with it: nothing is
// left, and LiveKit's retry of the event applies it and writes it once.
func TestCallEventRollsBackWithItsCause(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	subscribe(t, db, owner, webhook.CallStarted)
	r := roomCreate(t, rooms, owner, "support")
	script := callScript()
	evs := callEvents(r, script, inOrder(len(script)))

	// The deliveries are the outbox's last write, after the event's.
	if _, err := db.DB.ExecContext(t.Context(), `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries FOR EACH ROW EXECUTE FUNCTION refuse()`); err != nil {
		t.Fatal(err)
	}
	if _, err := rooms.ApplyEvent(t.Context(), evs[0]); err == nil {
		t.Fatal("ApplyEvent with a failing outbox succeeded")
	}
	var n int
	if err := db.DB.QueryRowContext(t.Context(), `SELECT count(*) FROM webhook_events`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("webhook events after the rollback: %d (%v), want 0", n, err)
	}
	c, err := rooms.Call(t.Context(), r.ID, owner)
	if err != nil || c.Status != room.CallPending {
		t.Fatalf("call after the rollback = %+v (%v), want pending", c, err)
	}
	if _, err := db.DB.ExecContext(t.Context(), `DROP TRIGGER refuse ON webhook_deliveries`); err != nil {
		t.Fatal(err)
	}
	apply(t, rooms, evs[0], evs[0])
	if got := callEventsOf(t, db, r.ID); len(got) != 1 || got[0].Type != webhook.CallStarted || got[0].Deliveries != 1 {
		t.Fatalf("after the retry: %+v, want one call.started delivered once", got)
	}
}

// Whatever order LiveKit's events come in, duplicated or not, a call
// writes one call.started and one call.ended.
func TestCallEventsOnceWhateverTheOrder(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	script := callScript()
	rng := rand.New(rand.NewPCG(16, 2))
	lists := make([][]int, 12)
	for i := range lists {
		lists[i] = append(rng.Perm(len(script)), rng.Perm(len(script))[:4]...)
	}
	calls := h.play(script, lists)
	for i, c := range calls {
		got := callEventsOf(t, h.db, c.ID)
		types := map[string]int{}
		for _, e := range got {
			types[e.Type]++
		}
		if len(got) != 2 || types[webhook.CallStarted] != 1 || types[webhook.CallEnded] != 1 {
			t.Errorf("events %v wrote %+v, want one call.started and one call.ended", lists[i], got)
		}
	}
}

// EndRoom and the reconciliation job end a call once between them.
func TestCallEndedByEndRoomAndCloseCalls(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	script := callScript()
	started := func(name string) room.Room {
		r := roomCreate(t, rooms, owner, name)
		apply(t, rooms, callEvents(r, script, []int{0})...)
		return r
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	ended := func(r room.Room, reason string) {
		t.Helper()
		got := callEventsOf(t, db, r.ID)
		if len(got) != 2 || got[1].Type != webhook.CallEnded || got[1].Data.EndReason != reason || got[1].XMin != xminOf(t, db, "rooms", "id", r.ID) {
			t.Fatalf("events of %s: %+v, want call.started, then call.ended (%s) with the room's end", r.Name, got, reason)
		}
	}

	byAPI := started("ended by the API")
	if _, _, err := rooms.EndRoom(t.Context(), byAPI.ID, owner, now); err != nil {
		t.Fatal(err)
	}
	ended(byAPI, "room_ended")
	if !callEventsOf(t, db, byAPI.ID)[1].Data.EndedAt.Equal(now) {
		t.Errorf("EndRoom's call.ended = %+v, want ended at %v", callEventsOf(t, db, byAPI.ID)[1].Data, now)
	}

	gone := started("gone from LiveKit")
	closed, err := rooms.CloseCalls(t.Context(), []uuid.UUID{gone.ID, byAPI.ID}, room.EndRoomGone, callAt(1000), now)
	if err != nil {
		t.Fatal(err)
	}
	if len(closed) != 2 {
		t.Fatalf("CloseCalls closed %v, want both (one room ended already)", closed)
	}
	ended(gone, "room_gone")
	ended(byAPI, "room_ended")
	if _, err := rooms.CloseCalls(t.Context(), []uuid.UUID{gone.ID}, room.EndRoomGone, callAt(1000), now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rooms.EndRoom(t.Context(), gone.ID, owner, now); err != nil {
		t.Fatal(err)
	}
	apply(t, rooms, callEvents(gone, script, []int{len(script) - 1})...)
	ended(gone, "room_gone")
}
