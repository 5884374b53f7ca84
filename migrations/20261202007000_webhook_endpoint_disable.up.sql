-- Outbound webhooks (issue 16): an endpoint that answers 410 Gone is
-- disabled (Standard Webhooks), and a customer lists an endpoint's
-- deliveries by state across events.
--   webhook_endpoints.disabled_at / disabled_reason: set by the delivery
--     that got the 410, cleared by EnableEndpoint. While set, the endpoint's
--     deliveries are kept (parked) and never attempted.
--   webhook_deliveries_endpoint_state_idx: ListEndpointDeliveries reads one
--     endpoint's deliveries in one state in line (id) order, and
--     RedeliverParked finds its parked ones; it also serves the cascade
--     when an endpoint is deleted.
-- Expand only: older replicas neither read nor write these; during a
-- rolling update one may still attempt a disabled endpoint's new events.
ALTER TABLE webhook_endpoints
    ADD COLUMN IF NOT EXISTS disabled_at timestamptz,
    ADD COLUMN IF NOT EXISTS disabled_reason text;

-- CONCURRENTLY, so that older replicas' outbox inserts (inside their change
-- transactions) go on while it builds; a failed build leaves an invalid
-- index, dropped first.
--bun:split
DROP INDEX CONCURRENTLY IF EXISTS webhook_deliveries_endpoint_state_idx;
--bun:split
CREATE INDEX CONCURRENTLY webhook_deliveries_endpoint_state_idx ON webhook_deliveries (endpoint_id, state, id);
