-- Recovery verification requested by a resolved outage alert, retried until it passes.
-- One row per exchange; a lease keeps two replicas from verifying at the same time.
CREATE TABLE liquid_abt.recoveries (
    exchange             text PRIMARY KEY,
    requested_at         timestamptz NOT NULL DEFAULT now(),
    cause                text,
    fingerprint          text,
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    lease_until          timestamptz,
    last_result          jsonb
);
