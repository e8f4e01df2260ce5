-- The LIQUID ABT platform tables as the runbooks query them, for development, demos and tests.
-- A production platform has its own; the exporter only reads them (see README, "Indexes").

CREATE TABLE IF NOT EXISTS bitcoin_purchases (
    id                   bigserial PRIMARY KEY,
    tenant_id            text NOT NULL,
    amount_aud           numeric(18, 2) NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'refunded')),
    failure_reason       text,
    exchange_provider    text NOT NULL DEFAULT 'kraken',
    retry_count          integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    refund_processed_at  timestamptz,
    refund_amount        numeric(18, 2)
);
-- The collectors read a window of recent rows: the cost follows the window, not the table.
CREATE INDEX IF NOT EXISTS bitcoin_purchases_created_at ON bitcoin_purchases (created_at);
CREATE INDEX IF NOT EXISTS bitcoin_purchases_failed_created_at
    ON bitcoin_purchases (created_at) WHERE status = 'failed';

CREATE TABLE IF NOT EXISTS api_call_logs (
    id                   bigserial PRIMARY KEY,
    provider             text NOT NULL,
    endpoint             text NOT NULL,
    success              boolean NOT NULL,
    response_time        integer,  -- milliseconds
    error_message        text,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS api_call_logs_created_at ON api_call_logs (created_at);

CREATE TABLE IF NOT EXISTS tenant_accounts (
    tenant_id            text PRIMARY KEY,
    balance_aud          numeric(18, 2) NOT NULL DEFAULT 0
);
