"""Purchase counts per slice of `created_at`, kept between refreshes: a refresh recounts (and so
reclassifies) only the slices that changed, so an outage storm costs its new purchases, not its hour.

A slice's counts are reused only when nothing in it can have changed since the refresh that
counted it, which PostgreSQL tells exactly and cheaply (one scan without classification):

- every row inserted or updated since then has an `xmin` at or after that refresh's snapshot
  `xmin` (older transactions had all ended, so their rows were already counted), and
- a row deleted since then lowers the slice's row count.

A slice without either, same count and no newer `xmin`, holds the same row versions as when it
was counted. Late updates (a purchase failed long after its creation, a reason rewritten) and
deletions are therefore seen by the next refresh. Frozen rows read as old, which they are.

A slice that holds a window's start is split by it, so it is recounted row by row every refresh;
any other slice lies wholly inside or outside each window, and its counts move between windows
by its start alone. Everything is read inside the collector's one repeatable-read snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

SLICE_SECONDS = 10
# The reference xid when nothing is kept: not a normal xid, so every row reads as changed.
NOTHING_KEPT = "0"
# The bin of a timestamp: the same instants whatever the session's time zone.
EPOCH = "timestamptz '1970-01-01 00:00:00+00'"


def slice_of(column: str) -> str:
    return f"date_bin('{SLICE_SECONDS} seconds', {column}, {EPOCH})"


# provider, status, reason class (None unless failed)
Key = tuple[str, str, str | None]


@dataclass
class Tally:
    purchases: int = 0
    amount: Decimal = Decimal(0)  # exact: floats only once the windows are summed
    retry_candidates: int = 0  # failed and retried fewer times than the limit

    def add(self, purchases: int, amount: Decimal, retry_candidates: int) -> None:
        self.purchases += purchases
        self.amount += amount
        self.retry_candidates += retry_candidates


@dataclass(frozen=True)
class Clock:
    """The refresh's instants, all computed by the database in its snapshot."""

    now: datetime
    cutoffs: tuple[datetime, ...]  # now - window, shortest window first
    retry_cutoff: datetime
    edges: frozenset[datetime]  # the slices that hold a cutoff (the scan's start included)
    xmin: int  # the snapshot's xmin, a 64-bit transaction id

    @classmethod
    def from_row(cls, row: Mapping) -> Clock:
        return cls(
            row["now"], tuple(row["cutoffs"]), row["retry_cutoff"], frozenset(row["edges"]),
            int(row["xmin"]),
        )  # fmt: skip

    def bucket(self, start: datetime) -> int:
        """The shortest window that holds all of the slice from `start`, which holds no cutoff."""
        return next((i for i, c in enumerate(self.cutoffs) if start > c), len(self.cutoffs))

    def in_retry(self, start: datetime) -> bool:
        return start > self.retry_cutoff


@dataclass(frozen=True)
class Slice:
    rows: int  # every row of the slice, whatever its status: what a deletion changes
    tallies: dict[Key, Tally]


def _recounted_slices(census: Mapping[datetime, int], rows: Iterable[Mapping]) -> dict:
    found: dict[datetime, dict[Key, Tally]] = {start: {} for start in census}
    for row in rows:
        tally = found[row["slice"]].setdefault(
            (row["provider"], row["status"], row["reason"]), Tally()
        )
        tally.add(row["purchases"], row["amount_aud"], row["retry_candidates"])
    return {start: Slice(census[start], tallies) for start, tallies in found.items()}


def census_of(recounted: Iterable[Mapping]) -> list[Mapping]:
    """A census from a recount of the whole window, for a refresh that kept nothing: it misses
    rows of statuses outside the closed set, so their slices are recounted once more later."""
    rows: dict[datetime, int] = {}
    for row in recounted:
        rows[row["slice"]] = rows.get(row["slice"], 0) + row["purchases"]
    return [{"slice": start, "purchases": n, "changed": False} for start, n in rows.items()]


class SliceCache:
    """The counted slices of the last successful refresh, and that refresh's snapshot xmin."""

    def __init__(self) -> None:
        self.xmin: int | None = None
        self.slices: dict[datetime, Slice] = {}

    def reference(self, clock: Clock) -> str:
        """The xid from which on rows may have changed (32 bits, as `xmin` is stored), or
        NOTHING_KEPT when nothing is cached or the database went back in time (another server,
        a restore)."""
        if self.xmin is None or self.xmin > clock.xmin:
            self.xmin, self.slices = None, {}
            return NOTHING_KEPT
        return str(self.xmin % 2**32)

    def stale(self, clock: Clock, census: Iterable[Mapping]) -> frozenset[datetime]:
        """The slices to recount: changed, never counted, or split by a window's start."""
        return frozenset(
            row["slice"]
            for row in census
            if row["changed"]
            or row["slice"] in clock.edges
            or (cached := self.slices.get(row["slice"])) is None
            or cached.rows != row["purchases"]
        )

    def merged(
        self, census: Iterable[Mapping], stale: frozenset[datetime], recounted: Iterable[Mapping]
    ) -> dict[datetime, Slice]:
        """The slices of the census: recounted, or as cached when still valid."""
        rows = {row["slice"]: row["purchases"] for row in census}
        fresh = _recounted_slices({s: n for s, n in rows.items() if s in stale}, recounted)
        return {s: fresh[s] if s in stale else self.slices[s] for s in rows}

    def keep(self, clock: Clock, slices: dict[datetime, Slice]) -> None:
        """After a successful refresh (a failed one leaves the cache as it was)."""
        self.slices, self.xmin = slices, clock.xmin


def window_rows(
    clock: Clock,
    slices: Mapping[datetime, Slice],
    stale: frozenset[datetime],
    recounted: Iterable[Mapping],
) -> list[dict]:
    """Counts by provider, status, reason and bucket, as one scan of the window would give them:
    valid slices placed by their start, recounted ones by each row's own bucket."""
    totals: dict[tuple[str, str, str | None, int], Tally] = {}

    def add(key: Key, bucket: int, tally: Tally, in_retry: bool) -> None:
        total = totals.setdefault((*key, bucket), Tally())
        total.add(tally.purchases, tally.amount, tally.retry_candidates if in_retry else 0)

    for start, counted in slices.items():
        if start not in stale:
            for key, tally in counted.tallies.items():
                add(key, clock.bucket(start), tally, clock.in_retry(start))
    for row in recounted:
        tally = Tally(row["purchases"], row["amount_aud"], row["retry_candidates"])
        add((row["provider"], row["status"], row["reason"]), row["bucket"], tally, row["in_retry"])
    return [
        {
            "provider": provider, "status": status, "reason": reason, "bucket": bucket,
            "purchases": t.purchases, "amount_aud": t.amount,
            "retry_eligible": t.retry_candidates,
        }
        for (provider, status, reason, bucket), t in totals.items()
    ]  # fmt: skip
