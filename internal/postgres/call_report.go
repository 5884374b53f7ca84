package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/webhook"
)

// saveReportSQL makes the call's row if no LiveKit event has yet (a report
// may beat the webhooks), taking the report's arrival as its last sign of
// life; an existing row keeps its own. It returns the row only when the
// stored report is new or changed, so a resent report announces nothing.
const saveReportSQL = `
INSERT INTO calls (room_id, last_seen_at, report, reported_at)
VALUES ($1, $2, $3::jsonb, $2)
ON CONFLICT (room_id) DO UPDATE SET report = EXCLUDED.report, reported_at = EXCLUDED.reported_at
 WHERE calls.report IS DISTINCT FROM EXCLUDED.report
RETURNING room_id`

// SaveReport implements room.Store. A new or changed report writes
// report.ready to the outbox and replaces the call's metrics in the same
// transaction; the same report again stores its metrics only if an older
// replica stored it without them.
func (s *RoomStore) SaveReport(ctx context.Context, id uuid.UUID, report []byte, m room.CallMetrics, at time.Time) (err error) {
	defer markUnavailable(&err)
	err = inTx(ctx, s.bun, "save report", func(ctx context.Context, tx bun.Tx) error {
		var saved uuid.UUID
		err := tx.Tx.QueryRowContext(ctx, saveReportSQL, id, at, string(report)).Scan(&saved)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return saveFigures(ctx, tx.Tx, id, &m, false, sql.NullTime{})
		case pgCode(err) == codeForeignKeyViolation:
			return room.ErrNotFound
		case err != nil:
			return fmt.Errorf("save report: %w", err)
		}
		if err := saveFigures(ctx, tx.Tx, id, &m, true, sql.NullTime{}); err != nil {
			return err
		}
		return enqueueCallEvent(ctx, tx.Tx, id, webhook.ReportReady, at)
	})
	return err
}
