package conversation

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// fakeSource is an in-memory conversation log that counts reads. It serves
// only the Store's reads the Hub makes.
type fakeSource struct {
	Store
	mu    sync.Mutex
	msgs  map[uuid.UUID][]Message
	reads int
}

func (f *fakeSource) append(id uuid.UUID, n int) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.msgs[id] = append(f.msgs[id], Message{ConversationID: id, Seq: int64(len(f.msgs[id]) + 1)})
	}
	return int64(len(f.msgs[id]))
}

func (f *fakeSource) NewMessages(_ context.Context, id uuid.UUID, after int64, limit int) ([]Message, int64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	all, ok := f.msgs[id]
	if !ok {
		return nil, 0, false, nil
	}
	rest := all[min(int(after), len(all)):]
	return append([]Message(nil), rest[:min(limit, len(rest))]...), int64(len(all)), true, nil
}

func (f *fakeSource) LastSeqs(_ context.Context, ids []uuid.UUID) (map[uuid.UUID]int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[uuid.UUID]int64{}
	for _, id := range ids {
		if all, ok := f.msgs[id]; ok {
			out[id] = int64(len(all))
		}
	}
	return out, nil
}

func (f *fakeSource) readCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHubReadsOncePerChange: however many watchers a conversation has, a change
// costs one read, and every watcher sees the shared messages.
func TestHubReadsOncePerChange(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	src := &fakeSource{msgs: map[uuid.UUID][]Message{id: nil}}
	h := NewHub(src, slog.New(slog.DiscardHandler))
	subs := make([]*subscription[Message], 1000)
	for i := range subs {
		subs[i] = h.subscribe(id, 0)
	}
	waitFor(t, "the new topic's first look", func() bool { return src.readCount() == 1 })

	h.Changed(id, src.append(id, 3))
	for i, s := range subs {
		select {
		case <-s.ready:
		case <-time.After(5 * time.Second):
			t.Fatalf("watcher %d not woken", i)
		}
		msgs, latest, gone := s.since(1)
		if gone || latest != 3 || len(msgs) != 2 || msgs[0].Seq != 2 {
			t.Fatalf("Since(1) = %v, %d, %v", msgs, latest, gone)
		}
	}
	if n := src.readCount(); n != 2 {
		t.Errorf("%d reads for 1000 watchers and one change, want 2 (first look + change)", n)
	}
	// A change to what was read already costs nothing.
	h.Changed(id, 3)
	h.Changed(id, 2)
	time.Sleep(20 * time.Millisecond)
	if n := src.readCount(); n != 2 {
		t.Errorf("stale changes caused reads: %d", n)
	}
	for _, s := range subs {
		s.close()
	}
	if h.Watched() != 0 {
		t.Errorf("Watched() = %d after all closed", h.Watched())
	}
}

// TestHubRecheckFindsLostChanges: with no change announced at all, Recheck finds new
// messages and deletions.
func TestHubRecheckFindsLostChanges(t *testing.T) {
	t.Parallel()
	a, b := uuid.New(), uuid.New()
	src := &fakeSource{msgs: map[uuid.UUID][]Message{a: nil, b: nil}}
	h := NewHub(src, slog.New(slog.DiscardHandler))
	sa, sb := h.subscribe(a, 0), h.subscribe(b, 0)
	defer sa.close()
	defer sb.close()
	src.append(a, 2)
	src.mu.Lock()
	delete(src.msgs, b)
	src.mu.Unlock()
	if err := h.Recheck(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the re-check's reads", func() bool {
		msgs, _, _ := sa.since(0)
		_, _, gone := sb.since(0)
		return len(msgs) == 2 && gone
	})
}

// TestHubBufferIsBounded: a watcher further behind than the buffer gets
// nothing from Since and reads the store itself.
func TestHubBufferIsBounded(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	src := &fakeSource{msgs: map[uuid.UUID][]Message{id: nil}}
	h := NewHub(src, slog.New(slog.DiscardHandler))
	s := h.subscribe(id, 0)
	defer s.close()
	h.Changed(id, src.append(id, 3*bufferMessages))
	waitFor(t, "all messages read", func() bool { _, latest, _ := s.since(0); return latest == 3*bufferMessages })
	if msgs, _, _ := s.since(0); len(msgs) != 0 {
		t.Errorf("Since(0) returned %d messages from a bounded buffer", len(msgs))
	}
	msgs, _, _ := s.since(3*bufferMessages - 10)
	if len(msgs) != 10 || msgs[0].Seq != 3*bufferMessages-9 {
		t.Errorf("Since(latest-10) = %d messages", len(msgs))
	}
}

// TestHubDropsWhatEveryWatcherRead: a topic keeps only the messages some
// watcher has not read yet.
func TestHubDropsWhatEveryWatcherRead(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	src := &fakeSource{msgs: map[uuid.UUID][]Message{id: nil}}
	h := NewHub(src, slog.New(slog.DiscardHandler))
	a, b := h.subscribe(id, 0), h.subscribe(id, 0)
	defer a.close()
	defer b.close()
	latest := func(s *subscription[Message], after, want int64) func() bool {
		return func() bool { _, l, _ := s.since(after); return l == want }
	}

	h.Changed(id, src.append(id, 3))
	waitFor(t, "seq 3", latest(a, 3, 3))
	if msgs, _, _ := b.since(1); len(msgs) != 2 {
		t.Fatalf("b.since(1) = %d messages, want 2", len(msgs))
	}
	// a has read 3 and b 1: only seq 1 is read by both.
	h.Changed(id, src.append(id, 2))
	waitFor(t, "seq 5", latest(b, 1, 5))
	if msgs, _, _ := b.since(0); len(msgs) != 0 {
		t.Errorf("seq 1, read by every watcher, still buffered: Since(0) = %d messages", len(msgs))
	}
	if msgs, _, _ := b.since(1); len(msgs) != 4 || msgs[0].Seq != 2 {
		t.Errorf("b.since(1) = %v, want seqs 2-5", msgs)
	}

	a.since(5)
	b.since(5)
	h.Changed(id, src.append(id, 1))
	waitFor(t, "seq 6", latest(a, 5, 6))
	if msgs, _, _ := a.since(4); len(msgs) != 0 {
		t.Errorf("seqs up to 5, read by every watcher, still buffered: Since(4) = %d messages", len(msgs))
	}
	if msgs, _, _ := a.since(5); len(msgs) != 1 || msgs[0].Seq != 6 {
		t.Errorf("a.since(5) = %v, want seq 6", msgs)
	}
}
