"""Rows in bitcoin_purchases and api_call_logs become exactly the expected samples at /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.labels import REASON_CLASSES
from exporter.signals.classify import ReasonClassifier
from exporter.web.app import create_app
from exporter.web.keys import RUNNERS
from tests.helpers import scrape, series, value

# Long interval: the tests refresh explicitly, so the background loop never races them.
CONFIG = parse_config(
    {"collectors": {"interval": "1h", "timeout": "10s"}, "kraken": {"enabled": False}}
)


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(CONFIG, database))


async def refresh(client: TestClient) -> None:
    for runner in client.app[RUNNERS]:
        assert await runner.refresh(), f"refresh of {runner.name} failed"


async def purchase(
    db: asyncpg.Connection,
    minutes_ago: float,
    status: str,
    reason: str | None = None,
    amount: float = 100.0,
    tenant: str = "t1",
    exchange: str = "kraken",
    retry_count: int = 0,
) -> None:
    await db.execute(
        """INSERT INTO bitcoin_purchases
           (tenant_id, amount_aud, status, failure_reason, exchange_provider, retry_count, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, now() - make_interval(secs => $7::float8))""",
        tenant, amount, status, reason, exchange, retry_count, minutes_ago * 60,
    )  # fmt: skip


async def test_purchases_by_window_and_status(client: TestClient, db: asyncpg.Connection) -> None:
    await purchase(db, 2, "completed")
    await purchase(db, 3, "failed", "EService:Unavailable", amount=250.5, tenant="a")
    await purchase(db, 10, "failed", "EAPI:Rate limit exceeded", amount=100, tenant="b")
    await purchase(db, 10, "pending")
    await purchase(db, 30, "completed")
    await purchase(db, 40, "refunded", "insufficient_funds", tenant="c")
    await purchase(db, 61, "failed", "EService:Unavailable")  # just outside every window
    await refresh(client)
    s = await scrape(client)

    def purchases(window: str, status: str) -> float:
        return value(s, "liquid_abt_purchases", window=window, exchange="kraken", status=status)

    assert [purchases("5m", st) for st in ("completed", "failed", "pending", "refunded")] == [
        1,
        1,
        0,
        0,
    ]
    assert [purchases("15m", st) for st in ("completed", "failed", "pending", "refunded")] == [
        1,
        2,
        1,
        0,
    ]
    assert [purchases("1h", st) for st in ("completed", "failed", "pending", "refunded")] == [
        2,
        2,
        1,
        1,
    ]

    ratio = "liquid_abt_purchase_failure_ratio"
    assert value(s, ratio, window="5m", exchange="kraken") == pytest.approx(1 / 2)
    assert value(s, ratio, window="15m", exchange="kraken") == pytest.approx(2 / 3)
    assert value(s, ratio, window="1h", exchange="kraken") == pytest.approx(2 / 5)
    assert value(s, ratio, window="1h", exchange="other") == 0

    amount = "liquid_abt_purchase_failed_amount_aud"
    assert value(s, amount, window="5m", exchange="kraken") == pytest.approx(250.5)
    assert value(s, amount, window="1h", exchange="kraken") == pytest.approx(350.5)
    tenants = "liquid_abt_purchase_affected_tenants"
    assert value(s, tenants, window="5m", exchange="kraken") == 1
    assert value(s, tenants, window="15m", exchange="kraken") == 2


async def test_failures_by_reason_class(client: TestClient, db: asyncpg.Connection) -> None:
    await purchase(db, 1, "failed", "EService:Unavailable")
    await purchase(db, 1, "failed", "Kraken API error: 503 Service Unavailable")
    await purchase(db, 1, "failed", "EOrder:Insufficient funds")
    await purchase(db, 1, "failed", "request timed out")
    await purchase(db, 1, "failed", "a message nobody classified")
    await refresh(client)
    s = await scrape(client)
    failures = {
        dict(labels)["reason"]: v
        for labels, v in series(s, "liquid_abt_purchase_failures").items()
        if dict(labels)["window"] == "5m" and dict(labels)["exchange"] == "kraken"
    }
    assert failures == {
        **dict.fromkeys(REASON_CLASSES, 0.0),
        "exchange_unavailable": 2,
        "insufficient_funds": 1,
        "network_timeout": 1,
        "other": 1,
    }


async def test_retry_eligible_follows_the_runbook_criteria(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await purchase(db, 5, "failed", "EService:Unavailable")  # eligible
    await purchase(db, 50, "failed", "request timed out", retry_count=2)  # eligible
    await purchase(db, 5, "failed", "insufficient_funds")  # excluded reason
    await purchase(db, 5, "failed", "invalid_amount")  # excluded reason
    await purchase(db, 5, "failed", "EService:Unavailable", retry_count=3)  # retried enough
    await purchase(db, 65, "failed", "EService:Unavailable")  # older than an hour
    await purchase(db, 5, "completed")
    await refresh(client)
    s = await scrape(client)
    assert value(s, "liquid_abt_purchase_retry_eligible", exchange="kraken") == 2


async def test_unknown_exchanges_and_statuses_stay_in_the_closed_sets(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await purchase(db, 1, "failed", "EService:Unavailable", exchange="Binance")
    await purchase(db, 1, "completed", exchange="KRAKEN")
    await db.execute("ALTER TABLE bitcoin_purchases DROP CONSTRAINT bitcoin_purchases_status_check")
    await db.execute(
        "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status) VALUES ('t', 1, 'weird')"
    )
    await refresh(client)
    s = await scrape(client)
    assert value(s, "liquid_abt_purchases", window="5m", exchange="other", status="failed") == 1
    assert value(s, "liquid_abt_purchases", window="5m", exchange="kraken", status="completed") == 1
    statuses = {dict(labels)["status"] for labels in series(s, "liquid_abt_purchases")}
    assert statuses == {"pending", "completed", "failed", "refunded"}
    exchanges = {dict(labels)["exchange"] for labels in series(s, "liquid_abt_purchases")}
    assert exchanges == {"kraken", "other"}


async def test_every_series_exists_before_any_purchase(client: TestClient) -> None:
    await refresh(client)
    s = await scrape(client)
    # 3 windows x 2 exchanges (kraken, other) x 4 statuses, all zero.
    purchases = series(s, "liquid_abt_purchases")
    assert len(purchases) == 24 and set(purchases.values()) == {0.0}
    assert len(series(s, "liquid_abt_purchase_failures")) == 3 * 2 * len(REASON_CLASSES)
    assert value(s, "liquid_abt_circuit_breaker_state", exchange="kraken", state="closed") == 1
    assert value(s, "liquid_abt_circuit_breaker_state", exchange="kraken", state="open") == 0


async def api_call(
    db, minutes_ago: float, endpoint: str, success: bool, ms: int, provider="kraken"
):
    await db.execute(
        """INSERT INTO api_call_logs (provider, endpoint, success, response_time, created_at)
           VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5::float8))""",
        provider, endpoint, success, ms, minutes_ago * 60,
    )  # fmt: skip


async def test_platform_api_calls_mean_and_p95(client: TestClient, db: asyncpg.Connection) -> None:
    for ms in range(100, 2100, 100):  # 20 calls, 100..2000 ms
        await api_call(db, 1, "getCurrentPrice", True, ms)
    await api_call(db, 2, "getCurrentPrice", False, 30000)
    await api_call(db, 10, "getBalance", False, 4000)
    await api_call(db, 1, "someInternalThing", True, 50)
    await api_call(db, 70, "getBalance", True, 1)  # outside the windows
    await refresh(client)
    s = await scrape(client)
    calls = "liquid_abt_platform_api_calls"
    assert (
        value(s, calls, window="5m", exchange="kraken", endpoint="getCurrentPrice", success="true")
        == 20
    )
    assert (
        value(s, calls, window="5m", exchange="kraken", endpoint="getCurrentPrice", success="false")
        == 1
    )
    assert (
        value(s, calls, window="5m", exchange="kraken", endpoint="getBalance", success="false") == 0
    )
    assert (
        value(s, calls, window="15m", exchange="kraken", endpoint="getBalance", success="false")
        == 1
    )
    assert value(s, calls, window="5m", exchange="kraken", endpoint="other", success="true") == 1
    mean = "liquid_abt_platform_api_mean_response_time_seconds"
    expected_mean = (sum(range(100, 2100, 100)) + 30000) / 21 / 1000
    assert value(
        s, mean, window="5m", exchange="kraken", endpoint="getCurrentPrice"
    ) == pytest.approx(expected_mean)
    p95 = "liquid_abt_platform_api_p95_response_time_seconds"
    # percentile_cont over 21 values: position 0.95 * 20 = 19, the 20th value, 2000 ms.
    assert value(
        s, p95, window="5m", exchange="kraken", endpoint="getCurrentPrice"
    ) == pytest.approx(2.0)
    assert value(s, mean, window="1h", exchange="kraken", endpoint="getBalance") == pytest.approx(
        4.0
    )
    assert value(s, mean, window="1h", exchange="kraken", endpoint="placeOrder") == 0


@pytest.mark.parametrize(
    "patterns",
    [
        {},  # the defaults: PostgreSQL classifies ASCII texts, Python the others
        {"purchases": {"failure_reasons": {"maintenance": ["(?=x)wartung"]}}},  # all in Python
    ],
)
async def test_reasons_postgresql_must_not_judge_are_classified_in_python(
    aiohttp_client, database: Connection, db: asyncpg.Connection, patterns: dict
) -> None:
    config = parse_config({**CONFIG.model_dump(mode="json"), **patterns})
    client = await aiohttp_client(create_app(config, database))
    await purchase(db, 1, "failed", "EService:Unavailable — Kraken indisponible")  # non-ASCII
    await purchase(db, 1, "failed", "Wartung \u212aRAKEN", retry_count=5)  # KELVIN SIGN
    await purchase(db, 1, "failed", "EAPI:Rate limit exceeded")
    await purchase(db, 1, "completed")
    await refresh(client)
    s = await scrape(client)
    failures = {
        dict(labels)["reason"]: v
        for labels, v in series(s, "liquid_abt_purchase_failures").items()
        if dict(labels)["window"] == "5m" and dict(labels)["exchange"] == "kraken" and v
    }
    classify = ReasonClassifier(config.purchases.failure_reasons).classify
    texts = [
        "EService:Unavailable — Kraken indisponible",
        "Wartung \u212aRAKEN",
        "EAPI:Rate limit exceeded",
    ]
    expected: dict[str, float] = {}
    for text in texts:
        expected[classify(text)] = expected.get(classify(text), 0) + 1
    assert failures == expected
    assert value(s, "liquid_abt_purchases", window="5m", exchange="kraken", status="failed") == 3
    assert value(s, "liquid_abt_purchase_retry_eligible", exchange="kraken") == 2
