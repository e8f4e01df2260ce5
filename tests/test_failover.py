"""Failover against a real PostgreSQL: the incident model's executor routes in the decision's
transaction, the gate's `buy_on` and the routed claim follow, a stale route expires in the gate,
and the dry run only records. Verification rows are inserted directly (the markets' probes have
their own tests); time moves by ageing rows, never by sleeping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import Config, parse_config
from exporter.controls import gate, pause, retry_queue
from exporter.controls.breaker import BreakerStore
from exporter.database.pool import Connection, create_pool
from exporter.runbook.incident import IncidentModel
from exporter.runbook.incident import route_store as routes
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from tests.test_incident import DOWN, HEALTHY

pytestmark = pytest.mark.db

IR = "independentreserve"
RAW = {
    "exchanges": {"kraken": {"role": "primary"}, IR: {"role": "secondary"}},
    "kraken": {"enabled": False},
    IR: {"enabled": True},
}
CONFIG = parse_config(RAW)


@pytest.fixture
async def pool(database: Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database, CONFIG.database)
    yield pool
    await pool.close()


def model(pool: asyncpg.Pool, config: Config = CONFIG) -> IncidentModel:
    registry = CollectorRegistry()
    return IncidentModel(
        pool, config, BreakerStore(pool, config, registry), ActionMetrics(registry),
        IncidentMetrics(registry, list(config.exchanges)), replica="replica-a",
    )  # fmt: skip


async def verified(
    db: asyncpg.Connection, exchange: str, *, age: float = 5, ok: bool = True,
    ask: str = "100100", bid: str = "99900", balance: str | None = "50000", depth: str = "1",
) -> None:  # fmt: skip
    """A verification row as the markets' probes write it, `age` seconds old."""
    await db.execute(
        """INSERT INTO liquid_abt.exchange_verifications
               (exchange, replica, checked_at, ok, best_bid, best_ask, asks, balance_aud,
                verified_at)
           VALUES ($1, 'replica-m', now() - make_interval(secs => $2), $3, $4::numeric,
                   $5::numeric, $6::jsonb, $7::numeric,
                   CASE WHEN $3 THEN now() - make_interval(secs => $2) END)
           ON CONFLICT (exchange) DO UPDATE
           SET checked_at = excluded.checked_at, ok = excluded.ok, best_bid = excluded.best_bid,
               best_ask = excluded.best_ask, asks = excluded.asks,
               balance_aud = excluded.balance_aud,
               verified_at = coalesce(excluded.verified_at,
                                      liquid_abt.exchange_verifications.verified_at)""",
        exchange, float(age), ok, bid, ask, json.dumps([[ask, depth]]), balance,
    )  # fmt: skip


async def waiting(db: asyncpg.Connection, aud: str = "1000") -> None:
    await db.execute(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason,
                                          exchange_provider, created_at)
           VALUES ('tenant-1', $1::numeric, 'failed', 'EService:Unavailable',
                   'kraken', now() - interval '10 seconds')""",
        aud,
    )


async def kraken_down(m: IncidentModel) -> None:
    for _ in range(2):
        await m.observe("kraken", DOWN)


async def test_kraken_down_routes_to_a_verified_secondary_and_the_gate_says_so(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await verified(db, "kraken", ask="100050", bid="99950")
    await verified(db, IR)
    await waiting(db)
    m = model(pool)
    await kraken_down(m)
    found = await gate.purchase_gate(db, "kraken")
    # Today's columns unchanged (paused, breaker open); buy_on names the secondary.
    assert (found.purchases_paused, found.breaker_state, found.may_buy) == (True, "open", False)
    assert found.buy_on == IR and found.routed
    row = await routes.peek(db, "kraken")
    assert row.routed_to == IR and row.failovers == 1 and row.blocked_guard is None
    audit = await db.fetchrow("SELECT * FROM liquid_abt.audit_log WHERE action = 'route_purchases'")
    detail = json.loads(audit["detail"])
    assert audit["exchange"] == "kraken" and f"to {IR}" in audit["cause"]
    assert detail["reference"]["source"] == "kraken mid" and detail["route"] == IR
    # The queued retry follows the route: the routed claim hands it out for the secondary; the
    # claim of a platform that ignores routes hands out nothing, as before.
    assert await retry_queue.claim_due(db, 10) == []
    claimed = await retry_queue.claim_routed(db, 10)
    assert [e.retry_on for e in claimed] == [IR]


async def test_a_stale_route_expires_in_the_gate_without_a_decision(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await verified(db, "kraken")
    await verified(db, IR)
    await kraken_down(model(pool))
    assert (await gate.purchase_gate(db, "kraken")).buy_on == IR
    # What the customer notices say: purchases continue on the secondary the gate names.
    assert (await routes.routed_to(db, "kraken"), await routes.routed_to(db, IR)) == (IR, None)
    await db.execute(
        "UPDATE liquid_abt.purchase_routes SET valid_until = now() - interval '1 second'"
    )
    assert (await gate.purchase_gate(db, "kraken")).buy_on is None
    assert await routes.routed_to(db, "kraken") is None


async def test_the_gate_never_follows_a_route_over_a_hold_or_a_stopped_secondary(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await verified(db, "kraken")
    await verified(db, IR)
    await kraken_down(model(pool))
    await pause.pause(db, IR, reason="ops", estimated_duration=None, actor="admin", cause="x")
    assert (await gate.purchase_gate(db, "kraken")).buy_on is None
    await pause.resume(db, IR, actor="admin", cause="x")
    assert (await gate.purchase_gate(db, "kraken")).buy_on == IR
    await pause.pause(db, "kraken", reason="hold", estimated_duration=None, actor="admin",
                      cause="hold", manual=True)  # fmt: skip
    assert (await gate.purchase_gate(db, "kraken")).buy_on is None


@pytest.mark.parametrize(
    ("arrange", "guard"),
    [
        ({"age": 61}, "unverified"),
        ({"ask": "103000"}, "price"),
        ({"depth": "0.001"}, "depth"),
        ({"balance": "10"}, "balance"),
    ],
)
async def test_a_guard_keeps_purchases_waiting_and_names_itself(
    pool: asyncpg.Pool, db: asyncpg.Connection, arrange: dict, guard: str
) -> None:
    await verified(db, "kraken")
    await verified(db, IR, **arrange)
    await waiting(db)
    await kraken_down(model(pool))
    assert (await gate.purchase_gate(db, "kraken")).buy_on is None
    assert (await routes.peek(db, "kraken")).blocked_guard == guard
    assert await retry_queue.claim_routed(db, 10) == []


async def test_back_on_kraken_once_its_incident_closes(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await verified(db, "kraken")
    await verified(db, IR)
    m = model(pool)
    await kraken_down(m)
    # The incident closes (verified, probation over): the next decision brings purchases back.
    await db.execute("UPDATE liquid_abt.incidents SET phase = 'probation', "
                     "probation_until = now() - interval '1 second', last_closed_at = now()")  # fmt: skip
    await db.execute("UPDATE liquid_abt.circuit_breakers SET state = 'closed'")
    await m.observe("kraken", HEALTHY)
    found = await gate.purchase_gate(db, "kraken")
    assert (found.buy_on, found.may_buy) == ("kraken", True)
    assert (await routes.peek(db, "kraken")).routed_to is None


async def test_the_dry_run_records_the_route_and_changes_nothing(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    config = parse_config({**RAW, "receiver": {"dry_run": True}})
    await verified(db, "kraken")
    await verified(db, IR)
    await kraken_down(model(pool, config))
    assert (await gate.purchase_gate(db, "kraken")).buy_on == "kraken"
    recorded = await db.fetch(
        "SELECT result FROM liquid_abt.audit_log WHERE action = 'route_purchases'"
    )
    assert [r["result"] for r in recorded] == ["dry_run"]
    assert (await routes.peek(db, "kraken")).routed_to is None


async def test_the_route_is_exported_from_postgresql_one_series_per_route(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    from exporter.controls.exposition import ControlsSource

    source = ControlsSource(CONFIG)

    async def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        families = await source.collect(db)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples if s.name.startswith("liquid_abt_purchase_")
        }  # fmt: skip

    def route_of(found: dict) -> list[str]:
        return [dict(k[1])["route"] for k, v in found.items()
                if k[0] == "liquid_abt_purchase_route" and v == 1]  # fmt: skip

    before = await samples()
    assert route_of(before) == ["primary"]
    assert sum(1 for k in before if k[0] == "liquid_abt_purchase_route") == 3  # pre-initialised
    await verified(db, "kraken")
    await verified(db, IR)
    await kraken_down(model(pool))
    after = await samples()
    assert route_of(after) == [IR]
    assert after[("liquid_abt_purchase_failovers_total", (("exchange", "kraken"),))] == 1
    assert after[("liquid_abt_purchase_routed_seconds", (("exchange", "kraken"),))] >= 0
    await db.execute("UPDATE liquid_abt.exchange_verifications SET ok = false "
                     "WHERE exchange = $1", IR)  # fmt: skip
    await model(pool).observe("kraken", DOWN)
    blocked = await samples()
    assert route_of(blocked) == ["none"]
    key = ("liquid_abt_purchase_route_blocked", (("exchange", "kraken"), ("guard", "unverified")))
    assert blocked[key] == 1


# ---- the admin's route: API, audit, status line, landing page ----


async def test_an_admin_forbids_then_forces_a_route_through_the_api(
    aiohttp_client, database: Connection, db: asyncpg.Connection
) -> None:
    from datetime import UTC, datetime

    from exporter.operator import render
    from exporter.secrets import Secrets
    from exporter.web.app import create_app

    config = parse_config({**RAW, "collectors": {"interval": "1h", "timeout": "10s"}})
    client = await aiohttp_client(create_app(config, database, Secrets(admin_token="t0ken")))
    auth = {"Authorization": "Bearer t0ken"}

    async def post(body: dict, exchange: str = "kraken") -> tuple[int, dict]:
        response = await client.post(f"/api/admin/route/{exchange}", json=body, headers=auth)
        return response.status, await response.json()

    await verified(db, "kraken")
    await verified(db, IR)
    status, answer = await post({"to": IR, "reason": "test the secondary"})
    # Forced while kraken is fine: decided at once, guarded, audited with the admin's words.
    assert status == 200 and answer["changed"] and answer["route"]["to"] == IR
    assert (await gate.purchase_gate(db, "kraken")).buy_on == IR
    entry = await db.fetchrow(
        "SELECT * FROM liquid_abt.audit_log WHERE action = 'set_route_override'"
    )
    assert (entry["actor"], entry["cause"]) == ("admin", "test the secondary")
    line = render.route_line(answer["route"], datetime.now(UTC))
    assert line.startswith(f"route: purchases go to {IR} since ") and f"--to {IR}" in line
    status, answer = await post({"to": "none"})
    assert status == 200 and answer["route"]["to"] == "primary"
    assert (await gate.purchase_gate(db, "kraken")).buy_on == "kraken"
    status, answer = await post({"to": "auto"})
    assert status == 200 and answer["route"]["override"] is None
    # Bad values are named.
    assert await post({"to": "coinspot"}) == (400, {
        "error": f"to: unknown route 'coinspot': use one of {IR}, none, auto"})  # fmt: skip
    assert await post({"to": "none"}, IR) == (400, {
        "error": f"{IR!r} is not failover.primary ('kraken'): only its purchases are routed"})  # fmt: skip
    # The status shows the route; the landing page says where purchases go.
    await post({"to": IR})
    shown = await (await client.get("/api/admin/status", headers=auth)).json()
    assert shown["exchanges"][0]["route"]["to"] == IR
    page = await (await client.get("/")).text()
    assert f"routed to {IR}" in page


async def test_kraken_s_last_good_mid_outlives_its_failing_checks(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """The primary's failed checks carry no quote: the route row keeps its last good mid, read
    while it was healthy, and that is the reference once it is down."""
    await verified(db, "kraken", ask="100050", bid="99950")
    await verified(db, IR)
    m = model(pool)
    await m.observe("kraken", HEALTHY)
    kept = await routes.peek(db, "kraken")
    assert kept.reference_mid == 100000 and kept.routed_to is None
    await db.execute(
        """UPDATE liquid_abt.exchange_verifications
           SET ok = false, best_bid = NULL, best_ask = NULL, checked_at = now()
           WHERE exchange = 'kraken'"""
    )
    await kraken_down(m)
    assert (await gate.purchase_gate(db, "kraken")).buy_on == IR
    audit = await db.fetchrow(
        "SELECT detail FROM liquid_abt.audit_log WHERE action = 'route_purchases'"
    )
    source = json.loads(audit["detail"])["reference"]["source"]
    assert source.startswith("kraken last good mid")
