package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/webhook"
)

const (
	// Event types are read back as JSON text: database/sql scans no arrays.
	webhookEndpointColumns = `id, user_id, url, to_json(event_types)::text, created_at, disabled_at, COALESCE(disabled_reason, '')`

	insertWebhookEndpointSQL = `INSERT INTO webhook_endpoints (id, user_id, url, event_types, created_at)
VALUES ($1::uuid, $2::uuid, $3::text, $4::text[], $5::timestamptz)
RETURNING ` + webhookEndpointColumns

	// lockWebhookUserSQL makes one user's endpoint creations take turns, so
	// that the count holds. NO KEY UPDATE leaves foreign key checks (KEY
	// SHARE) on the user, everywhere else, unblocked.
	lockWebhookUserSQL = `SELECT 1 FROM users WHERE id = $1::uuid FOR NO KEY UPDATE`

	// countWebhookEndpointsSQL runs after lockWebhookUserSQL, as a statement
	// of its own: its snapshot then sees the endpoint of a creation that
	// held the lock before.
	countWebhookEndpointsSQL = `SELECT count(*) FROM webhook_endpoints WHERE user_id = $1::uuid`

	insertWebhookSecretSQL = `INSERT INTO webhook_secrets (endpoint_id, secret) VALUES ($1::uuid, $2::bytea)`

	getWebhookEndpointSQL = `SELECT ` + webhookEndpointColumns + ` FROM webhook_endpoints WHERE id = $1::uuid AND user_id = $2::uuid`

	listWebhookEndpointsSQL = `SELECT ` + webhookEndpointColumns + ` FROM webhook_endpoints WHERE user_id = $1::uuid ORDER BY created_at, id`

	deleteWebhookEndpointSQL = `DELETE FROM webhook_endpoints WHERE id = $1::uuid AND user_id = $2::uuid`

	// lockWebhookEndpointSQL makes rotations of one endpoint take turns, so
	// each retires exactly the secrets older than its own.
	lockWebhookEndpointSQL = `SELECT 1 FROM webhook_endpoints WHERE id = $1::uuid AND user_id = $2::uuid FOR UPDATE`

	// retireWebhookSecretsSQL gives every current secret an expiry; one
	// that expires sooner keeps its own.
	retireWebhookSecretsSQL = `UPDATE webhook_secrets SET expires_at = LEAST(COALESCE(expires_at, $2::timestamptz), $2::timestamptz)
 WHERE endpoint_id = $1::uuid`

	// enableWebhookEndpointSQL clears a disabling; the row lock it takes
	// makes a disable by a 410 (which updates the row too) wait, or wait
	// for it, so each sees the other's deliveries.
	enableWebhookEndpointSQL = `UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL
 WHERE id = $1::uuid AND user_id = $2::uuid
RETURNING ` + webhookEndpointColumns

	webhookSecretsSQL = `SELECT secret FROM webhook_secrets
 WHERE endpoint_id = $1::uuid AND (expires_at IS NULL OR expires_at > $2::timestamptz)
 ORDER BY id DESC`
)

// WebhookStore keeps outbound webhook endpoints and their secrets. It
// implements webhook.Store.
type WebhookStore struct {
	db  *sql.DB // for $n statements: bun.DB's own methods would format them
	bun *bun.DB // for inTx
}

var _ webhook.Store = (*WebhookStore)(nil)

// NewWebhookStore returns a WebhookStore over db.
func NewWebhookStore(db *bun.DB) *WebhookStore { return &WebhookStore{db: db.DB, bun: db} }

func scanWebhookEndpoint(row interface{ Scan(...any) error }) (webhook.Endpoint, error) {
	var e webhook.Endpoint
	var types string
	var disabled sql.NullTime
	if err := row.Scan(&e.ID, &e.UserID, &e.URL, &types, &e.CreatedAt, &disabled, &e.DisabledReason); err != nil {
		return webhook.Endpoint{}, err
	}
	e.DisabledAt = disabled.Time
	if err := json.Unmarshal([]byte(types), &e.EventTypes); err != nil {
		return webhook.Endpoint{}, fmt.Errorf("event types %q: %w", types, err)
	}
	return e, nil
}

// CreateEndpoint implements webhook.Store.
func (s *WebhookStore) CreateEndpoint(ctx context.Context, e webhook.Endpoint, secret webhook.Secret, max int) (_ webhook.Endpoint, err error) {
	defer markUnavailable(&err)
	var out webhook.Endpoint
	err = inTx(ctx, s.bun, "create webhook endpoint", func(ctx context.Context, tx bun.Tx) error {
		var n int
		err := tx.Tx.QueryRowContext(ctx, lockWebhookUserSQL, e.UserID).Scan(&n)
		if errors.Is(err, sql.ErrNoRows) {
			// The user is gone: its endpoints would be.
			return webhook.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("lock user: %w", err)
		}
		if err := tx.Tx.QueryRowContext(ctx, countWebhookEndpointsSQL, e.UserID).Scan(&n); err != nil {
			return fmt.Errorf("count webhook endpoints: %w", err)
		}
		if n >= max {
			return webhook.ErrTooManyEndpoints
		}
		out, err = scanWebhookEndpoint(tx.Tx.QueryRowContext(ctx, insertWebhookEndpointSQL, e.ID, e.UserID, e.URL, e.EventTypes, e.CreatedAt))
		if err != nil {
			return fmt.Errorf("insert webhook endpoint: %w", err)
		}
		if _, err := tx.Tx.ExecContext(ctx, insertWebhookSecretSQL, e.ID, secret.Key()); err != nil {
			return fmt.Errorf("insert webhook secret: %w", err)
		}
		return nil
	})
	return out, err
}

// Endpoint implements webhook.Store.
func (s *WebhookStore) Endpoint(ctx context.Context, id, userID uuid.UUID) (_ webhook.Endpoint, err error) {
	defer markUnavailable(&err)
	e, err := scanWebhookEndpoint(s.db.QueryRowContext(ctx, getWebhookEndpointSQL, id, userID))
	if errors.Is(err, sql.ErrNoRows) {
		return webhook.Endpoint{}, webhook.ErrNotFound
	}
	if err != nil {
		return webhook.Endpoint{}, fmt.Errorf("get webhook endpoint: %w", err)
	}
	return e, nil
}

// Endpoints implements webhook.Store.
func (s *WebhookStore) Endpoints(ctx context.Context, userID uuid.UUID) (_ []webhook.Endpoint, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, listWebhookEndpointsSQL, userID)
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	defer rows.Close()
	var out []webhook.Endpoint
	for rows.Next() {
		e, err := scanWebhookEndpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook endpoints: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	return out, nil
}

// DeleteEndpoint implements webhook.Store.
func (s *WebhookStore) DeleteEndpoint(ctx context.Context, id, userID uuid.UUID) (err error) {
	defer markUnavailable(&err)
	res, err := s.db.ExecContext(ctx, deleteWebhookEndpointSQL, id, userID)
	if err != nil {
		return fmt.Errorf("delete webhook endpoint: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete webhook endpoint: %w", err)
	}
	if n == 0 {
		return webhook.ErrNotFound
	}
	return nil
}

// RotateSecret implements webhook.Store.
func (s *WebhookStore) RotateSecret(ctx context.Context, id, userID uuid.UUID, secret webhook.Secret, retireAt time.Time) (err error) {
	defer markUnavailable(&err)
	return inTx(ctx, s.bun, "rotate webhook secret", func(ctx context.Context, tx bun.Tx) error {
		var one int
		err := tx.Tx.QueryRowContext(ctx, lockWebhookEndpointSQL, id, userID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return webhook.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("lock webhook endpoint: %w", err)
		}
		if _, err := tx.Tx.ExecContext(ctx, retireWebhookSecretsSQL, id, retireAt); err != nil {
			return fmt.Errorf("retire webhook secrets: %w", err)
		}
		if _, err := tx.Tx.ExecContext(ctx, insertWebhookSecretSQL, id, secret.Key()); err != nil {
			return fmt.Errorf("insert webhook secret: %w", err)
		}
		return nil
	})
}

// Secrets implements webhook.Store.
func (s *WebhookStore) Secrets(ctx context.Context, id uuid.UUID, now time.Time) (_ []webhook.Secret, err error) {
	defer markUnavailable(&err)
	rows, err := s.db.QueryContext(ctx, webhookSecretsSQL, id, now)
	if err != nil {
		return nil, fmt.Errorf("webhook secrets: %w", err)
	}
	defer rows.Close()
	var out []webhook.Secret
	for rows.Next() {
		var key []byte
		if err := rows.Scan(&key); err != nil {
			return nil, fmt.Errorf("webhook secrets: %w", err)
		}
		secret, err := webhook.SecretFromKey(key)
		if err != nil {
			return nil, fmt.Errorf("webhook secret of endpoint %s: %w", id, err)
		}
		out = append(out, secret)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("webhook secrets: %w", err)
	}
	return out, nil
}

// EnableEndpoint implements webhook.Store.
func (s *WebhookStore) EnableEndpoint(ctx context.Context, id, userID uuid.UUID, now time.Time, redeliver bool) (_ webhook.Endpoint, _ int, err error) {
	defer markUnavailable(&err)
	var e webhook.Endpoint
	var n int64
	err = inTx(ctx, s.bun, "enable webhook endpoint", func(ctx context.Context, tx bun.Tx) error {
		// The endpoint as it was, locked: only a disabled one changes.
		var err error
		e, err = scanWebhookEndpoint(tx.Tx.QueryRowContext(ctx, getWebhookEndpointSQL+` FOR UPDATE`, id, userID))
		if errors.Is(err, sql.ErrNoRows) {
			return webhook.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("lock webhook endpoint: %w", err)
		}
		if e.DisabledAt.IsZero() {
			return nil
		}
		if e, err = scanWebhookEndpoint(tx.Tx.QueryRowContext(ctx, enableWebhookEndpointSQL, id, userID)); err != nil {
			return fmt.Errorf("enable webhook endpoint: %w", err)
		}
		if !redeliver {
			return nil
		}
		n, err = execCount(ctx, tx.Tx, redeliverParkedWebhookSQL, id, now)
		if err != nil {
			return fmt.Errorf("redeliver parked webhook deliveries: %w", err)
		}
		return nil
	})
	if err != nil {
		return webhook.Endpoint{}, 0, err
	}
	return e, int(n), nil
}
