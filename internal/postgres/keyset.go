package postgres

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/keyset"
)

// listPage reads one keyset page of a newest-first list: firstSQL ($1
// parent, $2 limit) for the first page, nextSQL (also $3 created_at, $4 id
// of the position) for the pages after. scan reads one row.
func listPage[T any](ctx context.Context, db *sql.DB, op, firstSQL, nextSQL string, parent uuid.UUID, after *keyset.Position, limit int, scan func(*sql.Rows) (T, error)) ([]T, error) {
	var (
		rows *sql.Rows
		err  error
	)
	if after == nil {
		rows, err = db.QueryContext(ctx, firstSQL, parent, limit)
	} else {
		rows, err = db.QueryContext(ctx, nextSQL, parent, limit, after.CreatedAt, after.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer rows.Close()
	items := make([]T, 0, limit)
	for rows.Next() {
		item, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: scan: %w", op, err)
		}
		items = append(items, item)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return items, nil
}
