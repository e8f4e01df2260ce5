-- The incident model (exporter/runbook/incident.py): evidence per replica, the model's state per
-- exchange, and the periods in which it held purchases (failures inside them were handled).

-- Each replica's latest view of each exchange, upserted after every probe round. A row that has
-- not been refreshed for a while belongs to a replica that is gone or cut off from the database:
-- it no longer votes.
CREATE TABLE liquid_abt.probe_observations (
    exchange             text NOT NULL,
    replica              text NOT NULL,
    observed_at          timestamptz NOT NULL,
    -- The public API answered (auth and rate limits are told apart below, not availability).
    available            boolean NOT NULL,
    outcome              text NOT NULL,
    system_status        text,
    -- Rounds in a row in which the API did not answer, and since when.
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    failing_since        timestamptz,
    rate_limited         boolean NOT NULL DEFAULT false,
    auth_failed          boolean NOT NULL DEFAULT false,
    PRIMARY KEY (exchange, replica)
);

CREATE TABLE liquid_abt.incidents (
    exchange             text PRIMARY KEY,
    phase                text NOT NULL DEFAULT 'normal'
                         CHECK (phase IN ('normal', 'down', 'probation')),
    -- unavailable, maintenance, trading_restricted, or the alert that opened it.
    cause                text,
    started_at           timestamptz,
    -- Health seen by every replica without a break since then (NULL: not healthy now).
    healthy_since        timestamptz,
    -- Re-opens soon after a close: each doubles the wait before the next verification.
    relapses             integer NOT NULL DEFAULT 0 CHECK (relapses >= 0),
    next_attempt_at      timestamptz,
    probation_until      timestamptz,
    last_closed_at       timestamptz,
    -- One replica verifies at a time; the token fences a slow verification that lost its lease.
    lease_until          timestamptz,
    lease_token          uuid,
    last_verification    jsonb,
    rate_lowered_at      timestamptz,
    rate_limited_seen_at timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE liquid_abt.incident_periods (
    id                   bigserial PRIMARY KEY,
    exchange             text NOT NULL,
    cause                text NOT NULL,
    started_at           timestamptz NOT NULL,
    ended_at             timestamptz
);
CREATE INDEX incident_periods_exchange ON liquid_abt.incident_periods (exchange, started_at);

-- Recovery requests now live in the incident row.
DROP TABLE liquid_abt.recoveries;
