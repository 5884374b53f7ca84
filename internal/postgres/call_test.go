package postgres_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/testenv"
)

// callAt is second sec of a call's life: LiveKit's event times are whole
// seconds.
func callAt(sec int) time.Time { return time.Unix(1_900_000_000+int64(sec), 0).UTC() }

var (
	callUser  = room.Participant{SessionID: "PA_user", Identity: "user-1", Name: "Ada", Kind: room.KindUser}
	callAgent = room.Participant{SessionID: "PA_agent", Identity: "agent-AJ_1", Name: "Agent", Kind: room.KindAgent}
)

// callScript is a whole call as LiveKit reports it, in the order it
// happened: a user and an agent join, publish audio, a recording runs, both
// leave and the room finishes. Events are templates: callEvents fills in
// the room, and the recording's blob name under the room's prefix.
func callScript() []room.Event {
	egress := func(id string, kind room.EventKind, st room.EgressStatus, sec int, ended bool) room.Event {
		e := room.Event{ID: id, Kind: kind, At: callAt(sec), EgressID: "EG_1",
			Egress: room.EgressState{Status: st, StartedAt: callAt(5), UpdatedAt: callAt(sec)}}
		if ended {
			e.Egress.EndedAt = callAt(sec)
			e.Recordings = []room.Recording{{EgressID: "EG_1", Filename: "EG_1.mp4", ContentType: "video/mp4", SizeBytes: 4096}}
		}
		return e
	}
	return []room.Event{
		{ID: "EV_started", Kind: room.EventRoomStarted, At: callAt(1)},
		{ID: "EV_user_joined", Kind: room.EventParticipantJoined, At: callAt(2), Participant: callUser},
		{ID: "EV_agent_joined", Kind: room.EventParticipantJoined, At: callAt(3), Participant: callAgent},
		{ID: "EV_user_track", Kind: room.EventTrackPublished, At: callAt(4), Participant: callUser,
			Track: room.Track{SID: "TR_user", Type: "audio", Source: "microphone"}},
		{ID: "EV_agent_track", Kind: room.EventTrackPublished, At: callAt(4), Participant: callAgent,
			Track: room.Track{SID: "TR_agent", Type: "audio", Source: "microphone"}},
		egress("EV_egress_started", room.EventEgressStarted, room.EgressStarting, 5, false),
		egress("EV_egress_active", room.EventEgressUpdated, room.EgressActive, 6, false),
		{ID: "EV_user_left", Kind: room.EventParticipantLeft, At: callAt(20), Participant: callUser},
		egress("EV_egress_ended", room.EventEgressEnded, room.EgressComplete, 21, true),
		{ID: "EV_agent_left", Kind: room.EventParticipantLeft, At: callAt(22), Participant: callAgent},
		{ID: "EV_finished", Kind: room.EventRoomFinished, At: callAt(23)},
	}
}

// callEvents returns the script's events numbered by idx (a permutation of
// them), with duplicates as given, for room r: event ids are made r's own,
// so rooms sharing the database do not share ids.
func callEvents(r room.Room, script []room.Event, idx []int) []room.Event {
	out := make([]room.Event, 0, len(idx))
	for _, i := range idx {
		e := script[i]
		e.ID = r.ID.String() + "/" + e.ID
		e.LiveKitRoom, e.RoomSID = r.LiveKitRoom, r.LiveKitSID
		if len(e.Recordings) > 0 {
			rec := e.Recordings[0]
			rec.BlobName = room.RecordingPrefix(r.LiveKitRoom) + rec.Filename
			e.Recordings = []room.Recording{rec}
		}
		out = append(out, e)
	}
	return out
}

// permutations calls f with every permutation of 0..n-1 (Heap's
// algorithm); f must not keep the slice.
func permutations(n int, f func([]int)) {
	a := make([]int, n)
	for i := range a {
		a[i] = i
	}
	c := make([]int, n)
	f(a)
	for i := 0; i < n; {
		if c[i] < i {
			if i%2 == 0 {
				a[0], a[i] = a[i], a[0]
			} else {
				a[c[i]], a[i] = a[i], a[c[i]]
			}
			f(a)
			c[i]++
			i = 0
		} else {
			c[i] = 0
			i++
		}
	}
}

// callShape compares calls of different rooms: what names the room is
// left out, and file ids (each room's conversation has its own files) are
// compared by presence.
var callShape = cmp.Options{
	cmpopts.IgnoreFields(room.Call{}, "ID", "RoomName", "ConversationID", "LiveKitRoom", "LiveKitSID", "CreatedAt", "CreatedBy"),
	cmp.Transformer("fileID", func(id uuid.UUID) bool { return id != uuid.Nil }),
	cmpopts.EquateEmpty(),
}

// callHarness makes rooms and plays event lists into them concurrently.
type callHarness struct {
	t     *testing.T
	db    *bun.DB
	rooms *postgres.RoomStore
	owner uuid.UUID
}

func newCallHarness(t *testing.T) *callHarness {
	db := testenv.DB(t)
	return &callHarness{t: t, db: db, rooms: postgres.NewRoomStore(db), owner: roomSeedUser(t, postgres.NewAccountStore(db), "Ada")}
}

// play applies each list of event indices of script to a room of its own
// and returns the rooms' calls, in the lists' order.
func (h *callHarness) play(script []room.Event, lists [][]int) []room.Call {
	h.t.Helper()
	calls := make([]room.Call, len(lists))
	errs := make([]error, len(lists))
	rs := make([]room.Room, len(lists))
	for i := range lists {
		rs[i] = roomCreate(h.t, h.rooms, h.owner, fmt.Sprint("call ", i))
	}
	var wg sync.WaitGroup
	work := make(chan int)
	for range 4 {
		wg.Go(func() {
			for i := range work {
				for _, e := range callEvents(rs[i], script, lists[i]) {
					if _, err := h.rooms.ApplyEvent(h.t.Context(), e); err != nil {
						errs[i] = fmt.Errorf("apply %s: %w", e.ID, err)
						break
					}
				}
				if errs[i] == nil {
					calls[i], errs[i] = h.rooms.Call(h.t.Context(), rs[i].ID, h.owner)
				}
			}
		})
	}
	for i := range lists {
		work <- i
	}
	close(work)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			h.t.Fatalf("events %v: %v", lists[i], err)
		}
	}
	return calls
}

func inOrder(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// TestCallConvergesWholeScript checks the record of the whole call played
// in order, field by field against the script.
func TestCallConvergesWholeScript(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	script := callScript()
	got := h.play(script, [][]int{inOrder(len(script))})[0]
	if got.Status != room.CallEnded || got.EndReason != room.EndRoomFinished || !got.StartedAt.Equal(callAt(1)) ||
		!got.EndedAt.Equal(callAt(23)) || !got.LastSeenAt.Equal(callAt(23)) || got.Report != nil {
		t.Errorf("call = %+v", got)
	}
	want := []room.CallParticipant{
		{Session: room.Session{Participant: callUser, JoinedAt: callAt(2), LeftAt: callAt(20)},
			Tracks: []room.Track{{SID: "TR_user", Type: "audio", Source: "microphone", PublishedAt: callAt(4)}}},
		{Session: room.Session{Participant: callAgent, JoinedAt: callAt(3), LeftAt: callAt(22)},
			Tracks: []room.Track{{SID: "TR_agent", Type: "audio", Source: "microphone", PublishedAt: callAt(4)}}},
	}
	if diff := cmp.Diff(want, got.Participants); diff != "" {
		t.Errorf("participants (-want +got):\n%s", diff)
	}
	if len(got.Egresses) != 1 {
		t.Fatalf("egresses = %+v", got.Egresses)
	}
	eg := got.Egresses[0]
	if eg.ID != "EG_1" || eg.Status != room.EgressComplete || !eg.StartedAt.Equal(callAt(5)) || !eg.EndedAt.Equal(callAt(21)) ||
		len(eg.Files) != 1 || eg.Files[0].FileID == uuid.Nil || eg.Files[0].Filename != "EG_1.mp4" || eg.Files[0].SizeBytes != 4096 {
		t.Errorf("egress = %+v", eg)
	}
}

// TestCallConvergesEveryOrder plays every permutation of a six-event call
// (a join and leave each, the room's start and finish, a recording's start
// and end: 720 orders) and checks each gives the in-order record.
func TestCallConvergesEveryOrder(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	full := callScript()
	script := []room.Event{full[0], full[1], full[5], full[7], full[8], full[10]}
	var lists [][]int
	permutations(len(script), func(p []int) { lists = append(lists, append([]int(nil), p...)) })
	if len(lists) != 720 {
		t.Fatalf("%d permutations, want 720", len(lists))
	}
	calls := h.play(script, lists)
	want := calls[0]
	if want.Status != room.CallEnded || len(want.Participants) != 1 || len(want.Egresses) != 1 || len(want.Egresses[0].Files) != 1 {
		t.Fatalf("in-order call = %+v", want)
	}
	for i, got := range calls[1:] {
		if diff := cmp.Diff(want, got, callShape); diff != "" {
			t.Fatalf("order %v (-in order +this order):\n%s", lists[i+1], diff)
		}
	}
}

// TestCallConvergesShuffledWithDuplicates plays the whole eleven-event call
// in 200 seeded random orders, each with some events delivered two or
// three times, and checks each gives the in-order record.
func TestCallConvergesShuffledWithDuplicates(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	script := callScript()
	rng := rand.New(rand.NewPCG(16, 3))
	lists := [][]int{inOrder(len(script))}
	for range 200 {
		idx := inOrder(len(script))
		for range rng.IntN(6) {
			idx = append(idx, rng.IntN(len(script)))
		}
		rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
		lists = append(lists, idx)
	}
	calls := h.play(script, lists)
	for i, got := range calls[1:] {
		if diff := cmp.Diff(calls[0], got, callShape); diff != "" {
			t.Fatalf("order %v (-in order +this order):\n%s", lists[i+1], diff)
		}
	}
}

// TestCallConvergesWithMissingEvents drops each event of the call in turn
// and plays the rest forwards and backwards: both orders agree, and what is
// known still shows (no room_started: the first join starts the call; no
// room_finished: still live; no join: the leave is recorded).
func TestCallConvergesWithMissingEvents(t *testing.T) {
	t.Parallel()
	h := newCallHarness(t)
	script := callScript()
	var lists [][]int
	for drop := range script {
		var fwd, back []int
		for i := range script {
			if i != drop {
				fwd = append(fwd, i)
				back = append([]int{i}, back...)
			}
		}
		lists = append(lists, fwd, back)
	}
	calls := h.play(script, lists)
	for drop := range script {
		fwd, back := calls[2*drop], calls[2*drop+1]
		if diff := cmp.Diff(fwd, back, callShape); diff != "" {
			t.Errorf("without %s, backwards differs (-forwards +backwards):\n%s", script[drop].ID, diff)
		}
		switch script[drop].ID {
		case "EV_started":
			if fwd.Status != room.CallEnded || !fwd.StartedAt.Equal(callAt(2)) {
				t.Errorf("without room_started: %+v, want started at the first join", fwd)
			}
		case "EV_finished":
			if fwd.Status != room.CallLive || fwd.EndReason != room.EndNone || !fwd.EndedAt.IsZero() || !fwd.LastSeenAt.Equal(callAt(22)) {
				t.Errorf("without room_finished: %+v, want live, last seen at the last leave", fwd)
			}
		case "EV_user_joined":
			p := fwd.Participants[len(fwd.Participants)-1]
			if p.SessionID != callUser.SessionID || !p.JoinedAt.IsZero() || !p.LeftAt.Equal(callAt(20)) || p.Kind != room.KindUser || len(p.Tracks) != 1 {
				t.Errorf("without the user's join: %+v", fwd.Participants)
			}
		case "EV_egress_ended":
			if eg := fwd.Egresses; len(eg) != 1 || eg[0].Status != room.EgressActive || len(eg[0].Files) != 0 {
				t.Errorf("without egress_ended: %+v", eg)
			}
		default:
			if fwd.Status != room.CallEnded {
				t.Errorf("without %s: %+v, want ended", script[drop].ID, fwd)
			}
		}
	}
}
