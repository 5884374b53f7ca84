package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rule"
)

// A call's metrics are stored with its report: turns and interruptions on
// calls, each latency sample a row of call_latency_samples, each usage
// entry a row of call_usage, and metrics_of, the reported_at of the report
// they are of. Percentiles are PostgreSQL's percentile_disc, which is the
// nearest-rank rule of room.DeriveMetrics.
const (
	// setFiguresSQL stores the figures of call $1's report if its
	// reported_at is $5 (NULL: whatever it is) and, unless $4, it has none
	// yet. $2 and $3 NULL: the report yields none.
	setFiguresSQL = `UPDATE calls SET turns = $2::integer, interruptions = $3::integer, metrics_of = reported_at
 WHERE room_id = $1::uuid AND report IS NOT NULL AND (reported_at = $5::timestamptz OR $5::timestamptz IS NULL)
   AND ($4::boolean OR metrics_of IS DISTINCT FROM reported_at)
RETURNING room_id`

	clearSamplesSQL = `DELETE FROM call_latency_samples WHERE room_id = $1::uuid`
	clearUsageSQL   = `DELETE FROM call_usage WHERE room_id = $1::uuid`

	insertSamplesSQL = `INSERT INTO call_latency_samples (room_id, metric, message, value)
SELECT $1::uuid, s.metric, s.message, s.value FROM unnest($2::text[], $3::integer[], $4::float8[]) AS s (metric, message, value)`

	insertUsageSQL = `INSERT INTO call_usage (room_id, entry, type, provider, model, amounts)
SELECT $1::uuid, u.entry - 1, u.type, u.provider, u.model, u.amounts::jsonb
  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u (type, provider, model, amounts, entry)`

	// dueMetricsSQL pages the ids of the calls whose reports have no
	// metrics, through calls_metrics_due_idx: ids only, as a report may be
	// room.MaxReportBytes.
	dueMetricsSQL = `SELECT c.room_id FROM calls c
 WHERE ` + metricsDue + ` AND c.room_id > $1::uuid
 ORDER BY c.room_id
 LIMIT $2`

	// claimDueReportSQL reads call $1's report if its metrics are still
	// due, locking the call; SKIP LOCKED passes over a call another
	// replica's backfill (or a report being saved) holds.
	claimDueReportSQL = `SELECT c.report, c.reported_at FROM calls c
 WHERE c.room_id = $1::uuid AND ` + metricsDue + `
   FOR UPDATE SKIP LOCKED`

	// callLatenciesSQL summarises each call's samples by metric (byte
	// order, as room.DeriveMetrics sorts them).
	callLatenciesSQL = `SELECT room_id, metric, count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY value), percentile_disc(0.95) WITHIN GROUP (ORDER BY value)
  FROM call_latency_samples WHERE room_id = ANY ($1::uuid[])
 GROUP BY room_id, metric ORDER BY room_id, metric COLLATE "C"`

	callUsageSQL = `SELECT room_id, type, provider, model, amounts FROM call_usage WHERE room_id = ANY ($1::uuid[]) ORDER BY room_id, entry`
)

// saveFigures stores m as the metrics of call id's report in tx, as
// setFiguresSQL says; m nil: the report yields none.
func saveFigures(ctx context.Context, tx *sql.Tx, id uuid.UUID, m *room.CallMetrics, force bool, reportedAt sql.NullTime) error {
	var turns, interruptions sql.NullInt32
	if m != nil {
		turns = sql.NullInt32{Int32: int32(m.Turns), Valid: true}
		interruptions = sql.NullInt32{Int32: int32(m.Interruptions), Valid: true}
	}
	var updated uuid.UUID
	err := tx.QueryRowContext(ctx, setFiguresSQL, id, turns, interruptions, force, reportedAt).Scan(&updated)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil // another report, or its metrics are stored
	case err != nil:
		return fmt.Errorf("save call metrics: %w", err)
	}
	for _, q := range []string{clearSamplesSQL, clearUsageSQL} {
		if _, err := tx.ExecContext(ctx, q, id); err != nil {
			return fmt.Errorf("save call metrics: clear: %w", err)
		}
	}
	if m == nil {
		return nil
	}
	if len(m.Samples) > 0 {
		metrics, messages, values := make([]string, len(m.Samples)), make([]int32, len(m.Samples)), make([]float64, len(m.Samples))
		for i, s := range m.Samples {
			metrics[i], messages[i], values[i] = s.Metric, int32(s.Message), s.Value
		}
		if _, err := tx.ExecContext(ctx, insertSamplesSQL, id, metrics, messages, values); err != nil {
			return fmt.Errorf("save call metrics: samples: %w", err)
		}
	}
	if len(m.Usage) > 0 {
		n := len(m.Usage)
		types, providers, models, amounts := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		for i, u := range m.Usage {
			b, err := json.Marshal(u.Values)
			if err != nil {
				return fmt.Errorf("save call metrics: usage: %w", err)
			}
			types[i], providers[i], models[i], amounts[i] = u.Type, u.Provider, u.Model, string(b)
		}
		if _, err := tx.ExecContext(ctx, insertUsageSQL, id, types, providers, models, amounts); err != nil {
			return fmt.Errorf("save call metrics: usage: %w", err)
		}
	}
	return nil
}

// DueMetrics implements room.Store.
func (s *RoomStore) DueMetrics(ctx context.Context, after uuid.UUID, limit int) (_ []uuid.UUID, err error) {
	defer markUnavailable(&err)
	return readRows(ctx, s.db, "due call metrics", limit, func(rows *sql.Rows) (uuid.UUID, error) {
		var id uuid.UUID
		err := rows.Scan(&id)
		return id, err
	}, dueMetricsSQL, after, limit)
}

// FillMetrics implements room.Store: the call stays locked from the read
// of its report to the save of its metrics, one report at a time.
func (s *RoomStore) FillMetrics(ctx context.Context, id uuid.UUID, derive func(report []byte) *room.CallMetrics) (filled bool, err error) {
	defer markUnavailable(&err)
	err = inTx(ctx, s.bun, "fill call metrics", func(ctx context.Context, tx bun.Tx) error {
		var (
			report     []byte
			reportedAt sql.NullTime
		)
		err := tx.Tx.QueryRowContext(ctx, claimDueReportSQL, id).Scan(&report, &reportedAt)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("fill call metrics: read report: %w", err)
		}
		filled = true
		return saveFigures(ctx, tx.Tx, id, derive(report), false, reportedAt)
	})
	if err != nil {
		return false, err
	}
	return filled, nil
}

// callFigures reads the latencies and usage of those calls whose metrics
// are stored; index is where each call is in calls.
func (s *RoomStore) callFigures(ctx context.Context, calls []room.Call, index map[uuid.UUID]int) error {
	var ids []string
	for _, c := range calls {
		if c.Metrics != nil {
			ids = append(ids, c.ID.String())
		}
	}
	if len(ids) == 0 {
		return nil
	}
	err := eachRow(ctx, s.db, "call latencies", callLatenciesSQL, ids, func(rows *sql.Rows) error {
		var (
			id uuid.UUID
			l  room.LatencyStats
		)
		if err := rows.Scan(&id, &l.Metric, &l.Count, &l.P50, &l.P95); err != nil {
			return err
		}
		m := calls[index[id]].Metrics
		m.Latencies = append(m.Latencies, l)
		return nil
	})
	if err != nil {
		return err
	}
	return eachRow(ctx, s.db, "call usage", callUsageSQL, ids, func(rows *sql.Rows) error {
		var (
			id      uuid.UUID
			u       room.ModelUsage
			amounts []byte
		)
		if err := rows.Scan(&id, &u.Type, &u.Provider, &u.Model, &amounts); err != nil {
			return err
		}
		if err := json.Unmarshal(amounts, &u.Values); err != nil {
			return err
		}
		m := calls[index[id]].Metrics
		m.Usage = append(m.Usage, u)
		return nil
	})
}

// AggregateCalls implements room.Store: three statements over one
// snapshot, each reading the matching calls from the owner's
// rooms_created_by_created_idx (everyone's: rooms_created_idx) over the
// range, then each call's row, samples and usage by their keys.
func (s *RoomStore) AggregateCalls(ctx context.Context, owner uuid.UUID, f room.CallFilter, g room.CallGrouping, limit int) (_ []room.CallGroup, err error) {
	defer markUnavailable(&err)
	groupsSQL, latenciesSQL, usageSQL, args, err := AggregateCallsSQL(owner, f, g, limit)
	if err != nil {
		return nil, err
	}
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("aggregate calls: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	type key struct {
		agent string
		start time.Time
	}
	var groups []room.CallGroup
	at := map[key]int{}
	scanKey := func(rows *sql.Rows, dest ...any) (*room.CallGroup, error) {
		var (
			k     key
			start sql.NullTime
		)
		if err := rows.Scan(append([]any{&k.agent, &start}, dest...)...); err != nil {
			return nil, err
		}
		k.start = start.Time
		i, ok := at[k]
		if !ok {
			return nil, nil // a group past the limit
		}
		return &groups[i], nil
	}
	err = eachRowOf(ctx, tx, "aggregate calls", groupsSQL, args, func(rows *sql.Rows) error {
		var (
			gr    room.CallGroup
			start sql.NullTime
		)
		if err := rows.Scan(&gr.AgentName, &start, &gr.Calls, &gr.Reported, &gr.Turns, &gr.Interruptions); err != nil {
			return err
		}
		gr.Start = start.Time
		at[key{gr.AgentName, gr.Start}] = len(groups)
		groups = append(groups, gr)
		return nil
	})
	if err != nil {
		return nil, aggregateErr(err)
	}
	if len(groups) >= limit {
		return groups, nil // the caller refuses as many
	}
	args = args[:len(args)-1] // the limit
	err = eachRowOf(ctx, tx, "aggregate call latencies", latenciesSQL, args, func(rows *sql.Rows) error {
		var l room.LatencyStats
		gr, err := scanKey(rows, &l.Metric, &l.Count, &l.P50, &l.P95)
		if gr != nil {
			gr.Latencies = append(gr.Latencies, l)
		}
		return err
	})
	if err != nil {
		return nil, aggregateErr(err)
	}
	err = eachRowOf(ctx, tx, "aggregate call usage", usageSQL, args, func(rows *sql.Rows) error {
		var (
			u     room.ModelUsage
			field sql.NullString
			sum   sql.NullFloat64
		)
		gr, err := scanKey(rows, &u.Type, &u.Provider, &u.Model, &field, &sum)
		if gr == nil || err != nil {
			return err
		}
		if n := len(gr.Usage); n == 0 || gr.Usage[n-1].Type != u.Type || gr.Usage[n-1].Provider != u.Provider || gr.Usage[n-1].Model != u.Model {
			u.Values = map[string]float64{}
			gr.Usage = append(gr.Usage, u)
		}
		if field.Valid {
			gr.Usage[len(gr.Usage)-1].Values[field.String] = sum.Float64
		}
		return nil
	})
	if err != nil {
		return nil, aggregateErr(err)
	}
	return groups, nil
}

// aggregateErr tells a time zone PostgreSQL does not know (one Go's time
// zone database has and its own lacks) from the store's failures.
func aggregateErr(err error) error {
	if pgCode(err) == codeInvalidParameterValue {
		return rule.Broken("time_zone is not in PostgreSQL's time zone database")
	}
	return err
}

// AggregateCallsSQL returns AggregateCalls' three statements and their
// arguments: the groups (at most limit), then their latencies by metric,
// then their usage by type, provider, model and field, each ordered by
// agent name, bucket start, and the rest. The last argument, the limit, is
// the groups statement's only. Exported for the plan's test.
func AggregateCallsSQL(owner uuid.UUID, f room.CallFilter, g room.CallGrouping, limit int) (groups, latencies, usage string, args []any, err error) {
	var q callQuery
	conds, err := q.filter(owner, f)
	if err != nil {
		return "", "", "", nil, err
	}
	agent := "''::text"
	if g.ByAgent {
		agent = "COALESCE(r.agent_name, " + q.arg(g.DefaultAgent) + "::text)"
	}
	start := "NULL::timestamptz"
	switch g.Bucket {
	case room.BucketHour:
		// The call's instant less the minutes and seconds past its local
		// hour: converting the local hour back would put both hours of a
		// clock set back into one bucket, starting after half its calls.
		local := "(r.created_at AT TIME ZONE " + q.arg(g.TimeZone) + "::text)"
		start = "r.created_at - (" + local + " - date_trunc('hour', " + local + "))"
	case room.BucketDay:
		// The first midnight: where the clock goes back from 01:00 to
		// midnight (Havana), PostgreSQL reads midnight as the later one,
		// and an hour before it, moved on an hour, is the earlier; on any
		// other day the two are the same instant.
		zone := q.arg(g.TimeZone) + "::text"
		day := "date_trunc('day', r.created_at AT TIME ZONE " + zone + ")"
		start = "LEAST(" + day + " AT TIME ZONE " + zone + ", (" + day + " - interval '1 hour') AT TIME ZONE " + zone + " + interval '1 hour')"
	}
	// figured: the call's stored metrics are its report's. Each call's
	// rows are looked up by key (OFFSET 0 keeps the planner from turning
	// the lookups into joins that scan a whole table, which its estimates
	// favour while the range's calls are a good share of the table, so
	// that the cost follows the calls matched, never all there are.
	matched := `WITH matched AS MATERIALIZED (
SELECT r.id, ` + agent + ` AS agent, ` + start + ` AS start, c.report IS NOT NULL AS reported,
       c.report IS NOT NULL AND c.metrics_of = c.reported_at AND c.turns IS NOT NULL AS figured, c.turns, c.interruptions
  FROM rooms r LEFT JOIN LATERAL (SELECT * FROM calls WHERE calls.room_id = r.id OFFSET 0) c ON true
 WHERE ` + strings.Join(conds, "\n   AND ") + `
)
`
	groups = matched + `SELECT agent, start, count(*), count(*) FILTER (WHERE reported),
       COALESCE(sum(turns) FILTER (WHERE figured), 0), COALESCE(sum(interruptions) FILTER (WHERE figured), 0)
  FROM matched GROUP BY agent, start
 ORDER BY agent COLLATE "C", start
 LIMIT ` + q.arg(limit)
	latencies = matched + `SELECT m.agent, m.start, s.metric, count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY s.value), percentile_disc(0.95) WITHIN GROUP (ORDER BY s.value)
  FROM matched m CROSS JOIN LATERAL (SELECT metric, value FROM call_latency_samples WHERE room_id = m.id OFFSET 0) s
 WHERE m.figured
 GROUP BY m.agent, m.start, s.metric
 ORDER BY m.agent COLLATE "C", m.start, s.metric COLLATE "C"`
	usage = matched + `SELECT m.agent, m.start, u.type, u.provider, u.model, a.key, sum((a.value)::float8)
  FROM matched m CROSS JOIN LATERAL (SELECT type, provider, model, amounts FROM call_usage WHERE room_id = m.id OFFSET 0) u
  LEFT JOIN LATERAL jsonb_each(u.amounts) AS a ON jsonb_typeof(a.value) = 'number'
 WHERE m.figured
 GROUP BY m.agent, m.start, u.type, u.provider, u.model, a.key
 ORDER BY m.agent COLLATE "C", m.start, u.type COLLATE "C", u.provider COLLATE "C", u.model COLLATE "C", a.key COLLATE "C"`
	return groups, latencies, usage, q.args, nil
}
