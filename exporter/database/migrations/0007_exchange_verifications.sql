-- Failover's evidence: the latest recovery check of each exchange, with the market it saw. A
-- secondary exchange may take purchases only while its row is recent and passed; the guards
-- (price deviation, book depth, balance) read the quote beside it. The primary's passing rows
-- give the reference price (its last good mid). One row per exchange: the newest check wins,
-- whichever replica ran it.
CREATE TABLE liquid_abt.exchange_verifications (
    exchange     text PRIMARY KEY,
    replica      text NOT NULL,
    -- When the check finished.
    checked_at   timestamptz NOT NULL,
    ok           boolean NOT NULL,
    -- [{"name": ..., "ok": ..., "detail": ...}], as RecoveryResult.checks.
    checks       jsonb NOT NULL DEFAULT '[]',
    -- The quote (exporter/signals/exchange.py Quote); NULL where the check could not read it.
    best_bid     numeric CHECK (best_bid > 0),
    best_ask     numeric CHECK (best_ask > 0),
    -- [[price, volume], ...] best (lowest) first, as deep as the exchange's book call returned.
    asks         jsonb NOT NULL DEFAULT '[]',
    -- AUD available to buy with; NULL without a read-only key.
    balance_aud  numeric CHECK (balance_aud >= 0),
    -- Newest passing check: a failed check does not erase when the exchange was last verified.
    verified_at  timestamptz
);
