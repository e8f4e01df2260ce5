-- Failover: where each primary exchange's purchases go while its incident stops them
-- (exporter/runbook/incident/routing.py decides it; the gate's `buy_on` reads it). One row per
-- primary exchange, written by the incident model's executor in the decision's transaction.
CREATE TABLE liquid_abt.purchase_routes (
    exchange       text PRIMARY KEY,
    -- The secondary exchange purchases are routed to; NULL: not routed (the exchange's own
    -- gate decides, as before failover).
    routed_to      text CHECK (routed_to IS NULL OR routed_to <> exchange),
    -- When routed_to last changed (a route started, or ended).
    since          timestamptz,
    -- The secondary's last passing check plus failover.verified_within: the gate stops routing
    -- after it, even if no decision runs meanwhile.
    valid_until    timestamptz,
    -- Why, in words, with the evidence (the audit log keeps every change).
    reason         text,
    -- The guard that keeps purchases from being routed (labels.ROUTE_GUARDS); NULL: none.
    blocked_guard  text CHECK (blocked_guard IN ('unverified', 'secondary_stopped', 'balance',
                              'price', 'depth', 'no_reference', 'admin_forbids', 'admin_hold')),
    -- An admin's: a secondary's name (forced, still guarded), 'none' (routing forbidden), or
    -- NULL (automatic).
    override       text,
    override_by    text,
    override_at    timestamptz,
    -- Routes started, ever: liquid_abt_purchase_failovers_total.
    failovers      bigint NOT NULL DEFAULT 0,
    -- The primary's last good mid and when its check read it: failover's reference price once
    -- the primary's checks fail (exchange_verifications then holds no quote for it).
    reference_mid  numeric CHECK (reference_mid > 0),
    reference_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The exchange a claimed retry is to be bought on (the routed claim sets it: the secondary while
-- purchases are routed, else the purchase's own exchange); NULL for rows claimed without routes.
ALTER TABLE liquid_abt.retry_queue ADD COLUMN retry_on text;
