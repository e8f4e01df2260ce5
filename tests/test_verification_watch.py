"""The verification watch against a real PostgreSQL and the fake secondary exchanges: the rows of
liquid_abt.exchange_verifications that failover reads, one statement per write, none when another
replica wrote the row within the interval or when the primary has nothing new. The loop's one
step is called directly on a simulated monotonic clock; the rows are aged to move time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls import verifications
from exporter.database.pool import Connection
from exporter.runbook.verification_watch import (
    ObservedProbe,
    Target,
    VerificationMetrics,
    VerificationWatch,
)
from exporter.secrets import Secrets
from exporter.signals.exchange import Check, Probe, Quote, RecoveryResult, RoundResult, round_of
from exporter.signals.integrations import default_registry
from liquid_abt_drill.exchanges.base import REFERENCE_PRICE, Mode
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve

KEY, SECRET = "watch-key", "an Independent Reserve secret of the watch tests"
INTERVAL = 15.0


class Clock:
    """The watch's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingPool:
    """The pool, counting the statements the watch sends."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements = 0

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.statements += 1
        return await self.conn.fetchrow(sql, *args)


@pytest.fixture
async def fake_ir() -> AsyncIterator[FakeIndependentReserve]:
    fake = FakeIndependentReserve(api_key=KEY, api_secret=SECRET)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def pool(database: Connection) -> AsyncIterator[CountingPool]:
    conn = await asyncpg.connect(database.dsn)
    yield CountingPool(conn)
    await conn.close()


def ir_probe(fake: FakeIndependentReserve, session: aiohttp.ClientSession) -> Probe:
    config = parse_config({
        "exchanges": {"kraken": {"role": "primary"}, "independentreserve": {"role": "secondary"}},
        "independentreserve": {"enabled": True, "base_url": fake.url, "timeout": "1s",
                               "call_spacing": "1ms"},
    })  # fmt: skip
    integration = default_registry().probed(config, "independentreserve")
    assert integration is not None
    env = {"INDEPENDENTRESERVE_API_KEY": KEY, "INDEPENDENTRESERVE_API_SECRET": SECRET}
    return integration.probe(config, Secrets.from_env(env), session, CollectorRegistry())


def watch_of(
    pool: CountingPool, replica: str, targets: list[Target], clock: Clock
) -> tuple[VerificationWatch, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = VerificationMetrics(registry, {t.exchange: "secondary" for t in targets})
    watch = VerificationWatch(pool, replica, targets, metrics, clock=clock)  # type: ignore[arg-type]
    return watch, registry


async def row(db: asyncpg.Connection, exchange: str) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT * FROM liquid_abt.exchange_verifications WHERE exchange = $1", exchange
    )


async def age_rows(db: asyncpg.Connection, seconds: float) -> None:
    """Move time: every row was written `seconds` earlier."""
    await db.execute(
        """UPDATE liquid_abt.exchange_verifications
           SET checked_at = checked_at - make_interval(secs => $1),
               verified_at = verified_at - make_interval(secs => $1)""",
        seconds,
    )


async def test_a_secondarys_check_is_written_with_its_quote(
    pool: CountingPool, db: asyncpg.Connection, fake_ir: FakeIndependentReserve,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    fake_ir.state.set_market(balances={"AUD": "3100.25"})
    probe = ir_probe(fake_ir, session)
    clock = Clock()
    target = Target("independentreserve", INTERVAL, probe.recovery_check, 5.0)
    watch, registry = watch_of(pool, "replica-a", [target], clock)

    wait = await watch.step()

    assert pool.statements == 1
    found = await row(db, "independentreserve")
    bids, asks = fake_ir.state.book()
    assert (found["replica"], found["ok"]) == ("replica-a", True)
    assert found["verified_at"] == found["checked_at"]
    assert (found["best_bid"], found["best_ask"]) == (bids[0][0], asks[0][0])
    assert found["balance_aud"] == Decimal("3100.25")
    assert json.loads(found["asks"])[0] == [str(asks[0][0]), str(asks[0][1])]
    assert [c["name"] for c in json.loads(found["checks"])] == [
        "system_status", "price", "balance", "order_book",
    ]  # fmt: skip
    assert INTERVAL - 1 <= wait <= INTERVAL * 1.1, "due again one interval on, jittered"
    labels = {"exchange": "independentreserve"}
    assert registry.get_sample_value("liquid_abt_exchange_verification_ok", labels) == 1
    verified = registry.get_sample_value("liquid_abt_exchange_verified_timestamp_seconds", labels)
    assert verified == pytest.approx(found["verified_at"].timestamp())

    read = await verifications.read_all(db)
    assert read["independentreserve"].quote.mid == REFERENCE_PRICE
    assert read["independentreserve"].quote.asks[0] == (asks[0][0], asks[0][1])


async def test_another_replicas_fresh_row_is_not_written_again(
    pool: CountingPool, db: asyncpg.Connection, fake_ir: FakeIndependentReserve,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    probe, clock = ir_probe(fake_ir, session), Clock()
    a, _ = watch_of(
        pool, "replica-a", [Target("independentreserve", INTERVAL, probe.recovery_check)], clock
    )
    b, b_metrics = watch_of(pool, "replica-b", [Target("independentreserve", INTERVAL, probe.recovery_check)], clock)  # fmt: skip
    await a.step()
    first = await row(db, "independentreserve")

    wait = await b.step()

    assert pool.statements == 2, "one statement each"
    assert await row(db, "independentreserve") == first, "replica-b did not write"
    assert b_metrics.get_sample_value(
        "liquid_abt_exchange_verification_ok", {"exchange": "independentreserve"}
    ) == 1, "replica-b reports the shared row"  # fmt: skip
    assert wait <= INTERVAL * 1.1
    clock.now += 1.0
    assert await b.step() > 0 and pool.statements == 2, "not due: no check, no statement"

    await age_rows(db, INTERVAL)
    clock.now += INTERVAL * 1.2  # past the jitter too
    await b.step()
    assert (await row(db, "independentreserve"))["replica"] == "replica-b", "due: written"


async def test_a_failed_check_is_written_and_keeps_the_last_verification(
    pool: CountingPool, db: asyncpg.Connection, fake_ir: FakeIndependentReserve,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    probe, clock = ir_probe(fake_ir, session), Clock()
    watch, registry = watch_of(pool, "replica-a", [Target("independentreserve", INTERVAL, probe.recovery_check)], clock)  # fmt: skip
    await watch.step()
    await age_rows(db, INTERVAL)
    verified = (await row(db, "independentreserve"))["verified_at"]
    await fake_ir.set_mode(Mode.SERVER_ERROR, http_status=503)
    clock.now += INTERVAL * 1.2

    await watch.step()

    found = await row(db, "independentreserve")
    assert found["ok"] is False and found["verified_at"] == verified
    assert found["checked_at"] > verified
    assert (found["best_bid"], found["best_ask"], found["balance_aud"]) == (None, None, None)
    checks = json.loads(found["checks"])
    assert checks[0]["name"] == "system_status" and not checks[0]["ok"]
    assert "service_unavailable" in checks[0]["detail"]
    labels = {"exchange": "independentreserve"}
    assert registry.get_sample_value("liquid_abt_exchange_verification_ok", labels) == 0
    assert registry.get_sample_value(
        "liquid_abt_exchange_verified_timestamp_seconds", labels
    ) == pytest.approx(verified.timestamp())  # fmt: skip


async def test_a_check_that_does_not_end_in_time_fails(
    pool: CountingPool, db: asyncpg.Connection, fake_ir: FakeIndependentReserve,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    await fake_ir.set_mode(Mode.HANGING)
    probe, clock = ir_probe(fake_ir, session), Clock()
    target = Target("independentreserve", INTERVAL, probe.recovery_check, time_limit=0.2)
    watch, _ = watch_of(pool, "replica-a", [target], clock)
    await watch.step()
    found = await row(db, "independentreserve")
    assert (found["ok"], found["verified_at"]) == (False, None)
    assert json.loads(found["checks"]) == [
        {"name": "verifier", "ok": False, "detail": "no answer within 0.2s"}
    ]


QUOTE = Quote(Decimal("150000"), Decimal("150010"), ((Decimal("150010"), Decimal("0.5")),), None)


class StubProbe:
    """A primary's probe whose next round and check the test sets."""

    def __init__(self) -> None:
        self.round = round_of()
        self.check = RecoveryResult(True, (Check("price", True, "ok"),), QUOTE)

    async def run_once(self) -> RoundResult:
        return self.round

    async def recovery_check(self) -> RecoveryResult:
        return self.check


async def test_the_primarys_good_rounds_give_its_last_good_market(
    pool: CountingPool, db: asyncpg.Connection
) -> None:
    clock, stub = Clock(), StubProbe()
    watch, _ = watch_of(pool, "replica-a", [Target("kraken", INTERVAL)], clock)
    observed = ObservedProbe(stub, "kraken", watch)

    await watch.step()
    assert pool.statements == 0, "nothing seen yet: no statement"

    stub.round = RoundResult(True, "success", round_of().calls, "online", QUOTE)
    await observed.run_once()
    clock.now += INTERVAL
    await watch.step()
    found = await row(db, "kraken")
    assert (found["ok"], found["best_bid"], found["best_ask"]) == (
        True,
        QUOTE.best_bid,
        QUOTE.best_ask,
    )
    assert json.loads(found["checks"])[0]["name"] == "probe_round"
    assert pool.statements == 1

    # Kraken fails: its failed rounds and checks are not evidence of a market; the row keeps
    # the last good one, and the watch sends nothing.
    stub.round = round_of("network_error")
    stub.check = RecoveryResult(False, (Check("system_status", False, "timeout"),))
    await observed.run_once()
    await observed.recovery_check()
    await age_rows(db, INTERVAL)
    clock.now += INTERVAL * 1.2
    await watch.step()
    assert pool.statements == 1
    assert (await row(db, "kraken"))["best_ask"] == QUOTE.best_ask

    # Back: a passing recovery check writes its own checks.
    stub.check = RecoveryResult(True, (Check("price", True, "ok"),), QUOTE)
    await observed.recovery_check()
    clock.now += INTERVAL * 1.2
    await watch.step()
    found = await row(db, "kraken")
    assert json.loads(found["checks"]) == [{"name": "price", "ok": True, "detail": "ok"}]
    assert found["verified_at"] == found["checked_at"]
