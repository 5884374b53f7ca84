package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// callEvent is one outbound call event as the outbox holds it.
type callEvent struct {
	Type string
	Data room.CallEventData
	// Raw is the data as sent.
	Raw json.RawMessage
	// XMin is the transaction that wrote the event.
	XMin       string
	Deliveries int
}

// callEventsOf reads the outbox's events about room id (their data's
// call_id), oldest first.
func callEventsOf(t *testing.T, db *bun.DB, id uuid.UUID) []callEvent {
	t.Helper()
	var out []callEvent
	for _, e := range outboxEvents(t, db) {
		if e.Data.CallID == id {
			out = append(out, e)
		}
	}
	return out
}

// outboxEvents reads every event in the outbox, oldest first.
func outboxEvents(t *testing.T, db *bun.DB) []callEvent {
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
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(payload, &p); err != nil || p.Type != e.Type {
			t.Fatalf("payload %s: %v", payload, err)
		}
		e.Raw = p.Data
		if err := json.Unmarshal(p.Data, &e.Data); err != nil {
			t.Fatalf("data %s: %v", p.Data, err)
		}
		out = append(out, e)
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

// A recording filed READY by the import writes recording.ready in that
// transaction, once: a failed copy writes nothing, a second pass nothing
// more.
func TestRecordingReadyWhenFiled(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms, files := postgres.NewRoomStore(db), postgres.NewFileStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	subscribe(t, db, owner, webhook.RecordingReady)
	r := roomCreate(t, rooms, owner, "recorded")
	script := callScript()
	apply(t, rooms, callEvents(r, script, inOrder(len(script)))...)
	recordings := func() []callEvent {
		t.Helper()
		var out []callEvent
		for _, e := range callEventsOf(t, db, r.ID) {
			if e.Type == webhook.RecordingReady {
				out = append(out, e)
			}
		}
		return out
	}
	importAll := func(fail bool) {
		t.Helper()
		if _, err := files.ImportDueRecordings(t.Context(), 10, func(_ context.Context, ri file.RecordingImport) (file.File, file.Retry, error) {
			if fail {
				return file.File{}, file.Retry{}, errors.New("storage down")
			}
			return ri.File, file.Retry{}, nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	importAll(true)
	if got := recordings(); len(got) != 0 {
		t.Fatalf("after a failed copy: %+v, want no recording.ready", got)
	}
	if _, err := db.DB.ExecContext(t.Context(), `UPDATE recording_imports SET due_at = now()`); err != nil {
		t.Fatal(err)
	}
	importAll(false)
	importAll(false)
	got := recordings()
	if len(got) != 1 || got[0].Deliveries != 1 {
		t.Fatalf("after the import: %+v, want one recording.ready delivered once", got)
	}
	var d file.EventData
	if err := json.Unmarshal(got[0].Raw, &d); err != nil {
		t.Fatal(err)
	}
	if got[0].XMin != xminOf(t, db, "files", "id", d.FileID) {
		t.Errorf("recording.ready written by transaction %s, the file by another", got[0].XMin)
	}
	c, err := rooms.Call(t.Context(), r.ID, owner)
	if err != nil || len(c.Egresses) != 1 || len(c.Egresses[0].Files) != 1 {
		t.Fatalf("call = %+v, %v; want its one recording", c, err)
	}
	if d.FileID != c.Egresses[0].Files[0].FileID || d.ConversationID != r.ConversationID || d.CallID != r.ID.String() ||
		d.EgressID != "EG_1" || d.Filename != "EG_1.mp4" || d.ContentType != "video/mp4" || d.SizeBytes != 4096 ||
		d.Status != "ready" || d.CreatedAt.IsZero() {
		t.Errorf("recording.ready data = %+v", d)
	}
}

// An export stored READY writes export.ready in the same transaction; an
// upload does not, nor does an export whose row is refused.
func TestExportReadyWithItsFile(t *testing.T) {
	t.Parallel()
	fx := newFileFixture(t)
	subscribe(t, fx.db, fx.user, webhook.ExportReady)
	upload := fx.newFile(fx.conv.ID, file.StatusReady)
	if _, err := fx.files.CreateFile(t.Context(), upload, 0); err != nil {
		t.Fatal(err)
	}
	export := fx.newFile(fx.conv.ID, file.StatusReady)
	export.Kind, export.Filename, export.ContentType, export.SHA256 = file.KindExport, "chat.json", "application/json", strings.Repeat("ab", 32)
	created, err := fx.files.CreateFile(t.Context(), export, 0)
	if err != nil {
		t.Fatal(err)
	}
	orphan := export
	orphan.ID, orphan.ConversationID = uuid.New(), uuid.New()
	if _, err := fx.files.CreateFile(t.Context(), orphan, 0); !errors.Is(err, conversation.ErrNotFound) {
		t.Fatalf("export into no conversation: %v", err)
	}

	var got []string
	for _, e := range outboxEvents(t, fx.db) {
		got = append(got, e.Type)
		var d file.EventData
		if err := json.Unmarshal(e.Raw, &d); err != nil {
			t.Fatal(err)
		}
		if d.FileID != export.ID || d.ConversationID != fx.conv.ID || d.Filename != "chat.json" || d.ContentType != "application/json" ||
			d.SizeBytes != 3 || d.SHA256 != export.SHA256 || d.Status != "ready" || !d.CreatedAt.Equal(created.CreatedAt) || d.CallID != "" ||
			e.Deliveries != 1 {
			t.Errorf("%s data = %+v (%d deliveries)", e.Type, d, e.Deliveries)
		}
		if e.XMin != xminOf(t, fx.db, "files", "id", export.ID) {
			t.Errorf("%s written by transaction %s, the file by another", e.Type, e.XMin)
		}
	}
	if len(got) != 1 || got[0] != webhook.ExportReady {
		t.Fatalf("events = %v, want one export.ready", got)
	}
}

// A new or changed session report writes report.ready in the transaction
// that stores it; the same report again writes nothing.
func TestReportReadyWithItsReport(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	subscribe(t, db, owner, webhook.ReportReady)
	r := roomCreate(t, rooms, owner, "support")
	readies := func() []callEvent {
		var out []callEvent
		for _, e := range callEventsOf(t, db, r.ID) {
			if e.Type == webhook.ReportReady {
				out = append(out, e)
			}
		}
		return out
	}

	first := []byte(`{"job_id":"AJ_1","room_id":"RM_1"}`)
	if err := rooms.SaveReport(t.Context(), r.ID, first, derived(t, first), callAt(40)); err != nil {
		t.Fatal(err)
	}
	got := readies()
	if len(got) != 1 || got[0].XMin != xminOf(t, db, "calls", "room_id", r.ID) || got[0].Deliveries != 1 {
		t.Fatalf("after a report: %+v, want one report.ready written with it, for the owner's endpoint", got)
	}
	if err := rooms.SaveReport(t.Context(), r.ID, first, derived(t, first), callAt(41)); err != nil {
		t.Fatal(err)
	}
	if got := readies(); len(got) != 1 {
		t.Fatalf("the same report again: %d report.ready events, want still 1", len(got))
	}
	changed := []byte(`{"job_id":"AJ_2","room_id":"RM_1"}`)
	if err := rooms.SaveReport(t.Context(), r.ID, changed, derived(t, changed), callAt(42)); err != nil {
		t.Fatal(err)
	}
	if got := readies(); len(got) != 2 {
		t.Fatalf("a changed report: %d report.ready events, want 2", len(got))
	}
	if err := rooms.SaveReport(t.Context(), uuid.New(), first, derived(t, first), callAt(43)); !errors.Is(err, room.ErrNotFound) {
		t.Fatalf("report for no room = %v, want room.ErrNotFound", err)
	}
}
