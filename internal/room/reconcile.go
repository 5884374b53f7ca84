package room

import (
	"context"
	"log/slog"
	"time"

	"github.com/google/uuid"
)

const (
	// reconcileBatch is how many open calls one ListRooms asks about.
	reconcileBatch = 100
	// reconcileGrace keeps the job from closing a call on a listing older
	// than an event it has not yet seen: only calls last seen this long
	// before the listing are closed. LiveKit's event times are whole
	// seconds from its own clock.
	reconcileGrace = 2 * time.Minute
)

// Reconcile closes the live calls whose room LiveKit no longer lists
// (their room_finished was lost), and records a sighting of those it
// lists; it is the job the wiring runs every minute or so. While LiveKit
// cannot be asked, calls unheard of for MaxCallSilence are closed as stale,
// so that no call stays live forever. Every replica may run it: each step is
// idempotent and a call is closed only if not seen since the listing.
func (s *Service) Reconcile(ctx context.Context) {
	var closed, stale int
	for after := uuid.Nil; ; {
		open, err := s.store.OpenCalls(ctx, after, reconcileBatch)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("reconcile calls: open calls", slog.String("error", err.Error()))
			}
			return
		}
		if len(open) == 0 {
			break
		}
		after = open[len(open)-1].ID
		c, st, err := s.reconcile(ctx, open)
		closed, stale = closed+c, stale+st
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("reconcile calls", slog.String("error", err.Error()))
			}
			return
		}
		if len(open) < reconcileBatch {
			break
		}
	}
	if closed+stale > 0 {
		s.log.Info("reconciled calls", slog.Int("gone", closed), slog.Int("stale", stale))
	}
}

// reconcile checks one batch of open calls against LiveKit's listing.
func (s *Service) reconcile(ctx context.Context, open []OpenCall) (gone, stale int, err error) {
	names := make([]string, len(open))
	for i, c := range open {
		names[i] = c.LiveKitRoom
	}
	listedAt := s.now()
	live, err := s.lk.ListRooms(ctx, names)
	if err != nil {
		s.log.Warn("reconcile calls: livekit list rooms", slog.String("error", err.Error()))
		ids := make([]uuid.UUID, len(open))
		for i, c := range open {
			ids[i] = c.ID
		}
		closed, err := s.store.CloseCalls(ctx, ids, EndStale, listedAt.Add(-MaxCallSilence), listedAt)
		return 0, len(closed), err
	}
	sids := make(map[string]string, len(live))
	for _, r := range live {
		sids[r.Name] = r.SID
	}
	var seen, missing []uuid.UUID
	rooms := make(map[uuid.UUID]string, len(open))
	for _, c := range open {
		rooms[c.ID] = c.LiveKitRoom
		// A room listed under another sid is a new LiveKit life of the
		// name (a stale join token re-created it): this call's is over.
		if sid, ok := sids[c.LiveKitRoom]; ok && sid == c.LiveKitSID {
			seen = append(seen, c.ID)
		} else {
			missing = append(missing, c.ID)
		}
	}
	if len(seen) > 0 {
		if err := s.store.SeeCalls(ctx, seen, listedAt); err != nil {
			return 0, 0, err
		}
	}
	if len(missing) > 0 {
		closed, err := s.store.CloseCalls(ctx, missing, EndRoomGone, listedAt.Add(-reconcileGrace), s.now())
		if err != nil {
			return 0, 0, err
		}
		for _, id := range closed {
			s.deleteLater(rooms[id])
		}
		gone = len(closed)
	}
	return gone, 0, nil
}
