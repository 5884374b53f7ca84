-- Call metrics (issue 16): the figures of each call's session report, stored
-- when it is reported so that they aggregate over calls. turns and
-- interruptions are the report's; call_latency_samples holds every latency
-- value, one a message and metric, so that a percentile over many calls is
-- computed from the values themselves; call_usage holds the report's usage
-- entries in order, each entry's numeric fields as a JSON object.
--
-- metrics_of is the reported_at of the report the figures were derived
-- from: they are the current report's only when the two are equal. Reports
-- stored before this migration, and those an older replica stores during a
-- rolling update, have none yet; every replica derives them at start-up and
-- then every minute (room.Service.BackfillMetrics), and reads derive them
-- from the report meanwhile. turns is NULL with metrics_of set for a report
-- that yields no figures. Expand only: older replicas neither read nor
-- write these.
ALTER TABLE calls
    ADD COLUMN IF NOT EXISTS turns integer,
    ADD COLUMN IF NOT EXISTS interruptions integer,
    ADD COLUMN IF NOT EXISTS metrics_of timestamptz;

CREATE TABLE IF NOT EXISTS call_latency_samples (
    room_id uuid             NOT NULL REFERENCES calls (room_id) ON DELETE CASCADE,
    metric  text             NOT NULL,
    -- message is the item's index in the report's chat history.
    message integer          NOT NULL,
    value   double precision NOT NULL,
    PRIMARY KEY (room_id, metric, message)
);

CREATE TABLE IF NOT EXISTS call_usage (
    room_id  uuid    NOT NULL REFERENCES calls (room_id) ON DELETE CASCADE,
    entry    integer NOT NULL,
    type     text    NOT NULL,
    provider text    NOT NULL,
    model    text    NOT NULL,
    amounts  jsonb   NOT NULL,
    PRIMARY KEY (room_id, entry)
);

-- The backfill finds the calls whose figures are not their report's.
-- CONCURRENTLY, so that running replicas keep writing calls while it
-- builds; a failed build leaves an invalid index, dropped first.
--bun:split
DROP INDEX CONCURRENTLY IF EXISTS calls_metrics_due_idx;
--bun:split
CREATE INDEX CONCURRENTLY calls_metrics_due_idx ON calls (room_id)
    WHERE report IS NOT NULL AND metrics_of IS DISTINCT FROM reported_at;
