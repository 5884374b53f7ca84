package room

import (
	"context"
	"log/slog"
	"time"
)

// eventRetention is how long applied webhook event ids are kept: LiveKit
// stops redelivering an event within minutes.
const eventRetention = 24 * time.Hour

// Prune forgets the applied LiveKit event ids older than a day, and logs
// what it did; it is the hourly job. Every replica runs it: the delete is
// idempotent, so replicas pruning at once do not clash.
func (s *Service) Prune(ctx context.Context) {
	n, err := s.store.PruneEvents(ctx, s.now().Add(-eventRetention))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn("prune webhook events", slog.String("error", err.Error()))
	case n > 0:
		s.log.Info("pruned webhook events", slog.Int64("count", n))
	}
}
