-- Customer notices (the runbooks' "Customer Communication"): an outbox the exporter fills
-- (exporter/runbook/notices/) and the platform's notifier consumes like the retry queue: claim,
-- complete, fail (docs/platform-integration.md, section 5).
CREATE TABLE liquid_abt.customer_notices (
    id           bigserial PRIMARY KEY,
    -- NULL only for a notice not tied to an incident.
    incident_id  bigint REFERENCES liquid_abt.incident_periods (id),
    exchange     text NOT NULL,
    kind         text NOT NULL
                 CHECK (kind IN ('incident_started', 'incident_ongoing', 'incident_resolved',
                                 'purchase_failed')),
    -- The ongoing notice's number (1 at 30 minutes, 2 at 60 ...); 0 for the other kinds.
    seq          integer NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- NULL: every tenant the incident affected (the documented query lists them).
    tenant_id    text,
    channels     text[] NOT NULL CHECK (cardinality(channels) > 0),
    message      text NOT NULL,
    context      jsonb NOT NULL DEFAULT '{}'::jsonb,
    state        text NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'held', 'claimed', 'sent', 'failed', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Not handed out before this (a failed delivery's backoff moves it on).
    ready_at     timestamptz NOT NULL DEFAULT now(),
    claimed_at   timestamptz,
    claimed_by   text,
    sent_at      timestamptz,
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   text,
    -- Who held or cancelled it, and why (the audit log has the entry too).
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Each notice exactly once, whichever replica plans it and however often: every insert is
-- ON CONFLICT DO NOTHING on this key. NULL incident and NULL tenant (a broadcast) compare equal.
CREATE UNIQUE INDEX customer_notices_once ON liquid_abt.customer_notices
    (coalesce(incident_id, 0), kind, seq, coalesce(tenant_id, ''));

-- The notifier's claim: what is waiting, oldest first (claimed rows for their expired lease).
CREATE INDEX customer_notices_waiting ON liquid_abt.customer_notices (ready_at)
    WHERE state IN ('queued', 'claimed');

CREATE INDEX customer_notices_incident ON liquid_abt.customer_notices (incident_id);

-- The planner's one read on an idle replica: incidents open or recently closed.
CREATE INDEX incident_periods_ended ON liquid_abt.incident_periods (ended_at);
