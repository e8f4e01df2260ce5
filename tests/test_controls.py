"""Pause, resume and the API rate: idempotent, audited, row-locked, manual holds respected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from exporter.controls import api_rate, audit, gate
from exporter.controls import pause as controls
from exporter.database.pool import Connection
from tests.helpers import wait_until


@pytest.fixture
async def pools(database: Connection) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools, as two replicas of the exporter would have."""
    first = await asyncpg.create_pool(database.dsn, min_size=4, max_size=4)
    second = await asyncpg.create_pool(database.dsn, min_size=4, max_size=4)
    yield first, second
    await first.close()
    await second.close()


async def auto_pause(db, exchange: str = "kraken", fingerprint: str | None = "fp1") -> bool:
    return await controls.pause(
        db, exchange, reason="Exchange API maintenance", estimated_duration="30 minutes",
        actor="automation", cause="ExchangeApiDown firing", fingerprint=fingerprint,
    )  # fmt: skip


async def manual_pause(db, exchange: str = "kraken") -> bool:
    return await controls.pause(
        db, exchange, reason="treasury review", estimated_duration=None, actor="admin",
        cause="treasury review", manual=True,
    )  # fmt: skip


async def auto_resume(db, exchange: str = "kraken") -> controls.ResumeResult:
    return await controls.resume(
        db, exchange, actor="automation", cause="recovered", fingerprint="fp1"
    )


async def actions(db: asyncpg.Connection, action: str) -> list[tuple[str, str]]:
    """(actor, result) of each audit entry of `action`, oldest first."""
    found = await audit.entries(db, limit=1000)
    return [(e["actor"], e["result"]) for e in reversed(found) if e["action"] == action]


async def test_an_exchange_never_touched_has_the_defaults(db: asyncpg.Connection) -> None:
    status = await controls.status(db, "kraken")
    assert status == controls.ControlStatus("kraken")
    assert not status.purchases_paused and status.api_rate_multiplier == 1.0
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.exchange_controls") == 0


async def test_pause_is_idempotent_and_every_call_is_audited(db: asyncpg.Connection) -> None:
    assert await auto_pause(db) is True
    first = await controls.status(db, "kraken")
    assert await auto_pause(db, fingerprint="fp2") is False
    status = await controls.status(db, "kraken")
    assert status == first  # the second call changed nothing, not even the fingerprint
    assert status.purchases_paused and status.pause_reason == "Exchange API maintenance"
    assert status.pause_estimated_duration == "30 minutes"
    assert status.paused_by_fingerprint == "fp1" and not status.manual_hold
    assert status.paused_at is not None
    assert await actions(db, "pause_purchases") == [
        ("automation", "success"),
        ("automation", "unchanged"),
    ]
    entry = (await audit.entries(db, limit=2))[1]
    assert entry["exchange"] == "kraken" and entry["cause"] == "ExchangeApiDown firing"
    assert entry["fingerprint"] == "fp1" and entry["detail"]["reason"] == "Exchange API maintenance"


async def test_resume_is_idempotent(db: asyncpg.Connection) -> None:
    await auto_pause(db)
    resumed = await auto_resume(db)
    assert (resumed.changed, resumed.refused) == (True, False)
    assert resumed.status == controls.ControlStatus("kraken")
    again = await auto_resume(db)
    assert (again.changed, again.refused, again.message) == (
        False,
        False,
        "purchases are not paused",
    )
    assert await actions(db, "resume_purchases") == [
        ("automation", "success"),
        ("automation", "unchanged"),
    ]


async def test_automation_never_lifts_a_manual_hold(db: asyncpg.Connection) -> None:
    assert await manual_pause(db) is True
    refused = await auto_resume(db)
    assert refused.refused and not refused.changed
    assert "manual hold" in refused.message
    status = await controls.status(db, "kraken")
    assert status.purchases_paused and status.manual_hold
    assert await actions(db, "resume_purchases") == [("automation", "refused")]

    lifted = await controls.resume(db, "kraken", actor="admin", cause="review done", manual=True)
    assert lifted.changed and not lifted.refused
    assert lifted.status == controls.ControlStatus("kraken")
    assert await actions(db, "resume_purchases") == [
        ("automation", "refused"),
        ("admin", "success"),
    ]


async def test_a_manual_pause_turns_an_automatic_pause_into_a_hold(db: asyncpg.Connection) -> None:
    await auto_pause(db)
    before = await controls.status(db, "kraken")
    assert await manual_pause(db) is True
    status = await controls.status(db, "kraken")
    assert status.manual_hold and status.pause_reason == "treasury review"
    assert status.paused_at == before.paused_at  # still the start of the pause
    assert await manual_pause(db) is False
    assert (await auto_resume(db)).refused
    assert (await controls.status(db, "kraken")).purchases_paused


async def test_an_automatic_pause_does_not_weaken_a_manual_hold(db: asyncpg.Connection) -> None:
    await manual_pause(db)
    assert await auto_pause(db) is False
    status = await controls.status(db, "kraken")
    assert status.manual_hold and status.pause_reason == "treasury review"


async def test_controls_are_per_exchange(db: asyncpg.Connection) -> None:
    await auto_pause(db, "kraken")
    assert not (await controls.status(db, "binance")).purchases_paused
    found = await controls.statuses(db, ["binance", "kraken"])
    assert [(s.exchange, s.purchases_paused) for s in found] == [
        ("binance", False),
        ("kraken", True),
    ]


async def test_rate_multiplier_lowered_and_restored(db: asyncpg.Connection) -> None:
    async def set_rate(value: float) -> bool:
        return await api_rate.set_rate_multiplier(
            db, "kraken", value, actor="automation", cause="KrakenRateLimited"
        )

    assert await set_rate(0.5) is True
    assert (await controls.status(db, "kraken")).api_rate_multiplier == 0.5
    assert await set_rate(0.5) is False
    assert await set_rate(1) is True
    assert (await controls.status(db, "kraken")).api_rate_multiplier == 1.0
    assert await actions(db, "set_api_rate_multiplier") == [
        ("automation", "success"), ("automation", "unchanged"), ("automation", "success"),
    ]  # fmt: skip
    entry = (await audit.entries(db, limit=1))[0]
    assert entry["detail"] == {"from": 0.5, "to": 1.0}


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
async def test_rate_multiplier_must_be_positive_and_finite(
    db: asyncpg.Connection, bad: float
) -> None:
    with pytest.raises(ValueError, match="invalid API rate multiplier"):
        await api_rate.set_rate_multiplier(db, "kraken", bad, actor="admin", cause=None)
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log") == 0


async def test_pause_and_its_audit_entry_commit_or_roll_back_together(
    db: asyncpg.Connection,
) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await auto_pause(db)
            raise RuntimeError("the caller's transaction fails")
    assert not (await controls.status(db, "kraken")).purchases_paused
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log") == 0


async def blocked_on_locks(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'"""
    )


async def test_concurrent_pauses_from_two_replicas_change_the_row_once(
    db: asyncpg.Connection, pools
) -> None:
    """All calls start while the row is locked, so all see it unpaused unless they lock it too."""
    first, second = pools
    await db.execute("INSERT INTO liquid_abt.exchange_controls (exchange) VALUES ('kraken')")
    holder = db.transaction()
    await holder.start()
    await db.execute(
        "SELECT 1 FROM liquid_abt.exchange_controls WHERE exchange = 'kraken' FOR UPDATE"
    )
    calls = [
        asyncio.create_task(auto_pause(first if i % 2 else second, fingerprint=f"fp{i}"))
        for i in range(6)
    ]
    await wait_until(lambda: _all_blocked(db, len(calls)))
    await holder.commit()
    results = await asyncio.gather(*calls)
    assert results.count(True) == 1
    assert await actions(db, "pause_purchases") == (
        [("automation", "success")] + [("automation", "unchanged")] * 5
    )


async def _all_blocked(db: asyncpg.Connection, count: int) -> bool:
    return await blocked_on_locks(db) >= count


async def test_concurrent_pauses_and_resumes_never_interleave(pools) -> None:
    """Whatever the order, the audit log replays into the final state: each call saw the last."""
    first, second = pools
    calls = [auto_pause(first), auto_resume(second)] * 10
    await asyncio.gather(*calls)
    async with first.acquire() as connection:
        entries = list(reversed(await audit.entries(connection, limit=100)))
        paused = False
        for entry in entries:
            pausing = entry["action"] == "pause_purchases"
            # A call changed the row exactly when it found it in the other state.
            assert (entry["result"] == "success") == (pausing != paused), entries
            if entry["result"] == "success":
                paused = pausing
        assert (await controls.status(connection, "kraken")).purchases_paused == paused


async def test_the_platforms_gate_reads_pause_breaker_and_rate(db: asyncpg.Connection) -> None:
    found = await gate.purchase_gate(db, "kraken")
    assert found == gate.PurchaseGate("kraken", False, "closed", 1.0, "kraken") and found.may_buy
    await auto_pause(db)
    await api_rate.set_rate_multiplier(db, "kraken", 0.5, actor="automation", cause="rate limited")
    found = await gate.purchase_gate(db, "kraken")
    assert (found.purchases_paused, found.api_rate_multiplier, found.may_buy) == (True, 0.5, False)
    await auto_resume(db)
    for state, may_buy in (("open", False), ("half_open", True), ("closed", True)):
        await db.execute(
            """INSERT INTO liquid_abt.circuit_breakers (exchange, state) VALUES ('kraken', $1)
               ON CONFLICT (exchange) DO UPDATE SET state = excluded.state""",
            state,
        )
        found = await gate.purchase_gate(db, "kraken")
        assert (found.breaker_state, found.may_buy) == (state, may_buy)
