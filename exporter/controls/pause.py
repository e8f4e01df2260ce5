"""The automatic-purchase pause of each exchange, shared through PostgreSQL.

These are the runbook's `pauseAutomaticPurchases` and `resumeAutomaticPurchases`. The pause lives
in the exchange's `exchange_controls` row (beside the API rate, api_rate.py). Every replica and the
platform read that row, so each change locks it (`SELECT ... FOR UPDATE`) and writes its audit
entry in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exporter.controls import audit
from exporter.controls.audit import CHANGED, REFUSED, UNCHANGED
from exporter.database.transactions import Executor, transaction


@dataclass(frozen=True)
class ControlStatus:
    """One exchange's controls; an exchange never touched has the defaults."""

    exchange: str
    purchases_paused: bool = False
    pause_reason: str | None = None
    pause_estimated_duration: str | None = None
    paused_at: datetime | None = None
    manual_hold: bool = False
    paused_by_fingerprint: str | None = None
    api_rate_multiplier: float = 1.0

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ControlStatus:
        return cls(
            exchange=row["exchange"],
            purchases_paused=row["purchases_paused"],
            pause_reason=row["pause_reason"],
            pause_estimated_duration=row["pause_estimated_duration"],
            paused_at=row["paused_at"],
            manual_hold=row["manual_hold"],
            paused_by_fingerprint=row["paused_by_fingerprint"],
            api_rate_multiplier=float(row["api_rate_multiplier"]),
        )

    def as_json(self) -> dict[str, Any]:
        """As the admin API shows it (camelCase, the runbook's estimatedDuration)."""
        return {
            "exchange": self.exchange,
            "paused": self.purchases_paused,
            "reason": self.pause_reason,
            "estimatedDuration": self.pause_estimated_duration,
            "since": self.paused_at.isoformat() if self.paused_at else None,
            "manualHold": self.manual_hold,
            "pausedByFingerprint": self.paused_by_fingerprint,
            "apiRateMultiplier": self.api_rate_multiplier,
        }


@dataclass(frozen=True)
class ResumeResult:
    """What a resume did: `changed` when it resumed purchases, `refused` (and why) when not."""

    changed: bool
    refused: bool
    message: str
    status: ControlStatus


_COLUMNS = """exchange, purchases_paused, pause_reason, pause_estimated_duration, paused_at,
              manual_hold, paused_by_fingerprint, api_rate_multiplier"""


async def lock_controls(connection: asyncpg.Connection, exchange: str) -> ControlStatus:
    """Create the row on first use, then lock it until the transaction ends."""
    # DO NOTHING (not DO UPDATE) so a concurrent first use waits on the insert, not a deadlock.
    await connection.execute(
        "INSERT INTO liquid_abt.exchange_controls (exchange) VALUES ($1) ON CONFLICT DO NOTHING",
        exchange,
    )
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM liquid_abt.exchange_controls WHERE exchange = $1 FOR UPDATE",
        exchange,
    )
    return ControlStatus.from_row(row)


async def _write(connection: asyncpg.Connection, new: ControlStatus) -> ControlStatus:
    row = await connection.fetchrow(
        f"""UPDATE liquid_abt.exchange_controls
            SET purchases_paused = $2, pause_reason = $3, pause_estimated_duration = $4,
                paused_at = $5, manual_hold = $6, paused_by_fingerprint = $7,
                api_rate_multiplier = $8, updated_at = now()
            WHERE exchange = $1 RETURNING {_COLUMNS}""",
        new.exchange, new.purchases_paused, new.pause_reason, new.pause_estimated_duration,
        new.paused_at, new.manual_hold, new.paused_by_fingerprint, new.api_rate_multiplier,
    )  # fmt: skip
    return ControlStatus.from_row(row)


async def _now(connection: asyncpg.Connection) -> datetime:
    # The transaction's clock, so paused_at agrees with the audit entry written beside it.
    return await connection.fetchval("SELECT now()")


def _paused(old: ControlStatus, *, reason: str, estimated_duration: str | None,
            fingerprint: str | None, manual: bool, at: datetime) -> ControlStatus:  # fmt: skip
    return ControlStatus(
        exchange=old.exchange,
        purchases_paused=True,
        pause_reason=reason,
        pause_estimated_duration=estimated_duration,
        paused_at=old.paused_at if old.purchases_paused else at,  # keep the start of the pause
        manual_hold=manual or old.manual_hold,
        paused_by_fingerprint=old.paused_by_fingerprint if old.purchases_paused else fingerprint,
        api_rate_multiplier=old.api_rate_multiplier,
    )


def _resumed(old: ControlStatus) -> ControlStatus:
    return ControlStatus(exchange=old.exchange, api_rate_multiplier=old.api_rate_multiplier)


async def pause(
    db: Executor,
    exchange: str,
    *,
    reason: str,
    estimated_duration: str | None,
    actor: str,
    cause: str | None,
    fingerprint: str | None = None,
    manual: bool = False,
) -> bool:
    """Pause automatic purchases on `exchange`; True when this call changed anything.

    Pausing a paused exchange changes nothing, except that a manual pause turns an automatic one
    into a manual hold (taking over its reason), so automation can no longer lift it.
    """
    async with transaction(db) as connection:
        old = await lock_controls(connection, exchange)
        upgrade = manual and old.purchases_paused and not old.manual_hold
        changed = not old.purchases_paused or upgrade
        detail: dict[str, Any] = {"reason": reason, "estimated_duration": estimated_duration,
                                  "manual": manual}  # fmt: skip
        if changed:
            at = await _now(connection)
            new = _paused(old, reason=reason, estimated_duration=estimated_duration,
                          fingerprint=fingerprint, manual=manual, at=at)  # fmt: skip
            await _write(connection, new)
            detail["manual_hold_added"] = upgrade
        else:
            detail["already_paused_since"] = old.paused_at
        await audit.record(
            connection, actor=actor, action="pause_purchases",
            result=CHANGED if changed else UNCHANGED, exchange=exchange, cause=cause,
            fingerprint=fingerprint, detail=detail,
        )  # fmt: skip
    return changed


async def resume(
    db: Executor,
    exchange: str,
    *,
    actor: str,
    cause: str | None,
    fingerprint: str | None = None,
    manual: bool = False,
) -> ResumeResult:
    """Resume automatic purchases on `exchange`.

    Automation (`manual=False`) never lifts a manual hold: the call is refused, the refusal is
    audited, and the result says why. A manual resume lifts any pause, the hold included.
    """
    async with transaction(db) as connection:
        old = await lock_controls(connection, exchange)
        result = _decide_resume(old, manual)
        if result.changed:
            new = await _write(connection, _resumed(old))
            result = ResumeResult(True, False, result.message, new)
        await audit.record(
            connection, actor=actor, action="resume_purchases", result=_audit_result(result),
            exchange=exchange, cause=cause, fingerprint=fingerprint,
            detail={"manual": manual, "message": result.message,
                    "paused_by_fingerprint": old.paused_by_fingerprint,
                    "paused_since": old.paused_at},
        )  # fmt: skip
    return result


def _decide_resume(old: ControlStatus, manual: bool) -> ResumeResult:
    if not old.purchases_paused:
        return ResumeResult(False, False, "purchases are not paused", old)
    if old.manual_hold and not manual:
        return ResumeResult(
            False, True,
            "a manual hold is set (through the admin API); only a manual resume lifts it",
            old,
        )  # fmt: skip
    return ResumeResult(True, False, "purchases resumed", old)


def _audit_result(result: ResumeResult) -> str:
    if result.refused:
        return REFUSED
    return CHANGED if result.changed else UNCHANGED


async def status(db: Executor, exchange: str) -> ControlStatus:
    """The controls of one exchange; the defaults (not paused, rate 1) when never touched."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM liquid_abt.exchange_controls WHERE exchange = $1", exchange
    )
    return ControlStatus.from_row(row) if row else ControlStatus(exchange)


async def statuses(db: Executor, exchanges: list[str]) -> list[ControlStatus]:
    """The controls of each exchange, in the given order, in one query."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM liquid_abt.exchange_controls WHERE exchange = ANY($1::text[])",
        exchanges,
    )
    found = {row["exchange"]: ControlStatus.from_row(row) for row in rows}
    return [found.get(exchange, ControlStatus(exchange)) for exchange in exchanges]
