"""Live probe of the Kraken REST API, and the recovery checks the incident model runs; the round
and check machinery and the metrics are every exchange's (exporter/signals/probe.py).

A round calls SystemStatus, Ticker, Depth, Time (and Balance when keys are configured) one after
the other, never in parallel: Kraken throttles public calls per IP, and that IP may be the one the
platform buys from.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.signals.exchange import Check, Quote
from exporter.signals.probe import (
    ABORTING,
    REPEAT_LOG_EVERY,
    Call,
    CheckStep,
    RoundProbe,
    judge_balance,
    judge_book,
)

from .client import ENDPOINTS, SYSTEM_STATUSES, KrakenClient, KrakenError, OrderBook

# ABORTING and REPEAT_LOG_EVERY are the shared machinery's; the simulator reads them here.
__all__ = ["ABORTING", "REPEAT_LOG_EVERY", "ExchangeProbe"]

# Kraken's asset code of the Australian dollar in Balance.
_AUD = "ZAUD"


class ExchangeProbe(RoundProbe):
    """Probes Kraken, a round at a time, and keeps its metrics current.

    `exchange_up` means "the API answered every call"; whether Kraken accepts orders is the
    `status` state set (cancel_only keeps the API up but stops purchases), so alert on both.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        client: KrakenClient,
        exchange: str = "kraken",
        slow_threshold: float = 5.0,
        logger: logging.Logger | None = None,
        *,
        pair: str = "XBTAUD",
        call_spacing: float = 1.0,
    ) -> None:
        # Kraken asks for about one public call per second per IP; keep well inside it.
        super().__init__(
            registry, exchange, endpoints=ENDPOINTS, statuses=SYSTEM_STATUSES,
            errors=(KrakenError,), slow_threshold=slow_threshold, call_spacing=call_spacing,
            logger=logger or logging.getLogger(__name__),
        )  # fmt: skip
        self._client = client
        self._pair = pair

    def round_calls(self) -> list[tuple[str, Call]]:
        calls: list[tuple[str, Call]] = [
            ("SystemStatus", self._client.system_status),
            ("Ticker", lambda: self._client.ticker(self._pair)),
            ("Depth", lambda: self._client.depth(self._pair)),
            ("Time", self._client.server_time),
        ]
        if self._client.has_credentials:
            calls.append(("Balance", self._client.balance))
        return calls

    def status_of(self, value: Any) -> str:
        return str(value)

    def check_steps(self) -> list[CheckStep]:
        """The runbook's recovery tests: status online, price, balance (with keys), order book."""
        steps = [
            CheckStep("system_status", "SystemStatus", self._client.system_status, _judge_status),
            CheckStep("price", "Ticker", lambda: self._client.ticker(self._pair), _judge_price),
        ]
        if self._client.has_credentials:
            steps.append(CheckStep("balance", "Balance", self._client.balance, judge_balance))
        depth = CheckStep("order_book", "Depth", lambda: self._client.depth(self._pair), judge_book)
        return [*steps, depth]

    def quote_of(self, values: dict[str, Any]) -> Quote | None:
        book: OrderBook | None = values.get("Depth")
        balances: dict[str, Decimal] | None = values.get("Balance")
        if book is None:
            return None
        balance = None if balances is None else balances.get(_AUD, Decimal(0))
        return Quote(
            book.bids[0].price if book.bids else None,
            book.asks[0].price if book.asks else None,
            tuple((level.price, level.volume) for level in book.asks),
            balance,
        )


def _judge_status(status: str) -> Check:
    return Check("system_status", status == "online", f"status {status}")


def _judge_price(price: Any) -> Check:
    return Check("price", price > 0, f"last trade price {price}")
