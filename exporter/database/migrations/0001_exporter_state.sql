-- The exporter's own state. The platform reads exchange_controls and circuit_breakers, and
-- consumes retry_queue; every replica of the exporter shares these rows.

CREATE TABLE liquid_abt.circuit_breakers (
    exchange             text PRIMARY KEY,
    state                text NOT NULL DEFAULT 'closed'
                         CHECK (state IN ('closed', 'open', 'half_open')),
    failure_count        integer NOT NULL DEFAULT 0,
    window_started_at    timestamptz,
    last_failure_at      timestamptz,
    last_success_at      timestamptz,
    state_changed_at     timestamptz NOT NULL DEFAULT now(),
    -- The runbook's breaker settings (milliseconds, as in its updateConfig call).
    failure_threshold    integer NOT NULL DEFAULT 5 CHECK (failure_threshold > 0),
    recovery_timeout_ms  integer NOT NULL DEFAULT 30000 CHECK (recovery_timeout_ms > 0),
    monitoring_window_ms integer NOT NULL DEFAULT 300000 CHECK (monitoring_window_ms > 0),
    -- Bumped by every change: transitions are compare-and-set on it.
    version              bigint NOT NULL DEFAULT 0
);

CREATE TABLE liquid_abt.exchange_controls (
    exchange             text PRIMARY KEY,
    purchases_paused     boolean NOT NULL DEFAULT false,
    pause_reason         text,
    pause_estimated_duration text,
    paused_at            timestamptz,
    -- Set through the admin API; automation never lifts it.
    manual_hold          boolean NOT NULL DEFAULT false,
    -- The alert (fingerprint) whose firing caused the pause, for reconciliation.
    paused_by_fingerprint text,
    api_rate_multiplier  numeric NOT NULL DEFAULT 1 CHECK (api_rate_multiplier > 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE liquid_abt.retry_queue (
    id                   bigserial PRIMARY KEY,
    purchase_id          text NOT NULL UNIQUE,  -- a purchase is at most once in the queue
    exchange             text NOT NULL,
    tenant_id            text,
    amount_aud           numeric,
    failure_reason       text,
    attempts             integer NOT NULL DEFAULT 0,
    max_attempts         integer NOT NULL DEFAULT 3,
    next_attempt_at      timestamptz NOT NULL,
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'in_progress', 'succeeded', 'failed', 'cancelled')),
    last_error           text,
    cause                text,
    enqueued_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retry_queue_due ON liquid_abt.retry_queue (next_attempt_at) WHERE status = 'queued';

CREATE TABLE liquid_abt.notifications (
    id                   bigserial PRIMARY KEY,
    fingerprint          text NOT NULL,
    status               text NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at            timestamptz NOT NULL,
    ends_at              timestamptz,
    alertname            text NOT NULL,
    exchange             text,
    labels               jsonb NOT NULL,
    group_key            text,
    truncated_alerts     integer NOT NULL DEFAULT 0,
    received_at          timestamptz NOT NULL DEFAULT now(),
    processed_at         timestamptz,
    process_error        text,
    -- Alertmanager re-sends the same notification (repeat_interval, HA peers, retries).
    UNIQUE (fingerprint, status, starts_at)
);
CREATE INDEX notifications_unprocessed ON liquid_abt.notifications (received_at)
    WHERE processed_at IS NULL;

CREATE TABLE liquid_abt.audit_log (
    id                   bigserial PRIMARY KEY,
    at                   timestamptz NOT NULL DEFAULT now(),
    actor                text NOT NULL,      -- automation, admin, probe
    action               text NOT NULL,
    exchange             text,
    result               text NOT NULL,
    cause                text,
    fingerprint          text,
    detail               jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON liquid_abt.audit_log (at);

CREATE FUNCTION liquid_abt.audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'liquid_abt.audit_log is append-only';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON liquid_abt.audit_log
    FOR EACH ROW EXECUTE FUNCTION liquid_abt.audit_log_is_append_only();
