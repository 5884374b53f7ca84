package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

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

	webhookDeliveryColumns = `d.id, e.id, e.type, e.created_at, d.endpoint_id, d.state, d.attempts, d.next_attempt_at,
       COALESCE(d.last_status, 0), COALESCE(d.last_error, ''), d.finished_at
  FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id`

	webhookDeliveriesSQL = `SELECT ` + webhookDeliveryColumns + `
 WHERE d.event_id = $1::uuid AND e.user_id = $2::uuid
 ORDER BY d.id`

	// redeliverWebhookSQL puts an event's parked deliveries to enabled
	// endpoints back in their endpoints' lines, due at $3, with the retry
	// window and backoff starting again there. A redelivered delivery
	// becomes the head of its line, ahead of one a dispatcher may hold
	// right now; it is due only once that lease ends, so the endpoint
	// still gets one delivery at a time. The lease is read from the
	// endpoint's pending deliveries locked (see lockedLinesSQL), so a claim
	// leasing one right now is waited for and its lease seen.
	redeliverWebhookSQL = `WITH lines AS MATERIALIZED (` + lockedLinesSQL + `
   AND l.endpoint_id IN (SELECT x.endpoint_id FROM webhook_deliveries x JOIN webhook_events xe ON xe.id = x.event_id
                          WHERE x.event_id = $1::uuid AND xe.user_id = $2::uuid AND x.state = 3)
 ORDER BY l.locked_until IS NULL, l.id
   FOR UPDATE)
UPDATE webhook_deliveries d
   SET state = 1, retry_since = $3::timestamptz, retry_base = d.attempts, finished_at = NULL,
       next_attempt_at = GREATEST($3::timestamptz, (SELECT max(l.locked_until) FROM lines l WHERE l.endpoint_id = d.endpoint_id))
  FROM webhook_events e, webhook_endpoints p
 WHERE d.event_id = $1::uuid AND e.id = d.event_id AND e.user_id = $2::uuid AND d.state = 3
   AND p.id = d.endpoint_id AND p.disabled_at IS NULL`

	// lockedLinesSQL begins the lock of endpoints' pending deliveries that
	// a redelivery reads the lease in flight from. Under READ COMMITTED a
	// lock that waited for a claim's transaction returns the row as that
	// claim left it, with its lease; the statement's own snapshot may not
	// show it. Leased rows are locked first and by id, so that a
	// redelivery waiting for a finish that disables an endpoint (which
	// holds its leased delivery, then parks the endpoint's pending ones)
	// holds none of those it parks.
	lockedLinesSQL = `SELECT l.endpoint_id, l.locked_until FROM webhook_deliveries l WHERE l.state = 1`

	// Pages of an endpoint's deliveries in one state, in line order, along
	// webhook_deliveries_endpoint_state_idx. $1 endpoint, $2 state, $3 the
	// delivery id the page follows, $4 limit.
	endpointDeliveriesOldestSQL = `SELECT ` + webhookDeliveryColumns + `
 WHERE d.endpoint_id = $1::uuid AND d.state = $2::smallint AND d.id > $3::bigint
 ORDER BY d.id
 LIMIT $4`
	endpointDeliveriesNewestSQL = `SELECT ` + webhookDeliveryColumns + `
 WHERE d.endpoint_id = $1::uuid AND d.state = $2::smallint AND d.id < $3::bigint
 ORDER BY d.id DESC
 LIMIT $4`

	// lockWebhookEndpointSharedSQL holds the user's endpoint once its
	// parked deliveries are redelivered, so that a disable by a 410 (which
	// updates the row) waits, and then parks them again, or went first.
	// It is taken after the redelivery, whose locks wait for that disable
	// (see lockedLinesSQL): taken before, the two would wait on each other.
	lockWebhookEndpointSharedSQL = `SELECT disabled_at IS NOT NULL FROM webhook_endpoints WHERE id = $1::uuid AND user_id = $2::uuid FOR SHARE`

	// redeliverParkedWebhookSQL puts every parked delivery of endpoint $1
	// back in its line (they keep their ids, so their places), due at $2
	// with a new retry window and backoff, or, as in redeliverWebhookSQL,
	// once the lease of a delivery in flight ends.
	redeliverParkedWebhookSQL = `WITH lines AS MATERIALIZED (` + lockedLinesSQL + ` AND l.endpoint_id = $1::uuid
 ORDER BY l.locked_until IS NULL, l.id
   FOR UPDATE)
UPDATE webhook_deliveries d
   SET state = 1, retry_since = $2::timestamptz, retry_base = d.attempts, finished_at = NULL,
       next_attempt_at = GREATEST($2::timestamptz, (SELECT max(l.locked_until) FROM lines l))
 WHERE d.endpoint_id = $1::uuid AND d.state = 3`
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
		d, err := scanWebhookDelivery(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook deliveries: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook deliveries: %w", err)
	}
	return out, nil
}

func scanWebhookDelivery(rows *sql.Rows) (webhook.DeliveryStatus, error) {
	var d webhook.DeliveryStatus
	var finished sql.NullTime
	err := rows.Scan(&d.ID, &d.EventID, &d.EventType, &d.EventCreatedAt, &d.EndpointID, &d.State, &d.Attempts, &d.NextAttemptAt, &d.LastStatus, &d.LastError, &finished)
	d.FinishedAt = finished.Time
	return d, err
}

// EndpointDeliveries implements webhook.EventStore.
func (s *WebhookStore) EndpointDeliveries(ctx context.Context, userID uuid.UUID, r webhook.DeliveryRange) (_ []webhook.DeliveryStatus, err error) {
	defer markUnavailable(&err)
	if _, err := s.Endpoint(ctx, r.EndpointID, userID); err != nil {
		return nil, err
	}
	query, after := endpointDeliveriesOldestSQL, r.After
	if !r.OldestFirst {
		query = endpointDeliveriesNewestSQL
		if after == 0 {
			after = math.MaxInt64
		}
	}
	return readRows(ctx, s.db, "list webhook endpoint deliveries", r.Limit, scanWebhookDelivery, query, r.EndpointID, int(r.State), after, r.Limit)
}

// RedeliverParked implements webhook.EventStore.
func (s *WebhookStore) RedeliverParked(ctx context.Context, userID, endpointID uuid.UUID, now time.Time) (_ int, err error) {
	defer markUnavailable(&err)
	var n int64
	err = inTx(ctx, s.bun, "redeliver parked webhook deliveries", func(ctx context.Context, tx bun.Tx) error {
		var err error
		n, err = execCount(ctx, tx.Tx, redeliverParkedWebhookSQL, endpointID, now)
		if err != nil {
			return fmt.Errorf("redeliver parked webhook deliveries: %w", err)
		}
		// An error below rolls the redelivery back.
		var disabled bool
		err = tx.Tx.QueryRowContext(ctx, lockWebhookEndpointSharedSQL, endpointID, userID).Scan(&disabled)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return webhook.ErrNotFound
		case err != nil:
			return fmt.Errorf("lock webhook endpoint: %w", err)
		case disabled:
			return webhook.ErrEndpointDisabled
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// execCount runs a statement and returns how many rows it changed.
func execCount(ctx context.Context, tx *sql.Tx, query string, args ...any) (int64, error) {
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
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
