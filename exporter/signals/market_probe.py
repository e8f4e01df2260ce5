"""The probe of an exchange whose client speaks the shared REST shapes (exporter/signals/rest.py):
Independent Reserve and BTC Markets. Rounds and recovery checks as Kraken's (signals/probe.py);
only the endpoint names differ, so each exchange's integration gives those and its client.

A round reads the status, the ticker, the order book (then any calls of the exchange's own, such
as its clock) and, with a read-only key, the balance. A recovery check is the runbook's: status
online, a two-sided price, the balance readable, a two-sided uncrossed book; its quote (best bid
and ask, the asks, the AUD available) is failover's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry

from exporter.config import ExchangeSectionConfig

from .exchange import Check, ProbeSettings, Quote
from .probe import Call, CheckStep, RoundProbe, judge_balance, judge_book
from .rest import Balance, ExchangeApiError, MarketStatus, OrderBook, Ticker

# MarketStatus.state values: Kraken's vocabulary, and limit_only (BTC Markets' "Limit Only").
MARKET_STATUSES: Final = ("online", "maintenance", "cancel_only", "post_only", "limit_only")
# The currency purchases are paid in: its available balance is the quote's balance_aud.
AUD: Final = "AUD"


def settings_of(section: ExchangeSectionConfig) -> ProbeSettings:
    """A secondary's probe cadence from its config section."""
    return ProbeSettings(
        probe_interval=section.probe_interval, doubt_interval=section.doubt_interval,
        incident_interval=section.incident_interval, timeout=section.timeout,
        # Four calls of one timeout each, spaced by `call_spacing`, with room to spare.
        verification_time=6 * section.timeout + 4 * section.call_spacing,
        verify_interval=section.verify_interval,
    )  # fmt: skip


class MarketClient(Protocol):
    """What the probe calls; balances by upper-case asset name (AUD, BTC)."""

    @property
    def has_credentials(self) -> bool: ...

    async def status(self) -> MarketStatus: ...

    async def ticker(self) -> Ticker: ...

    async def order_book(self) -> OrderBook: ...

    async def balance(self) -> dict[str, Balance]: ...


@dataclass(frozen=True)
class Endpoints:
    """The exchange's names of the calls (the `endpoint` label), and its extra round calls."""

    status: str
    ticker: str
    order_book: str
    balance: str
    extra: tuple[tuple[str, Call], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        core = (self.status, self.ticker, self.order_book)
        return (*core, *(name for name, _ in self.extra), self.balance)


class MarketProbe(RoundProbe):
    """Probes one exchange through a MarketClient, a round at a time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        client: MarketClient,
        exchange: str,
        endpoints: Endpoints,
        *,
        slow_threshold: float = 5.0,
        call_spacing: float = 1.0,
    ) -> None:
        super().__init__(
            registry, exchange, endpoints=endpoints.names, statuses=MARKET_STATUSES,
            errors=(ExchangeApiError,), slow_threshold=slow_threshold, call_spacing=call_spacing,
        )  # fmt: skip
        self._client = client
        self._endpoints = endpoints

    def round_calls(self) -> list[tuple[str, Call]]:
        e, c = self._endpoints, self._client
        calls: list[tuple[str, Call]] = [
            (e.status, c.status), (e.ticker, c.ticker), (e.order_book, c.order_book), *e.extra,
        ]  # fmt: skip
        if c.has_credentials:
            calls.append((e.balance, c.balance))
        return calls

    def status_of(self, value: Any) -> str:
        status: MarketStatus = value
        return status.state

    def check_steps(self) -> list[CheckStep]:
        e, c = self._endpoints, self._client
        steps = [
            CheckStep("system_status", e.status, c.status, _judge_status),
            CheckStep("price", e.ticker, c.ticker, _judge_price),
        ]
        if c.has_credentials:
            steps.append(CheckStep("balance", e.balance, c.balance, judge_balance))
        return [*steps, CheckStep("order_book", e.order_book, c.order_book, judge_book)]

    def quote_of(self, values: dict[str, Any]) -> Quote | None:
        e = self._endpoints
        book: OrderBook | None = values.get(e.order_book)
        ticker: Ticker | None = values.get(e.ticker)
        balances: dict[str, Balance] | None = values.get(e.balance)
        if book is None and ticker is None:
            return None
        bid, ask = _top(book, ticker)
        asks = tuple((level.price, level.volume) for level in book.asks) if book else ()
        aud = None if balances is None else _available(balances, AUD)
        return Quote(bid, ask, asks, aud)


def _top(book: OrderBook | None, ticker: Ticker | None) -> tuple[Decimal | None, Decimal | None]:
    """Best bid and ask: the book's when it was read (the depth guard reads the same), else the
    ticker's."""
    if book is not None:
        return (
            book.bids[0].price if book.bids else None,
            book.asks[0].price if book.asks else None,
        )
    assert ticker is not None
    return ticker.bid, ticker.ask


def _available(balances: dict[str, Balance], asset: str) -> Decimal:
    balance = balances.get(asset)
    return balance.available if balance is not None else Decimal(0)


def _judge_status(status: MarketStatus) -> Check:
    return Check("system_status", status.online, f"status {status.state} ({status.raw})")


def _judge_price(ticker: Ticker) -> Check:
    if ticker.bid is None or ticker.ask is None:
        return Check("price", False, f"{ticker.pair}: no bid or no ask")
    ok = 0 < ticker.bid < ticker.ask
    return Check("price", ok, f"{ticker.pair}: bid {ticker.bid}, ask {ticker.ask}")
