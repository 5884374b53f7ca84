package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/webhook"
)

const (
	insertWebhookEventSQL = `INSERT INTO webhook_events (id, user_id, type, payload, created_at)
VALUES ($1::uuid, $2::uuid, $3::text, $4::bytea, $5::timestamptz)`

	// One delivery per endpoint of the user that takes the event's type;
	// a disabled endpoint's is recorded parked, never attempted, until it
	// is enabled. (One racing the disable is written pending; the claim
	// passes over it until then.)
	insertWebhookDeliveriesSQL = `INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, state, finished_at, last_error)
SELECT $1::uuid, id, $4::timestamptz,
       CASE WHEN disabled_at IS NULL THEN 1 ELSE 3 END,
       CASE WHEN disabled_at IS NULL THEN NULL ELSE $4::timestamptz END,
       CASE WHEN disabled_at IS NULL THEN NULL ELSE '` + parkedDisabled + `' END
  FROM webhook_endpoints
 WHERE user_id = $2::uuid AND $3::text = ANY (event_types)
 ORDER BY id`

	// claimWebhookDeliveriesSQL leases, until $2 + $3 seconds, up to $1
	// heads of endpoints' lines (each endpoint's oldest pending delivery)
	// that are due at $2 and not leased. The heads are found by walking the
	// pending index from endpoint to endpoint (one probe each), so a long
	// backlog behind a failing endpoint costs a claim nothing. The due and
	// lease conditions sit with FOR UPDATE, so a row another dispatcher
	// claimed meanwhile is re-checked on its new version and left out; SKIP
	// LOCKED passes over one being claimed right now. A disabled endpoint's
	// head is passed over (its line waits for EnableEndpoint).
	// $1 limit, $2 now, $3 lease seconds.
	claimWebhookDeliveriesSQL = `WITH RECURSIVE heads (endpoint_id, id) AS (
    (SELECT endpoint_id, id FROM webhook_deliveries WHERE state = 1 ORDER BY endpoint_id, id LIMIT 1)
  UNION ALL
    SELECT n.endpoint_id, n.id FROM heads h, LATERAL (
      SELECT endpoint_id, id FROM webhook_deliveries
       WHERE state = 1 AND endpoint_id > h.endpoint_id
       ORDER BY endpoint_id, id LIMIT 1) n
)
UPDATE webhook_deliveries d
   SET locked_until = $2::timestamptz + make_interval(secs => $3::float8), attempts = d.attempts + 1
  FROM (SELECT id FROM webhook_deliveries
         WHERE id IN (SELECT id FROM heads)
           AND state = 1 AND next_attempt_at <= $2::timestamptz
           AND (locked_until IS NULL OR locked_until <= $2::timestamptz)
           AND NOT EXISTS (SELECT 1 FROM webhook_endpoints x WHERE x.id = webhook_deliveries.endpoint_id AND x.disabled_at IS NOT NULL)
         ORDER BY next_attempt_at, id
         LIMIT $1
         FOR UPDATE SKIP LOCKED) due, webhook_events e, webhook_endpoints p
 WHERE d.id = due.id AND e.id = d.event_id AND p.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, p.url, d.attempts, COALESCE(d.retry_since, e.created_at), d.attempts - d.retry_base,
          e.id, e.user_id, e.type, e.payload, e.created_at`

	// finishWebhookDeliverySQL records an attempt's outcome if no later
	// claim replaced its lease (attempts counts claims).
	// $1 id, $2 attempt, $3 state, $4 next attempt, $5 status (0: none), $6 error, $7 at.
	finishWebhookDeliverySQL = `UPDATE webhook_deliveries
   SET state = $3::smallint, next_attempt_at = $4::timestamptz, locked_until = NULL,
       last_status = NULLIF($5::integer, 0), last_error = NULLIF($6::text, ''),
       finished_at = CASE WHEN $3::smallint = 1 THEN NULL ELSE $7::timestamptz END
 WHERE id = $1::bigint AND attempts = $2::integer AND state = 1`

	// lockLeasedWebhookDeliverySQL finds a delivery if its lease is still
	// the latest claim ($1 id, $2 attempt), and holds it.
	lockLeasedWebhookDeliverySQL = `SELECT 1 FROM webhook_deliveries WHERE id = $1::bigint AND attempts = $2::integer AND state = 1 FOR UPDATE`

	// disableWebhookEndpointSQL disables an endpoint that answered 410
	// Gone (the first such answer's reason stays). $1 endpoint, $2 at,
	// $3 reason.
	disableWebhookEndpointSQL = `UPDATE webhook_endpoints SET disabled_at = COALESCE(disabled_at, $2::timestamptz),
       disabled_reason = COALESCE(disabled_reason, $3::text)
 WHERE id = $1::uuid`

	// parkWebhookEndpointSQL parks a disabled endpoint's pending
	// deliveries; a late outcome of one still leased is then dropped.
	parkWebhookEndpointSQL = `UPDATE webhook_deliveries
   SET state = 3, locked_until = NULL, finished_at = $2::timestamptz, last_error = '` + parkedDisabled + `'
 WHERE endpoint_id = $1::uuid AND state = 1`

	// parkedDisabled is the last_error of a delivery parked because
	// its endpoint was disabled.
	parkedDisabled = `parked: the endpoint is disabled`
)

// Delivery states, as webhook_deliveries.state stores them.
const (
	webhookPending   = 1
	webhookDelivered = 2
	webhookParked    = 3
)

var _ webhook.Outbox = (*WebhookStore)(nil)

// enqueueWebhookEvent writes ev and its deliveries in tx: every store whose
// change causes an event calls it inside that change's transaction, so the
// event exists exactly when the change does.
func enqueueWebhookEvent(ctx context.Context, tx *sql.Tx, ev webhook.Event) error {
	if _, err := tx.ExecContext(ctx, insertWebhookEventSQL, ev.ID, ev.UserID, ev.Type, ev.Payload, ev.CreatedAt); err != nil {
		return fmt.Errorf("insert webhook event: %w", err)
	}
	if _, err := tx.ExecContext(ctx, insertWebhookDeliveriesSQL, ev.ID, ev.UserID, ev.Type, ev.CreatedAt); err != nil {
		return fmt.Errorf("insert webhook deliveries: %w", err)
	}
	return nil
}

// Publish writes ev and its deliveries in a transaction of their own, for
// an event whose cause is no change of Parley's database.
func (s *WebhookStore) Publish(ctx context.Context, ev webhook.Event) (err error) {
	defer markUnavailable(&err)
	return inTx(ctx, s.bun, "publish webhook event", func(ctx context.Context, tx bun.Tx) error {
		return enqueueWebhookEvent(ctx, tx.Tx, ev)
	})
}

// ClaimDeliveries implements webhook.Outbox.
func (s *WebhookStore) ClaimDeliveries(ctx context.Context, now time.Time, limit int, lease time.Duration) (_ []webhook.Delivery, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, claimWebhookDeliveriesSQL, limit, now, lease.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	defer rows.Close()
	var out []webhook.Delivery
	for rows.Next() {
		var d webhook.Delivery
		if err := rows.Scan(&d.ID, &d.EndpointID, &d.URL, &d.Attempt, &d.RetrySince, &d.RetryAttempt, &d.Event.ID, &d.Event.UserID, &d.Event.Type, &d.Event.Payload, &d.Event.CreatedAt); err != nil {
			return nil, fmt.Errorf("claim webhook deliveries: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	return out, nil
}

// FinishDelivery implements webhook.Outbox.
func (s *WebhookStore) FinishDelivery(ctx context.Context, d webhook.Delivery, o webhook.Outcome) (err error) {
	defer markUnavailable(&err)
	state, next := webhookPending, o.NextAttemptAt
	switch {
	case o.Delivered:
		state, next = webhookDelivered, o.At
	case o.Park:
		state, next = webhookParked, o.At
	}
	if o.Disable != "" {
		return s.finishDisabling(ctx, d, o)
	}
	if _, err := s.db.ExecContext(ctx, finishWebhookDeliverySQL, d.ID, d.Attempt, state, next, o.Status, o.Error, o.At); err != nil {
		return fmt.Errorf("finish webhook delivery: %w", err)
	}
	return nil
}

// finishDisabling parks d, and disables its endpoint and parks the
// endpoint's pending deliveries with it, in one transaction, unless d's
// lease is stale. The endpoint is updated first, so that an
// EnableEndpoint or RedeliverParked under way (which lock its row) ends
// before the pending deliveries are parked, or starts after.
func (s *WebhookStore) finishDisabling(ctx context.Context, d webhook.Delivery, o webhook.Outcome) error {
	return inTx(ctx, s.bun, "disable webhook endpoint", func(ctx context.Context, tx bun.Tx) error {
		var one int
		err := tx.Tx.QueryRowContext(ctx, lockLeasedWebhookDeliverySQL, d.ID, d.Attempt).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // a newer claim decides
		}
		if err != nil {
			return fmt.Errorf("lock webhook delivery: %w", err)
		}
		if _, err := tx.Tx.ExecContext(ctx, disableWebhookEndpointSQL, d.EndpointID, o.At, o.Disable); err != nil {
			return fmt.Errorf("disable webhook endpoint: %w", err)
		}
		if _, err := tx.Tx.ExecContext(ctx, finishWebhookDeliverySQL, d.ID, d.Attempt, webhookParked, o.At, o.Status, o.Error, o.At); err != nil {
			return fmt.Errorf("finish webhook delivery: %w", err)
		}
		if _, err := tx.Tx.ExecContext(ctx, parkWebhookEndpointSQL, d.EndpointID, o.At); err != nil {
			return fmt.Errorf("park webhook deliveries: %w", err)
		}
		return nil
	})
}
