"""The fake Kraken's modes and state, shared by its server, its control endpoint and its CLI."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from aiohttp import web


class Mode(StrEnum):
    HEALTHY = "healthy"
    SLOW = "slow"  # answers normally after `latency` seconds
    DOWN = "down"  # listening socket closed: connection refused
    HANGING = "hanging"  # accepts and never answers
    MAINTENANCE = "maintenance"  # status maintenance, every other call EService:Unavailable
    CANCEL_ONLY = "cancel_only"  # status cancel_only, market data still served
    POST_ONLY = "post_only"
    RATE_LIMITED = "rate_limited"  # HTTP 200, EAPI:Rate limit exceeded
    RATE_LIMITED_HTTP = "rate_limited_http"  # HTTP 429 from a proxy, no Kraken JSON
    AUTH_FAILURE = "auth_failure"  # private calls: EAPI:Invalid signature
    INVALID_KEY = "invalid_key"  # private calls: EAPI:Invalid key
    SERVER_ERROR = "server_error"  # HTTP 502 (or `http_status`) with an HTML page
    GARBAGE = "garbage"  # HTTP 200 with a body that is not JSON


DEFAULT_SLOW_LATENCY: Final = 6.0  # just above the runbook's 5 s "slow response"


@dataclass
class Faults:
    """Sporadic trouble on top of the mode: a share of requests hang or are rate limited (each
    drawn independently), and the order book can be crossed (best bid above best ask)."""

    hang_ratio: float = 0.0
    rate_limit_ratio: float = 0.0
    crossed_book: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Faults:
        unknown = set(body) - {"hang_ratio", "rate_limit_ratio", "crossed_book"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        faults = cls(
            float(body.get("hang_ratio", 0.0)), float(body.get("rate_limit_ratio", 0.0)),
            bool(body.get("crossed_book", False)),
        )  # fmt: skip
        for name in ("hang_ratio", "rate_limit_ratio"):
            if not 0.0 <= getattr(faults, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        return faults


@dataclass
class FakeKrakenState:
    """Everything the fake exchange knows; tests may read `hits` and change prices.

    `api_key`/`api_secret` is one accepted key; `keys` holds every accepted key (key -> base64
    secret, `api_key` included). Nonces must increase per key, as on Kraken: two programs sharing
    a key interleave their nonces and get `EAPI:Invalid nonce`.
    """

    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    keys: dict[str, str] = field(default_factory=dict, repr=False)
    mode: Mode = Mode.HEALTHY
    latency: float = 0.0
    http_status: int = 502
    prices: dict[str, Decimal] = field(
        default_factory=lambda: {"XXBTZAUD": Decimal("152345.6"), "XXBTZUSD": Decimal("98765.4")}
    )
    balances: dict[str, str] = field(
        default_factory=lambda: {"ZAUD": "25000.0000", "XXBT": "0.5000000000"}
    )
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0  # lets tests prove that a client never overlaps its calls
    nonces: dict[str, int] = field(default_factory=dict)  # key -> the last nonce accepted
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    faults: Faults = field(default_factory=Faults)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is not None and self.api_secret is not None:
            self.keys.setdefault(self.api_key, self.api_secret)

    def apply(
        self, mode: Mode | str, latency: float | None = None, http_status: int | None = None
    ) -> None:
        """Switch mode; waiting (hanging) requests re-check the new mode."""
        new_mode = Mode(mode)
        if latency is not None and latency < 0:
            raise ValueError("latency must not be negative")
        if http_status is not None and not 500 <= http_status <= 599:
            raise ValueError("http_status must be a 5xx status")
        self.mode = new_mode
        self.latency = (
            latency
            if latency is not None
            else (DEFAULT_SLOW_LATENCY if new_mode is Mode.SLOW else 0.0)
        )
        self.http_status = http_status or self.http_status
        self.wake()

    def wake(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value, "latency": self.latency, "http_status": self.http_status,
            "faults": vars(self.faults),
        }  # fmt: skip


SetMode = Callable[[Mode | str, float | None, int | None], Awaitable[None]]
STATE: Final = web.AppKey("state", FakeKrakenState)
SET_MODE: Final = web.AppKey[SetMode]("set_mode")
