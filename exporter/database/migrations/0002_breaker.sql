-- The circuit breaker (exporter/breaker.py).
--
-- call_count: calls counted in the current monitoring window beside failure_count, so that the
-- failure rate (failure_count / call_count) is read from the same row every replica shares.
-- manual_hold: an OPEN forced through the admin API; automation (the recovery timer, the probe,
-- the webhook receiver) never lifts it, only an admin does. It means nothing in other states.
ALTER TABLE liquid_abt.circuit_breakers
    ADD COLUMN call_count  integer NOT NULL DEFAULT 0 CHECK (call_count >= 0),
    ADD COLUMN manual_hold boolean NOT NULL DEFAULT false;

-- The admin API pages the audit log of one exchange backwards by id.
CREATE INDEX audit_log_exchange_id ON liquid_abt.audit_log (exchange, id);
