package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/webhook"
)

// AppendItemsSQL writes the batches; these statements flush them.
const (
	// claimItemBatchSQL takes the first batch due at $1 that is not one
	// of $2 (batches that failed earlier in the pass). An append
	// extending a claimed batch waits on its row lock until the flush
	// commits, then opens a new batch where the flushed one ended; SKIP
	// LOCKED passes over a batch another flusher (or an append, or a
	// conversation's deletion) holds right now.
	claimItemBatchSQL = `SELECT conversation_id, user_id, first_seq, last_seq, opened_at
  FROM webhook_item_batches
 WHERE due_at <= $1::timestamptz AND conversation_id <> ALL($2::uuid[])
 ORDER BY due_at
 LIMIT 1
   FOR UPDATE SKIP LOCKED`

	// batchItemsSQL reads the ids and kinds of a conversation's items $2
	// to $3.
	batchItemsSQL = `SELECT id, kind FROM items
 WHERE conversation_id = $1::uuid AND seq >= $2::bigint AND seq <= $3::bigint
 ORDER BY seq`

	deleteItemBatchSQL = `DELETE FROM webhook_item_batches WHERE conversation_id = $1::uuid`

	// keepItemBatchSQL leaves a long batch's rest pending: from seq $2,
	// due at $3.
	keepItemBatchSQL = `UPDATE webhook_item_batches SET first_seq = $2::bigint, due_at = $3::timestamptz
 WHERE conversation_id = $1::uuid`
)

var _ webhook.ItemBatches = (*WebhookStore)(nil)

// FlushItemBatches implements webhook.ItemBatches: a short transaction
// per batch, so a batch's event and its deletion (or shortening) commit
// together while an append waits on at most one batch's flush. A batch
// whose flush fails stays pending, is passed over for the rest of the
// pass so the others still flush, and its error is returned with the
// count; an outage ends the pass.
func (s *WebhookStore) FlushItemBatches(ctx context.Context, now time.Time, limit int) (n int, err error) {
	defer markUnavailable(&err)
	var (
		failed []string
		errs   []error
	)
	for n+len(failed) < limit {
		var id uuid.UUID
		found := false
		err := inTx(ctx, s.bun, "flush item batch", func(ctx context.Context, tx bun.Tx) error {
			var b webhook.ItemBatch
			err := tx.Tx.QueryRowContext(ctx, claimItemBatchSQL, now, "{"+strings.Join(failed, ",")+"}").
				Scan(&b.ConversationID, &b.UserID, &b.FirstSeq, &b.LastSeq, &b.OpenedAt)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("claim item batch: %w", err)
			}
			id, found = b.ConversationID, true
			if err := flushItemBatch(ctx, tx.Tx, b, now); err != nil {
				return fmt.Errorf("flush item batch of conversation %s: %w", b.ConversationID, err)
			}
			return nil
		})
		switch {
		case err == nil && !found:
			return n, errors.Join(errs...)
		case err == nil:
			n++
		case !found || isUnavailable(err) || ctx.Err() != nil:
			return n, errors.Join(append(errs, err)...)
		default:
			failed = append(failed, id.String())
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// flushItemBatch writes, in tx, the event of b's next head and what is
// left of b.
func flushItemBatch(ctx context.Context, tx *sql.Tx, b webhook.ItemBatch, now time.Time) error {
	head, rest, more := b.Next()
	items, err := readRows(ctx, tx, "read batch items", int(head.Len()), func(rows *sql.Rows) (webhook.AppendedItem, error) {
		var (
			it   webhook.AppendedItem
			kind conversation.ItemKind
		)
		err := rows.Scan(&it.ID, &kind)
		it.Type = kind.Type()
		return it, err
	}, batchItemsSQL, uuidArg(head.ConversationID), head.FirstSeq, head.LastSeq)
	if err != nil {
		return err
	}
	ev, err := webhook.NewItemsAppendedEvent(head, items, now)
	if err != nil {
		return err
	}
	if err := enqueueWebhookEvent(ctx, tx, ev); err != nil {
		return err
	}
	if more {
		_, err = tx.ExecContext(ctx, keepItemBatchSQL, uuidArg(b.ConversationID), rest.FirstSeq, rest.DueAt())
	} else {
		_, err = tx.ExecContext(ctx, deleteItemBatchSQL, uuidArg(b.ConversationID))
	}
	if err != nil {
		return fmt.Errorf("update item batch: %w", err)
	}
	return nil
}
