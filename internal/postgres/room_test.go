package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/migrations"
)

func roomSeedUser(t *testing.T, s *postgres.AccountStore, name string) uuid.UUID {
	t.Helper()
	u, err := s.CreateUser(t.Context(), account.User{ID: uuid.New(), Email: uuid.NewString() + "@example.com", DisplayName: name}, "$argon2id$stub")
	if err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	return u.ID
}

// roomCreate creates a room and gives it the sid "RM_" + its id, as
// LiveKit's answer to CreateRoom would.
func roomCreate(t *testing.T, s *postgres.RoomStore, owner uuid.UUID, name string) room.Room {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	r, err := s.CreateRoom(t.Context(), room.NewRoom{
		ID: id, Name: name, ConversationID: uuid.Must(uuid.NewV7()), LiveKitRoom: room.LiveKitRoomPrefix + id.String(), CreatedBy: owner,
	})
	if err != nil {
		t.Fatalf("CreateRoom: %v", err)
	}
	if r.LiveKitSID != "" {
		t.Fatalf("CreateRoom = %+v, want no sid before LiveKit answers", r)
	}
	r.LiveKitSID = "RM_" + id.String()
	if err := s.SetLiveKitSID(t.Context(), r.ID, r.LiveKitSID); err != nil {
		t.Fatal(err)
	}
	return r
}

// roomApply applies e, failing the test on an error.
func roomApply(t *testing.T, s *postgres.RoomStore, e room.Event) room.EventResult {
	t.Helper()
	res, err := s.ApplyEvent(t.Context(), e)
	if err != nil {
		t.Fatalf("ApplyEvent(%s %s): %v", e.Kind, e.ID, err)
	}
	return res
}

func TestRoomStoreCreateRoomWithConversation(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := t.Context()
	rooms, convs := postgres.NewRoomStore(db), postgres.NewConversationStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	other := roomSeedUser(t, postgres.NewAccountStore(db), "Bob")

	r := roomCreate(t, rooms, owner, "Stand-up")
	if r.Status != room.StatusActive || r.Name != "Stand-up" || r.CreatedBy != owner || r.CreatedAt.IsZero() || !r.EndedAt.IsZero() {
		t.Errorf("CreateRoom = %+v", r)
	}
	c, err := convs.GetConversation(ctx, r.ConversationID, conversation.Scope{UserID: owner})
	if err != nil {
		t.Fatalf("the room's conversation: %v", err)
	}
	if c.RoomID != r.ID || c.Title != "Stand-up" || c.UserID != owner {
		t.Errorf("conversation = %+v, want room %s, title Stand-up, owner %s", c, r.ID, owner)
	}

	if got, err := rooms.Room(ctx, r.ID, owner); err != nil || got != r {
		t.Errorf("Room = %+v, %v; want %+v", got, err, r)
	}
	if _, err := rooms.Room(ctx, r.ID, other); !errors.Is(err, room.ErrNotFound) {
		t.Errorf("Room by another user: %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		user uuid.UUID
		want bool
	}{{owner, true}, {other, false}} {
		if ok, err := rooms.RoomOwnedBy(ctx, r.ID, tc.user); err != nil || ok != tc.want {
			t.Errorf("RoomOwnedBy(%s) = %v, %v; want %v", tc.user, ok, err, tc.want)
		}
	}
	if name, err := rooms.DisplayName(ctx, owner); err != nil || name != "Ada" {
		t.Errorf("DisplayName = %q, %v", name, err)
	}

	// A deleted conversation leaves its room, without a conversation.
	if err := convs.DeleteConversation(ctx, c.ID, conversation.Scope{UserID: owner}); err != nil {
		t.Fatal(err)
	}
	if got, err := rooms.Room(ctx, r.ID, owner); err != nil || got.ConversationID != uuid.Nil {
		t.Errorf("Room after its conversation was deleted = %+v, %v", got, err)
	}
}

func TestRoomStoreCreateRoomForMissingUserLeavesNothing(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	ghost, convID, roomID := uuid.New(), uuid.New(), uuid.New()
	_, err := rooms.CreateRoom(t.Context(), room.NewRoom{ID: roomID, Name: "x", ConversationID: convID, LiveKitRoom: "parley-" + roomID.String(), CreatedBy: ghost})
	if !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("CreateRoom for a deleted user: %v, want ErrUnauthenticated", err)
	}
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT (SELECT count(*) FROM rooms) + (SELECT count(*) FROM conversations)").Scan(&n); err != nil || n != 0 {
		t.Errorf("rows left behind: %d, %v", n, err)
	}
}

func TestRoomStoreListRoomsKeyset(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	other := roomSeedUser(t, postgres.NewAccountStore(db), "Bob")
	var want []uuid.UUID
	for range 5 {
		want = append([]uuid.UUID{roomCreate(t, rooms, owner, "r").ID}, want...)
	}
	roomCreate(t, rooms, other, "not mine")

	var got []uuid.UUID
	var after *room.Cursor
	for {
		page, err := rooms.ListRooms(t.Context(), owner, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, r.ID)
		}
		if len(page) < 2 {
			break
		}
		last := page[len(page)-1]
		after = &room.Cursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	if len(got) != len(want) {
		t.Fatalf("ListRooms walked %d rooms, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("ListRooms order: got %v, want %v (newest first)", got, want)
			break
		}
	}
}

func TestRoomStoreEndRoomOnce(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	r := roomCreate(t, rooms, owner, "r")

	first := time.Now().UTC().Truncate(time.Microsecond)
	got, ended, err := rooms.EndRoom(t.Context(), r.ID, owner, first)
	if err != nil || !ended || got.Status != room.StatusEnded || !got.EndedAt.Equal(first) {
		t.Fatalf("EndRoom = %+v, %v, %v", got, ended, err)
	}
	again, ended, err := rooms.EndRoom(t.Context(), r.ID, owner, first.Add(time.Hour))
	if err != nil || ended || !again.EndedAt.Equal(first) {
		t.Errorf("second EndRoom = %+v, %v, %v; want unchanged, not ended again", again, ended, err)
	}
	if _, _, err := rooms.EndRoom(t.Context(), r.ID, uuid.New(), first); !errors.Is(err, room.ErrNotFound) {
		t.Errorf("EndRoom by another user: %v", err)
	}
}

func TestRoomStoreApplyEvent(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := t.Context()
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	r := roomCreate(t, rooms, owner, "r")
	at := func(sec int) time.Time { return time.Unix(1_900_000_000+int64(sec), 0).UTC() }
	apply := func(e room.Event) room.EventResult {
		t.Helper()
		e.LiveKitRoom = r.LiveKitRoom
		if e.RoomSID == "" {
			e.RoomSID = r.LiveKitSID
		}
		return roomApply(t, rooms, e)
	}

	// A leave delivered before its join: the session never shows present.
	alice := room.Participant{SessionID: "PA_1", Identity: owner.String(), Name: "Ada"}
	apply(room.Event{ID: "EV_left", Kind: room.EventParticipantLeft, At: at(20), Participant: alice})
	apply(room.Event{ID: "EV_joined", Kind: room.EventParticipantJoined, At: at(10), Participant: alice})
	// An ordinary session, joined and still there.
	agent := room.Participant{SessionID: "PA_2", Identity: "agent-1", Name: "Agent"}
	apply(room.Event{ID: "EV_joined2", Kind: room.EventParticipantJoined, At: at(11), Participant: agent})
	sessions, err := rooms.Sessions(ctx, r.ID)
	if err != nil || len(sessions) != 2 {
		t.Fatalf("Sessions = %+v, %v", sessions, err)
	}
	if s := sessions[0]; s.Present() || !s.JoinedAt.Equal(at(10)) || !s.LeftAt.Equal(at(20)) || s.Name != "Ada" {
		t.Errorf("session left before joined = %+v, present %v", s, s.Present())
	}
	if s := sessions[1]; !s.Present() {
		t.Errorf("joined session = %+v, want present", s)
	}

	if res := apply(room.Event{ID: "EV_started", Kind: room.EventRoomStarted, At: at(1)}); !res.Applied || res.Room.Ended() {
		t.Errorf("room_started = %+v", res)
	}
	res := apply(room.Event{ID: "EV_finished", Kind: room.EventRoomFinished, At: at(30)})
	if !res.Applied || !res.Room.Ended() || !res.Room.EndedAt.Equal(at(30)) {
		t.Errorf("room_finished = %+v, want the room ended at %v", res, at(30))
	}
	// The same event again, and a second room_finished: nothing changes.
	if res := apply(room.Event{ID: "EV_finished", Kind: room.EventRoomFinished, At: at(30)}); res.Applied {
		t.Errorf("redelivered room_finished applied again: %+v", res)
	}
	if res := apply(room.Event{ID: "EV_finished2", Kind: room.EventRoomFinished, At: at(40)}); !res.Room.EndedAt.Equal(at(30)) {
		t.Errorf("second room_finished moved ended_at: %+v", res)
	}
	// A late room_started does not reopen it.
	if res := apply(room.Event{ID: "EV_started2", Kind: room.EventRoomStarted, At: at(50)}); !res.Applied || !res.Room.Ended() {
		t.Errorf("room_started after room_finished = %+v, want still ended", res)
	}

	// Events about rooms Parley does not have are recorded and harmless.
	if res, err := rooms.ApplyEvent(ctx, room.Event{ID: "EV_other", Kind: room.EventRoomFinished, LiveKitRoom: "parley-nope", RoomSID: "RM_x"}); err != nil || res.Room.ID != uuid.Nil || res.Matched {
		t.Errorf("event for an unknown room = %+v, %v", res, err)
	}
}

// TestRoomStoreApplyEventMatchesNameAndSid: an event changes the room only
// under the room's name and sid; a room without a sid takes the one of its
// first room_started.
func TestRoomStoreApplyEventMatchesNameAndSid(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := t.Context()
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	r := roomCreate(t, rooms, owner, "r")
	apply := func(e room.Event) room.EventResult { return roomApply(t, rooms, e) }
	for _, sid := range []string{"", "RM_forged"} {
		res := apply(room.Event{ID: "EV_finished_" + sid, Kind: room.EventRoomFinished, LiveKitRoom: r.LiveKitRoom, RoomSID: sid})
		if !res.Applied || res.Matched || res.Room.ID != r.ID || res.Room.Ended() {
			t.Errorf("room_finished under sid %q = %+v, want applied, unmatched, the room still active", sid, res)
		}
		res = apply(room.Event{ID: "EV_joined_" + sid, Kind: room.EventParticipantJoined, LiveKitRoom: r.LiveKitRoom, RoomSID: sid,
			Participant: room.Participant{SessionID: "PA_" + sid, Identity: "mallory"}})
		if res.Matched {
			t.Errorf("participant_joined under sid %q matched", sid)
		}
	}
	if ss, err := rooms.Sessions(ctx, r.ID); err != nil || len(ss) != 0 {
		t.Errorf("sessions = %+v, %v; want none", ss, err)
	}
	rec := room.Recording{EgressID: "EG_1", BlobName: room.RecordingPrefix(r.LiveKitRoom) + "EG_1.mp4", Filename: "EG_1.mp4", ContentType: "video/mp4"}
	if res := apply(room.Event{ID: "EV_egress_forged", Kind: room.EventEgressEnded, LiveKitRoom: r.LiveKitRoom, RoomSID: "RM_forged", Recordings: []room.Recording{rec}}); res.Matched {
		t.Errorf("egress_ended under another sid matched")
	}
	var queued int
	if err := db.QueryRowContext(ctx, "SELECT (SELECT count(*) FROM recording_imports) + (SELECT count(*) FROM blob_deletions)").Scan(&queued); err != nil || queued != 0 {
		t.Errorf("egress_ended under another sid queued %d imports or deletions (%v)", queued, err)
	}
	// A room_started under another sid does not replace the room's.
	if res := apply(room.Event{ID: "EV_started_forged", Kind: room.EventRoomStarted, LiveKitRoom: r.LiveKitRoom, RoomSID: "RM_forged"}); res.Matched || res.Room.LiveKitSID != r.LiveKitSID {
		t.Errorf("room_started under another sid = %+v, want unmatched, sid kept", res)
	}

	// LiveKit was unreachable at creation: the first room_started names it.
	offline, err := rooms.CreateRoom(ctx, room.NewRoom{ID: uuid.New(), Name: "offline", ConversationID: uuid.New(), LiveKitRoom: "parley-" + uuid.NewString(), CreatedBy: owner})
	if err != nil {
		t.Fatal(err)
	}
	if res := apply(room.Event{ID: "EV_off_finished", Kind: room.EventRoomFinished, LiveKitRoom: offline.LiveKitRoom, RoomSID: "RM_first"}); res.Matched || res.Room.Ended() {
		t.Errorf("room_finished before any sid = %+v, want unmatched", res)
	}
	if res := apply(room.Event{ID: "EV_off_started_blank", Kind: room.EventRoomStarted, LiveKitRoom: offline.LiveKitRoom}); res.Matched || res.Room.LiveKitSID != "" {
		t.Errorf("room_started without a sid = %+v, want unmatched, no sid", res)
	}
	if res := apply(room.Event{ID: "EV_off_started", Kind: room.EventRoomStarted, LiveKitRoom: offline.LiveKitRoom, RoomSID: "RM_first"}); !res.Matched || res.Room.LiveKitSID != "RM_first" {
		t.Errorf("first room_started = %+v, want matched, sid RM_first", res)
	}
	if res := apply(room.Event{ID: "EV_off_started2", Kind: room.EventRoomStarted, LiveKitRoom: offline.LiveKitRoom, RoomSID: "RM_second"}); res.Matched || res.Room.LiveKitSID != "RM_first" {
		t.Errorf("second room_started = %+v, want unmatched, sid still RM_first", res)
	}
	if res := apply(room.Event{ID: "EV_off_finished2", Kind: room.EventRoomFinished, LiveKitRoom: offline.LiveKitRoom, RoomSID: "RM_first"}); !res.Matched || !res.Room.Ended() {
		t.Errorf("room_finished under the first sid = %+v, want the room ended", res)
	}
	// LiveKit's answer to CreateRoom, even when late, is the sid.
	if err := rooms.SetLiveKitSID(ctx, offline.ID, "RM_created"); err != nil {
		t.Fatal(err)
	}
	if got, err := rooms.Room(ctx, offline.ID, owner); err != nil || got.LiveKitSID != "RM_created" {
		t.Errorf("Room after SetLiveKitSID = %+v, %v", got, err)
	}
}

func TestRoomStoreApplyEventOnceAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testenv.DatabaseURL(t)
	// Two replicas: two pools on one database.
	open := func() (*postgres.RoomStore, *postgres.AccountStore) {
		db, err := postgres.Open(t.Context(), url, postgres.Options{MaxOpenConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return postgres.NewRoomStore(db), postgres.NewAccountStore(db)
	}
	first, accounts := open()
	second, _ := open()
	replicas := []*postgres.RoomStore{first, second}
	r := roomCreate(t, first, roomSeedUser(t, accounts, "Ada"), "r")

	for i := range 10 {
		e := room.Event{ID: uuid.NewString(), Kind: room.EventParticipantJoined, LiveKitRoom: r.LiveKitRoom, RoomSID: r.LiveKitSID,
			Participant: room.Participant{SessionID: fmt.Sprintf("PA_%d", i), Identity: "x"}}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			applied int
		)
		for _, s := range replicas {
			for range 2 {
				wg.Go(func() {
					res, err := s.ApplyEvent(t.Context(), e)
					if err != nil {
						t.Errorf("ApplyEvent: %v", err)
						return
					}
					if res.Applied {
						mu.Lock()
						applied++
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		if applied != 1 {
			t.Errorf("event %d delivered 4 times to 2 replicas was applied %d times, want 1", i, applied)
		}
	}
}

func TestRoomStoreEgressRecordings(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := t.Context()
	rooms, files := postgres.NewRoomStore(db), postgres.NewFileStore(db)
	accounts := postgres.NewAccountStore(db)
	owner := roomSeedUser(t, accounts, "Ada")
	egressEnded := func(id string, r room.Room, rec room.Recording) {
		t.Helper()
		if res, err := rooms.ApplyEvent(ctx, room.Event{ID: id, Kind: room.EventEgressEnded, LiveKitRoom: r.LiveKitRoom, RoomSID: r.LiveKitSID,
			Recordings: []room.Recording{rec}}); err != nil || (res.Applied && !res.Matched) {
			t.Fatalf("egress_ended = %+v, %v", res, err)
		}
	}
	recordingOf := func(r room.Room) room.Recording {
		return room.Recording{EgressID: "EG_1", BlobName: "recordings/" + r.ID.String() + ".mp4", Location: "https://x/c/recordings/a.mp4",
			Filename: r.ID.String() + ".mp4", SizeBytes: 1234, ContentType: "video/mp4"}
	}
	outbox := func() []string {
		t.Helper()
		var names []string
		if err := db.NewSelect().Table("blob_deletions").Column("blob_name").Order("blob_name").Scan(ctx, &names); err != nil {
			t.Fatal(err)
		}
		return names
	}
	// importAll runs the import outbox with a copy that always works.
	importAll := func() []file.RecordingImport {
		t.Helper()
		var seen []file.RecordingImport
		if _, err := files.ImportDueRecordings(ctx, 10, func(_ context.Context, ri file.RecordingImport) (file.File, file.Retry, error) {
			seen = append(seen, ri)
			f := ri.File
			f.SizeBytes = 4321 // what storage says, not what egress said
			return f, file.Retry{}, nil
		}); err != nil {
			t.Fatal(err)
		}
		return seen
	}

	// Queued once however often it is delivered, filed by the import.
	r := roomCreate(t, rooms, owner, "r")
	rec := recordingOf(r)
	for _, id := range []string{"EV_eg", "EV_eg", "EV_eg_again"} {
		egressEnded(id, r, rec)
	}
	if got, err := rooms.Recordings(ctx, r.ID); err != nil || len(got) != 0 {
		t.Fatalf("Recordings before the import = %+v, %v; want none", got, err)
	}
	seen := importAll()
	if len(seen) != 1 || seen[0].Source != rec.BlobName || seen[0].File.ConversationID != r.ConversationID ||
		seen[0].File.Kind != file.KindRecording || seen[0].File.Filename != rec.Filename || seen[0].File.SizeBytes != rec.SizeBytes {
		t.Fatalf("imports = %+v, want the one recording", seen)
	}
	got, err := rooms.Recordings(ctx, r.ID)
	if err != nil || len(got) != 1 {
		t.Fatalf("Recordings = %+v, %v; want one", got, err)
	}
	want := room.Recording{BlobName: seen[0].File.BlobName(), Filename: rec.Filename, SizeBytes: 4321, ContentType: rec.ContentType}
	if got[0] != want {
		t.Errorf("recording = %+v, want %+v", got[0], want)
	}
	stored, err := files.GetFile(ctx, seen[0].File.ID, conversation.Scope{UserID: owner})
	if err != nil || stored.Kind != file.KindRecording || stored.Status != file.StatusReady {
		t.Errorf("file = %+v, %v; want a READY recording", stored, err)
	}
	if got := outbox(); !slices.Equal(got, []string{rec.BlobName}) {
		t.Errorf("outbox = %v, want egress's original", got)
	}
	if again := importAll(); len(again) != 0 {
		t.Errorf("imported again: %+v", again)
	}

	// A conversation deleted before the import: no file, both blobs go.
	gone := roomCreate(t, rooms, owner, "gone")
	goneRec := recordingOf(gone)
	egressEnded("EV_gone", gone, goneRec)
	if err := postgres.NewConversationStore(db).DeleteConversation(ctx, gone.ConversationID, conversation.Scope{}); err != nil {
		t.Fatal(err)
	}
	seen = importAll()
	if len(seen) != 1 {
		t.Fatalf("imports = %+v", seen)
	}
	if got := outbox(); !slices.Contains(got, goneRec.BlobName) || !slices.Contains(got, seen[0].File.BlobName()) {
		t.Errorf("outbox = %v, want %s and %s", got, goneRec.BlobName, seen[0].File.BlobName())
	}
	// Egress finishing after the conversation's deletion: its blob goes.
	late := recordingOf(gone)
	late.BlobName += ".late"
	egressEnded("EV_late", gone, late)
	if seen := importAll(); len(seen) != 0 || !slices.Contains(outbox(), late.BlobName) {
		t.Errorf("imports %+v, outbox %v; want no import and %s queued", seen, outbox(), late.BlobName)
	}

	// A failed import is postponed, a hopeless one parked.
	failing := roomCreate(t, rooms, owner, "failing")
	egressEnded("EV_failing", failing, recordingOf(failing))
	for _, retry := range []file.Retry{{After: time.Millisecond}, {Park: true}} {
		time.Sleep(5 * time.Millisecond)
		n, err := files.ImportDueRecordings(ctx, 10, func(context.Context, file.RecordingImport) (file.File, file.Retry, error) {
			return file.File{}, retry, errors.New("storage says no")
		})
		if err != nil || n != 1 {
			t.Fatalf("ImportDueRecordings = %d, %v", n, err)
		}
	}
	var (
		attempts int
		parked   bool
		lastErr  string
	)
	if err := db.QueryRowContext(ctx, "SELECT attempts, parked_at IS NOT NULL, last_error FROM recording_imports").Scan(&attempts, &parked, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || !parked || lastErr != "storage says no" {
		t.Errorf("import: attempts %d, parked %v, last_error %q", attempts, parked, lastErr)
	}
	if seen := importAll(); len(seen) != 0 {
		t.Errorf("a parked import was taken again: %+v", seen)
	}
}

// TestRecordingImportMovesEarlierRecordings covers recordings an earlier
// release filed under egress's blob name, which the migration queued.
func TestRecordingImportMovesEarlierRecordings(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := t.Context()
	rooms, files := postgres.NewRoomStore(db), postgres.NewFileStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	var ids []uuid.UUID
	for i := range 2 {
		r := roomCreate(t, rooms, owner, "old")
		id, source := uuid.New(), fmt.Sprintf("recordings/old-%d.mp4", i)
		ids = append(ids, id)
		if _, err := db.ExecContext(ctx, `INSERT INTO files (id, conversation_id, blob_name, filename, content_type, size_bytes, kind, status)
VALUES (?, ?, ?, 'old.mp4', 'video/mp4', 10, 2, 2)`, id, r.ConversationID, source); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO recording_imports (file_id, conversation_id, source_name, filename, content_type, size_bytes, existing)
VALUES (?, ?, ?, 'old.mp4', 'video/mp4', 10, true)`, id, r.ConversationID, source); err != nil {
			t.Fatal(err)
		}
	}
	// The migration's backfill finds them (and them only), as it would
	// have at start-up; the rows are already queued, so it adds nothing.
	r := roomCreate(t, rooms, owner, "new")
	canonical := uuid.New()
	if _, err := db.ExecContext(ctx, `INSERT INTO files (id, conversation_id, blob_name, filename, content_type, size_bytes, kind, status)
VALUES (?, ?, ?, 'new.mp4', 'video/mp4', 10, 2, 2)`, canonical, r.ConversationID, file.BlobName(r.ConversationID, canonical)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM recording_imports"); err != nil {
		t.Fatal(err)
	}
	migration, err := fs.ReadFile(migrations.FS, "20261126000300_recording_imports.up.sql")
	if err != nil {
		t.Fatal(err)
	}
	_, backfill, ok := strings.Cut(string(migration), "\nINSERT INTO recording_imports")
	if !ok {
		t.Fatal("the migration has no backfill")
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO recording_imports"+backfill); err != nil {
		t.Fatal(err)
	}
	var queued []uuid.UUID
	if err := db.NewSelect().Table("recording_imports").Column("file_id").Where("existing").Order("file_id").Scan(ctx, &queued); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(queued, ids) {
		t.Fatalf("backfill queued %v, want %v", queued, ids)
	}

	// The second is deleted before its import: the trigger queued egress's
	// blob, and the import must not bring the row back.
	if err := files.DeleteFile(ctx, ids[1], conversation.Scope{}); err != nil {
		t.Fatal(err)
	}
	if _, err := files.ImportDueRecordings(ctx, 10, func(_ context.Context, ri file.RecordingImport) (file.File, file.Retry, error) {
		return ri.File, file.Retry{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var blobName string
	if err := db.QueryRowContext(ctx, "SELECT blob_name FROM files WHERE id = ?", ids[0]).Scan(&blobName); err != nil {
		t.Fatal(err)
	}
	moved, err := files.GetFile(ctx, ids[0], conversation.Scope{})
	if err != nil || blobName != moved.BlobName() {
		t.Errorf("moved row names %q, want %q (%v)", blobName, moved.BlobName(), err)
	}
	if _, err := files.GetFile(ctx, ids[1], conversation.Scope{}); !errors.Is(err, file.ErrNotFound) {
		t.Errorf("the deleted recording came back: %v", err)
	}
}

func TestRoomStorePruneEventsForgetsOnlyOldIDs(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := t.Context()
	rooms := postgres.NewRoomStore(db)
	owner := roomSeedUser(t, postgres.NewAccountStore(db), "Ada")
	r := roomCreate(t, rooms, owner, "r")
	ev := room.Event{ID: "EV_prune", Kind: room.EventRoomStarted, LiveKitRoom: r.LiveKitRoom, RoomSID: r.LiveKitSID, At: time.Now()}
	if res, err := rooms.ApplyEvent(ctx, ev); err != nil || !res.Applied {
		t.Fatalf("first delivery: %+v, %v", res, err)
	}
	if n, err := rooms.PruneEvents(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("pruning ids older than an hour removed %d (%v), want 0", n, err)
	}
	if res, err := rooms.ApplyEvent(ctx, ev); err != nil || res.Applied {
		t.Fatalf("redelivery before pruning: %+v, %v; want not applied", res, err)
	}
	if n, err := rooms.PruneEvents(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("pruning everything removed %d (%v), want 1", n, err)
	}
}
