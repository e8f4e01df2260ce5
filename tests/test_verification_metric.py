"""Why purchases stay stopped, as a metric: the checks the latest recovery verification failed
(issue 19, point 5). ExchangeRecoveryNotVerified pages on it with the check names."""

from __future__ import annotations

import json

import asyncpg

from exporter.config import parse_config
from exporter.controls.exposition import ControlsSource, failed_checks
from exporter.labels import RECOVERY_CHECKS

CONFIG = parse_config({
    "collectors": {"interval": "1h", "timeout": "10s"}, "kraken": {"enabled": False},
    "retry": {"fill_interval": "1h"},
})  # fmt: skip
CROSSED = {
    "passed": False,
    "at": "2026-12-07T02:00:00+00:00",
    "checks": [
        {"name": "system_status", "ok": True, "detail": "status online"},
        {"name": "price", "ok": True, "detail": "last trade price 151000"},
        {"name": "order_book", "ok": False, "detail": "XBTAUD: best bid 152000, best ask 151000"},
        {"name": "balance", "ok": False, "detail": "skipped: order_book failed"},
    ],
}


async def failing(db: asyncpg.Connection) -> dict[str, float]:
    """The family as the controls collector serves it (the incident loop would move on)."""
    families = await ControlsSource(CONFIG).collect(db)
    (family,) = [f for f in families if f.name == "liquid_abt_recovery_verification_failed"]
    values = {
        s.labels["check"]: s.value for s in family.samples if s.labels["exchange"] == "kraken"
    }
    assert set(values) == set(RECOVERY_CHECKS)  # every series there, from the start
    return values


async def test_the_failed_check_is_served_while_purchases_stay_stopped(
    db: asyncpg.Connection,
) -> None:
    assert set((await failing(db)).values()) == {0}
    await db.execute(
        """INSERT INTO liquid_abt.incidents (exchange, phase, cause, started_at, last_verification)
           VALUES ('kraken', 'down', 'unavailable', now(), $1::jsonb)""",
        json.dumps(CROSSED),
    )
    checks = await failing(db)
    assert {c for c, v in checks.items() if v} == {"order_book"}  # not the skipped balance

    # Once the incident is over the old result says nothing about now.
    await db.execute("UPDATE liquid_abt.incidents SET phase = 'normal'")
    assert set((await failing(db)).values()) == {0}


def test_failed_checks_read_the_recorded_result() -> None:
    assert failed_checks(None) == set()
    assert failed_checks(json.dumps({**CROSSED, "passed": True})) == set()
    assert failed_checks(json.dumps(CROSSED)) == {"order_book"}
    odd = {"passed": False, "checks": [{"name": "depth", "ok": False, "detail": "thin"}]}
    assert failed_checks(json.dumps(odd)) == {"other"}
    assert failed_checks(json.dumps({"passed": False, "checks": []})) == {"other"}
