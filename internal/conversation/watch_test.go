package conversation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/testenv"
)

// collect reads from w until it has n messages, failing after timeout.
func collect(t testing.TB, w *conversation.Watch, n int, timeout time.Duration) []conversation.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var got []conversation.Message
	for len(got) < n {
		msgs, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %v: %v", seqsOf(got), err)
		}
		got = append(got, msgs...)
		if len(msgs) > 0 {
			continue
		}
		select {
		case <-w.Ready():
		case <-ctx.Done():
			t.Fatalf("timed out with seqs %v, want %d messages", seqsOf(got), n)
		}
	}
	return got
}

func TestWatchAcrossReplicas(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 3, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	for range 150 { // more than one internal page of catch-up
		saveTurn(t, rs[1], owner, c.ID, "", "u", "a")
	}
	w, err := rs[0].svc.WatchMessages(t.Context(), owner, c.ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	late, err := rs[0].svc.WatchMessages(t.Context(), agent, c.ID, 300)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()

	go func() {
		for i := range 20 {
			saveTurn(t, rs[1+i%2], agent, c.ID, fmt.Sprint("t", i), fmt.Sprint("u", i), fmt.Sprint("a", i))
		}
	}()
	got := collect(t, w, 330, 10*time.Second)
	if !slices.Equal(seqsOf(got), oneTo(340)[10:]) {
		t.Fatalf("watch seqs = %v", seqsOf(got))
	}
	if got[len(got)-1].Content != "a19" || got[len(got)-2].Content != "u19" {
		t.Errorf("last messages = %+v", got[len(got)-2:])
	}
	if got := collect(t, late, 40, 10*time.Second); !slices.Equal(seqsOf(got), oneTo(340)[300:]) {
		t.Fatalf("late watch seqs = %v", seqsOf(got))
	}
}

// TestWatchAcrossValkeyRestart loses the Valkey channel for a while: the periodic
// re-check and the re-check after resubscribing fill in from PostgreSQL.
func TestWatchAcrossValkeyRestart(t *testing.T) {
	t.Parallel()
	v := testenv.NewValkey(t)
	rs := newReplicas(t, 3, v.URL())
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	w, err := rs[0].svc.WatchMessages(t.Context(), owner, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	want := 0
	save := func(n int) {
		for i := range n {
			saveTurn(t, rs[1+i%2], agent, c.ID, "", "u", "a")
		}
		want += 2 * n
	}
	var got []conversation.Message
	save(5)
	got = append(got, collect(t, w, want-len(got), 5*time.Second)...)
	v.Stop()
	save(5)
	got = append(got, collect(t, w, want-len(got), 5*time.Second)...)
	v.Start()
	save(5)
	got = append(got, collect(t, w, want-len(got), 5*time.Second)...)
	if !slices.Equal(seqsOf(got), oneTo(30)) {
		t.Fatalf("seqs = %v", seqsOf(got))
	}
	// Nothing more, nothing twice.
	if more, err := w.Next(t.Context()); err != nil || len(more) != 0 {
		t.Errorf("extra messages %v, %v", seqsOf(more), err)
	}
}

func TestWatchEndsWhenDeleted(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 2, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	saveTurn(t, rs[0], owner, c.ID, "", "u", "")
	w, err := rs[0].svc.WatchMessages(t.Context(), owner, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	collect(t, w, 1, 5*time.Second)
	if err := rs[1].svc.DeleteConversation(t.Context(), owner, c.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for {
		_, err := w.Next(ctx)
		if errors.Is(err, conversation.ErrNotFound) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.Ready():
		case <-ctx.Done():
			t.Fatal("watch did not end after the conversation was deleted")
		}
	}
}

// TestWatchManyWatchersShareReads puts many watchers on one conversation and
// checks each gets every message once.
func TestWatchManyWatchersShareReads(t *testing.T) {
	t.Parallel()
	rs := newReplicas(t, 2, "")
	owner := seedUser(t, rs[0].db)
	c := create(t, rs[0], owner)
	const watchers = 200
	ws := make([]*conversation.Watch, watchers)
	for i := range ws {
		w, err := rs[0].svc.WatchMessages(t.Context(), owner, c.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		ws[i] = w
	}
	if n := rs[0].hub.Watched(); n != 1 {
		t.Errorf("hub follows %d conversations, want 1", n)
	}
	for range 10 {
		saveTurn(t, rs[1], owner, c.ID, "", "u", "a")
	}
	for i, w := range ws {
		if got := collect(t, w, 20, 10*time.Second); !slices.Equal(seqsOf(got), oneTo(20)) {
			t.Fatalf("watcher %d: %v", i, seqsOf(got))
		}
	}
	for _, w := range ws {
		w.Close()
	}
	if n := rs[0].hub.Watched(); n != 0 {
		t.Errorf("hub follows %d conversations after every watch closed", n)
	}
}

// sessionsFunc is a conversation.Sessions answering with a function.
type sessionsFunc func(ctx context.Context, p auth.Principal) error

func (f sessionsFunc) CheckRevoked(ctx context.Context, p auth.Principal) error { return f(ctx, p) }

// TestWatchEndsWhenItMust: the watch, not its transport, decides that a
// stream ends when the token expires, when Sessions reports it revoked (a
// failed check lets it go on) and when the replica drains; Due says when
// the first two must be looked at.
func TestWatchEndsWhenItMust(t *testing.T) {
	t.Parallel()
	r := newReplicas(t, 1, "")[0]
	owner := seedUser(t, r.db)
	c := create(t, r, owner)
	var answer atomic.Pointer[error]
	set := func(err error) { answer.Store(&err) }
	set(nil)
	svc := conversation.NewService(r.store, conversation.Options{Hub: r.hub, SessionCheck: 20 * time.Millisecond,
		Sessions: sessionsFunc(func(context.Context, auth.Principal) error { return *answer.Load() })})
	next := func(w *conversation.Watch) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		for {
			if _, err := w.Next(ctx); err != nil {
				return err
			}
			timer := time.NewTimer(time.Until(w.Due()))
			select {
			case <-w.Ready():
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
			timer.Stop()
		}
	}

	p := owner
	p.ExpiresAt = time.Now().Add(100 * time.Millisecond)
	w, err := svc.WatchMessages(t.Context(), p, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := w.Due(); d.After(p.ExpiresAt) || time.Until(d) > 20*time.Millisecond {
		t.Errorf("Due() = %v, want the next session check", d)
	}
	set(errors.New("valkey down"))
	if err := next(w); !errors.Is(err, conversation.ErrTokenExpired) {
		t.Errorf("Next after expiry = %v, want ErrTokenExpired (a failed check goes on)", err)
	}
	w.Close()

	w, err = svc.WatchMessages(t.Context(), owner, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	set(fmt.Errorf("%w: token revoked", auth.ErrUnauthenticated))
	if err := next(w); !errors.Is(err, conversation.ErrTokenRevoked) {
		t.Errorf("Next after revocation = %v, want ErrTokenRevoked", err)
	}
	w.Close()

	set(nil)
	w, err = svc.WatchMessages(t.Context(), owner, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	go func() { time.Sleep(50 * time.Millisecond); r.hub.Drain() }()
	if err := next(w); !errors.Is(err, conversation.ErrDraining) {
		t.Errorf("Next after drain = %v, want ErrDraining", err)
	}
}
