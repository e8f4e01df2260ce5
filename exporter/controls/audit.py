"""The append-only audit log: every action the exporter takes or refuses, with its cause."""

from __future__ import annotations

import json
from typing import Any

from exporter.database.transactions import Executor

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


async def entries(
    db: Executor, *, limit: int = 100, exchange: str | None = None, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Newest first; `before_id` pages backwards."""
    rows = await db.fetch(
        """SELECT id, at, actor, action, exchange, result, cause, fingerprint, detail
           FROM liquid_abt.audit_log
           WHERE ($1::text IS NULL OR exchange = $1) AND ($2::bigint IS NULL OR id < $2)
           ORDER BY id DESC LIMIT $3""",
        exchange, before_id, limit,
    )  # fmt: skip
    return [{**dict(r), "at": r["at"].isoformat(), "detail": json.loads(r["detail"])} for r in rows]
