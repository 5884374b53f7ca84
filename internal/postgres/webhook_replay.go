package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/webhook"
)

const (
	// listWebhookEventsSQL lists events below the oldest transaction still
	// running: any event after them in (xid, id) order that is not yet
	// committed has a larger xid, so a cursor never passes it.
	// $1 user, $2 cursor xid, $3 cursor id, $4 limit.
	listWebhookEventsSQL = `SELECT id, user_id, type, payload, created_at, xid::text::bigint
  FROM webhook_events
 WHERE user_id = $1::uuid
   AND (xid, id) > ($2::bigint::text::xid8, $3::uuid)
   AND xid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY xid, id
 LIMIT $4`

	webhookEventOwnedSQL = `SELECT EXISTS (SELECT 1 FROM webhook_events WHERE id = $1::uuid AND user_id = $2::uuid)`

	webhookDeliveriesSQL = `SELECT d.endpoint_id, d.state, d.attempts, d.next_attempt_at, COALESCE(d.last_status, 0), COALESCE(d.last_error, ''), d.finished_at
  FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
 WHERE d.event_id = $1::uuid AND e.user_id = $2::uuid
 ORDER BY d.id`

	// redeliverWebhookSQL puts an event's parked deliveries back in their
	// endpoints' lines, due at $3, with the retry window and backoff
	// starting again there.
	redeliverWebhookSQL = `UPDATE webhook_deliveries d
   SET state = 1, next_attempt_at = $3::timestamptz, retry_since = $3::timestamptz, retry_base = d.attempts, finished_at = NULL
  FROM webhook_events e
 WHERE d.event_id = $1::uuid AND e.id = d.event_id AND e.user_id = $2::uuid AND d.state = 3`
)

const (
	// pruneWebhookEventsSQL deletes a batch of old events no delivery waits
	// on (their deliveries go with them); SKIP LOCKED leaves an event a
	// redelivery or another replica's prune holds to the next run.
	pruneWebhookEventsSQL = `DELETE FROM webhook_events WHERE id IN (
  SELECT e.id FROM webhook_events e
   WHERE e.created_at < $1::timestamptz
     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.state = 1)
   ORDER BY e.created_at
   LIMIT $2
     FOR UPDATE SKIP LOCKED)`
)

var _ webhook.EventStore = (*WebhookStore)(nil)

// PruneEvents implements webhook.EventStore.
func (s *WebhookStore) PruneEvents(ctx context.Context, before time.Time) (_ int64, err error) {
	defer markUnavailable(&err)
	return pruneInBatches(func() (int64, error) {
		res, err := s.db.ExecContext(ctx, pruneWebhookEventsSQL, before, PruneBatch)
		if err != nil {
			return 0, fmt.Errorf("prune webhook events: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("prune webhook events: %w", err)
		}
		return n, nil
	})
}

// Events implements webhook.EventStore.
func (s *WebhookStore) Events(ctx context.Context, userID uuid.UUID, after webhook.Cursor, limit int) (_ []webhook.ListedEvent, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, listWebhookEventsSQL, userID, after.XID, after.ID, limit)
	if err != nil {
		return nil, fmt.Errorf("list webhook events: %w", err)
	}
	defer rows.Close()
	var out []webhook.ListedEvent
	for rows.Next() {
		var l webhook.ListedEvent
		if err := rows.Scan(&l.ID, &l.UserID, &l.Type, &l.Payload, &l.CreatedAt, &l.Cursor.XID); err != nil {
			return nil, fmt.Errorf("list webhook events: %w", err)
		}
		l.Cursor.ID = l.ID
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook events: %w", err)
	}
	return out, nil
}

func (s *WebhookStore) eventOwned(ctx context.Context, userID, eventID uuid.UUID) error {
	var ok bool
	if err := s.db.QueryRowContext(ctx, webhookEventOwnedSQL, eventID, userID).Scan(&ok); err != nil {
		return fmt.Errorf("find webhook event: %w", err)
	}
	if !ok {
		return webhook.ErrEventNotFound
	}
	return nil
}

// Deliveries implements webhook.EventStore.
func (s *WebhookStore) Deliveries(ctx context.Context, userID, eventID uuid.UUID) (_ []webhook.DeliveryStatus, err error) {
	defer markUnavailable(&err)
	if err := s.eventOwned(ctx, userID, eventID); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, webhookDeliveriesSQL, eventID, userID)
	if err != nil {
		return nil, fmt.Errorf("list webhook deliveries: %w", err)
	}
	defer rows.Close()
	var out []webhook.DeliveryStatus
	for rows.Next() {
		var d webhook.DeliveryStatus
		var finished sql.NullTime
		if err := rows.Scan(&d.EndpointID, &d.State, &d.Attempts, &d.NextAttemptAt, &d.LastStatus, &d.LastError, &finished); err != nil {
			return nil, fmt.Errorf("list webhook deliveries: %w", err)
		}
		d.FinishedAt = finished.Time
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook deliveries: %w", err)
	}
	return out, nil
}

// Redeliver implements webhook.EventStore.
func (s *WebhookStore) Redeliver(ctx context.Context, userID, eventID uuid.UUID, now time.Time) (_ int, err error) {
	defer markUnavailable(&err)
	res, err := s.db.ExecContext(ctx, redeliverWebhookSQL, eventID, userID, now)
	if err != nil {
		return 0, fmt.Errorf("redeliver webhook event: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("redeliver webhook event: %w", err)
	}
	if n == 0 {
		if err := s.eventOwned(ctx, userID, eventID); err != nil {
			return 0, err
		}
	}
	return int(n), nil
}
