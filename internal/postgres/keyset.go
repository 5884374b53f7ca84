package postgres

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/keyset"
)

// newestFirst is a list read in keyset pages newest first, by (created_at,
// id) under a parent: first reads the first page ($1 parent, $2 limit), next
// a page after a position (also $3 created_at, $4 id). The row comparison
// and the ORDER BY follow the (parent, created_at, id) index, so a page is
// one index range scan stopped by the LIMIT.
type newestFirst struct {
	first, next string
}

// newestFirstPages returns the page statements of a list selecting columns
// from from (a table, with its alias if columns use one) where parent is
// $1; q is the alias's qualifier ("f.") or "".
func newestFirstPages(columns, from, q, parent string) newestFirst {
	head := `SELECT ` + columns + `
  FROM ` + from + `
 WHERE ` + q + parent + ` = $1::uuid`
	tail := `
 ORDER BY ` + q + `created_at DESC, ` + q + `id DESC
 LIMIT $2`
	return newestFirst{
		first: head + tail,
		next:  head + ` AND (` + q + `created_at, ` + q + `id) < ($3::timestamptz, $4::uuid)` + tail,
	}
}

// listPage reads the page of list l under parent that follows after (the
// first page when nil), at most limit rows.
func listPage[T any](ctx context.Context, db *sql.DB, op string, l newestFirst, parent uuid.UUID, after *keyset.Position, limit int, scan func(*sql.Rows) (T, error)) ([]T, error) {
	if after == nil {
		return readRows(ctx, db, op, limit, scan, l.first, parent, limit)
	}
	return readRows(ctx, db, op, limit, scan, l.next, parent, limit, after.CreatedAt, after.ID)
}

// readRows runs a query of a page and scans each of its rows; size is the
// capacity to allocate, the page's limit or a bound on it.
func readRows[T any](ctx context.Context, db querier, op string, size int, scan func(*sql.Rows) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer rows.Close()
	items := make([]T, 0, size)
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
