-- Notifications become a real work queue (exporter/runbook/worker.py): attempts with backoff,
-- the last error, and a dead letter after too many attempts, so that one poisoned alert state
-- can never hold back the others. Indexes serve every query the loops run (tests check EXPLAIN).
ALTER TABLE liquid_abt.notifications
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error       text,
    ADD COLUMN dead_lettered_at timestamptz;

DROP INDEX liquid_abt.notifications_unprocessed;
-- The worker's claim, in arrival order, and the per-exchange ordering check.
CREATE INDEX notifications_pending ON liquid_abt.notifications (id)
    WHERE processed_at IS NULL AND dead_lettered_at IS NULL;
-- States backing off after a failure: they hold back the later states of their exchange.
CREATE INDEX notifications_backing_off ON liquid_abt.notifications (next_attempt_at)
    WHERE processed_at IS NULL AND dead_lettered_at IS NULL;
-- "Is an outage alert of this exchange still firing?" (incident model, reconciliation).
CREATE INDEX notifications_firing ON liquid_abt.notifications (exchange, alertname)
    WHERE status = 'firing';
-- Retention.
CREATE INDEX notifications_received_at ON liquid_abt.notifications (received_at);
CREATE INDEX retry_queue_finished ON liquid_abt.retry_queue (updated_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');

-- Every replica's action worker LISTENs: a recorded alert state wakes them at once, so they need
-- not poll the table every few seconds (a quiet database when nothing happens).
CREATE FUNCTION liquid_abt.notify_new_work() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('liquid_abt_work', '');
    RETURN NULL;
END $$;

CREATE TRIGGER notifications_notify AFTER INSERT ON liquid_abt.notifications
    FOR EACH STATEMENT EXECUTE FUNCTION liquid_abt.notify_new_work();
