package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/room"
)

// saveReportSQL makes the call's row if no LiveKit event has yet (a report
// may beat the webhooks), taking the report's arrival as its last sign of
// life; an existing row keeps its own.
const saveReportSQL = `
INSERT INTO calls (room_id, last_seen_at, report, reported_at)
VALUES ($1, $2, $3::jsonb, $2)
ON CONFLICT (room_id) DO UPDATE SET report = EXCLUDED.report, reported_at = EXCLUDED.reported_at`

// SaveReport implements room.Store.
func (s *RoomStore) SaveReport(ctx context.Context, id uuid.UUID, report []byte, at time.Time) (err error) {
	defer markUnavailable(&err)
	if _, err := s.db.ExecContext(ctx, saveReportSQL, id, at, string(report)); err != nil {
		if pgCode(err) == codeForeignKeyViolation {
			return room.ErrNotFound
		}
		return fmt.Errorf("save report: %w", err)
	}
	return nil
}
