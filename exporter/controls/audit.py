"""The append-only audit log: every action the exporter takes or refuses, with its cause."""

from __future__ import annotations

import json
from typing import Any, Final

from exporter.database.transactions import Executor

# Who acted, as the `actor` column records it; the one spelling of each.
ACTOR_ADMIN: Final = "admin"  # a person, through the admin API
ACTOR_AUTOMATION: Final = "automation"  # the runbook path: worker, recovery, reconciliation
ACTOR_PROBE: Final = "probe"  # the live probe's rounds, counted by the breaker
ACTOR_ALERTMANAGER: Final = "alertmanager"  # what a notification itself reported
ACTORS: Final = (ACTOR_ADMIN, ACTOR_AUTOMATION, ACTOR_PROBE, ACTOR_ALERTMANAGER)

# `result` values of the controls' audit entries.
CHANGED, UNCHANGED, REFUSED = "success", "unchanged", "refused"


async def record(
    db: Executor,
    *,
    actor: str,
    action: str,
    result: str,
    exchange: str | None = None,
    cause: str | None = None,
    fingerprint: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Append one entry; pass the connection of the surrounding transaction to keep them atomic."""
    entry_id = await db.fetchval(
        """INSERT INTO liquid_abt.audit_log (actor, action, exchange, result, cause, fingerprint, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id""",
        actor, action, exchange, result, cause, fingerprint, json.dumps(detail or {}, default=str),
    )  # fmt: skip
    return int(entry_id)


_FIELDS = "id, at, actor, action, exchange, result, cause, fingerprint, detail"
_FILTER = "($1::text IS NULL OR exchange = $1) AND ($2::bigint IS NULL OR id < $2)"


async def entries(
    db: Executor, *, limit: int = 100, exchange: str | None = None, before_id: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Newest first; `before_id` keeps only older entries (pin it to page a growing log)."""
    rows = await db.fetch(
        f"""SELECT {_FIELDS} FROM liquid_abt.audit_log WHERE {_FILTER}
            ORDER BY id DESC LIMIT $3 OFFSET $4""",
        exchange, before_id, limit, offset,
    )  # fmt: skip
    return [_entry(r) for r in rows]


async def count(db: Executor, *, exchange: str | None = None, before_id: int | None = None) -> int:
    """How many entries `entries` pages through."""
    query = f"SELECT count(*) FROM liquid_abt.audit_log WHERE {_FILTER}"
    return int(await db.fetchval(query, exchange, before_id))


async def latest_by_exchange(
    db: Executor, exchanges: list[str], *, limit: int, action: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The newest `limit` entries of each exchange (of one `action` if given), newest first."""
    rows = await db.fetch(
        f"""SELECT e.* FROM unnest($1::text[]) AS x(name)
            CROSS JOIN LATERAL (
                SELECT {_FIELDS} FROM liquid_abt.audit_log
                WHERE exchange = x.name AND ($2::text IS NULL OR action = $2)
                ORDER BY id DESC LIMIT $3) AS e
            ORDER BY e.exchange, e.id DESC""",
        exchanges, action, limit,
    )  # fmt: skip
    found: dict[str, list[dict[str, Any]]] = {exchange: [] for exchange in exchanges}
    for row in rows:
        found[row["exchange"]].append(_entry(row))
    return found


def _entry(row: Any) -> dict[str, Any]:
    # `detail` is passed on as recorded (its keys are the database's snake_case).
    return {**dict(row), "at": row["at"].isoformat(), "detail": json.loads(row["detail"])}
