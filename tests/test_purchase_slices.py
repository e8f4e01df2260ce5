"""A refresh that reuses the slices it counted before gives what a refresh from scratch gives,
whatever changed in between (late failures, rewritten reasons, deletions), on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from exporter.config import Config
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.purchases import PurchasesSource
from exporter.signals.collectors.slices import NOTHING_KEPT, Clock, Slice, SliceCache

CONFIG = Config()

# 360 purchases, one every 10 s over the hour: every status, ASCII and non-ASCII reasons, two
# providers, retry counts 0 to 3, amounts with cents.
HOUR = """
INSERT INTO bitcoin_purchases
    (tenant_id, amount_aud, status, failure_reason, exchange_provider, retry_count, created_at)
SELECT 't' || (i % 7), 10 + i * 1.37,
       (ARRAY['completed','failed','pending','failed','refunded','failed'])[1 + i % 6],
       CASE WHEN i % 2 = 1 THEN (ARRAY['EAPI:Rate limit exceeded', 'EService:Unavailable',
            'Request timed out after ' || i || ' ms', 'EOrder:Insufficient funds',
            'Kraken indisponible — maintenance', 'a message nobody classified'])[1 + i % 6] END,
       (ARRAY['kraken', 'kraken', 'Binance'])[1 + i % 3], i % 4,
       now() - make_interval(secs => i * 10 + 3)
FROM generate_series(0, 359) AS i
"""
# The purchase of a status created closest to 30 minutes ago: far from every window's start, so
# its slice is recounted only if the refresh sees that it changed.
THIRTY_MINUTES_AGO = """
SELECT id FROM bitcoin_purchases WHERE status = $1
ORDER BY abs(extract(epoch FROM now() - created_at) - 1800) LIMIT 1
"""

CHANGES = {
    "late failure": "UPDATE bitcoin_purchases SET status = 'failed',"
    " failure_reason = 'EAPI:Invalid key' WHERE id = {pending}",
    "reason rewritten": "UPDATE bitcoin_purchases SET failure_reason = 'EAPI:Invalid nonce'"
    " WHERE id = {failed}",
    "non-ASCII reason": "UPDATE bitcoin_purchases SET failure_reason = 'Rate limit dépassé'"
    " WHERE id = {failed}",
    "retried": "UPDATE bitcoin_purchases SET retry_count = 0, failure_reason = 'EService:Busy'"
    " WHERE id = {failed}",
    "amount corrected": "UPDATE bitcoin_purchases SET amount_aud = amount_aud + 0.01"
    " WHERE id = {failed}",
    "deleted": "DELETE FROM bitcoin_purchases WHERE id = {failed}",
    "created_at moved": "UPDATE bitcoin_purchases SET created_at = now() - interval '10 minutes'"
    " WHERE id = {failed}",
    "inserted late": "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status,"
    " failure_reason, created_at) VALUES ('late', 5, 'failed', 'socket hang up',"
    " now() - interval '30 minutes')",
}


def source() -> PurchasesSource:
    return PurchasesSource(CONFIG, ReasonClassifier(CONFIG.purchases.failure_reasons))


async def samples(collector: PurchasesSource, db: asyncpg.Connection) -> dict:
    return {
        (family.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in await collector.collect(db)
        for sample in family.samples
    }


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_changed_slice_is_recounted_and_the_rest_reused(
    db: asyncpg.Connection, change: str
) -> None:
    await db.execute(HOUR)
    kept = source()
    before = await samples(kept, db)
    assert kept.recounted_slices > 300  # the first refresh counts every slice of the hour
    ids = {
        status: await db.fetchval(THIRTY_MINUTES_AGO, status) for status in ("pending", "failed")
    }
    await db.execute(CHANGES[change].format(**ids))
    async with db.transaction(
        isolation="repeatable_read", readonly=True
    ):  # one now(), one snapshot
        after = await samples(kept, db)
        assert after == await samples(source(), db)
    assert after != before
    # The changed slice(s) and the ones a window starts in, not the hour.
    assert kept.recounted_slices <= 6


async def test_an_unchanged_hour_recounts_only_the_slices_a_window_starts_in(
    db: asyncpg.Connection,
) -> None:
    await db.execute(HOUR)
    kept = source()
    await samples(kept, db)
    await samples(kept, db)
    # 5m, 15m and 1h (the retry window is the hour too).
    assert kept.recounted_slices <= 3
    await db.execute(
        "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason)"
        " VALUES ('new', 1, 'failed', 'EService:Unavailable')"
    )
    async with db.transaction(isolation="repeatable_read", readonly=True):
        assert await samples(kept, db) == await samples(source(), db)
    assert kept.recounted_slices <= 4


def test_a_database_that_went_back_in_time_drops_what_was_kept() -> None:
    now = datetime.now(UTC)
    cache = SliceCache()
    cache.keep(Clock(now, (now,), now, frozenset(), xmin=2**32 + 7), {now: Slice(1, {})})
    assert cache.reference(Clock(now, (now,), now, frozenset(), xmin=2**32 + 9)) == "7"
    earlier = Clock(now + timedelta(seconds=1), (now,), now, frozenset(), xmin=100)
    assert cache.reference(earlier) == NOTHING_KEPT
    assert cache.slices == {} and cache.xmin is None
