-- The hourly prune finds webhook events past their retention by age
-- across all users. Expand only.
CREATE INDEX webhook_events_created_at_idx ON webhook_events (created_at);
