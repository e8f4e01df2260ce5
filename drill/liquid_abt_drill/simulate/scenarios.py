"""The ways a simulated purchase fails, in the words of Kraken, the network and the platform, and
the runbook scenarios that mix them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from exporter.labels import REASON_CLASSES


class SimulateError(Exception):
    """The simulation cannot start: no tables, a database that looks like production, bad flags."""


@dataclass(frozen=True)
class Failure:
    """One way a purchase fails, in the words Kraken, the network or the platform use."""

    reason: str  # the class the exporter's classifier must map `text` to
    text: str  # written to failure_reason and to the failing call's error_message
    stage: str  # the failing call: price, balance (private), order, any, or none (no call made)
    latency_ms: tuple[float, float]  # (median, sigma) of the failing call; sigma 0 is fixed


FAILURES: Final[tuple[Failure, ...]] = (
    # Purchase runbook scenario A / exchange runbook: Kraken itself failing.
    Failure("exchange_unavailable", "EService:Unavailable", "any", (350, 0.5)),
    Failure("exchange_unavailable", "EService:Busy", "order", (900, 0.4)),
    Failure("exchange_unavailable", "Kraken API error: HTTP 502 Bad Gateway", "any", (60, 0.3)),
    Failure(
        "exchange_unavailable", "Kraken API error: HTTP 503 Service Unavailable", "any", (40, 0.3)
    ),
    # Exchange runbook scenario B.
    Failure("rate_limited", "EAPI:Rate limit exceeded", "any", (120, 0.3)),
    Failure("rate_limited", "EGeneral:Too many requests", "any", (110, 0.3)),
    Failure("rate_limited", "HTTP 429 Too Many Requests", "any", (30, 0.3)),
    # Exchange runbook scenario C: only private calls are signed.
    Failure("auth", "EAPI:Invalid signature", "balance", (150, 0.3)),
    Failure("auth", "EAPI:Invalid key", "balance", (140, 0.3)),
    Failure("auth", "EAPI:Invalid nonce", "order", (160, 0.3)),
    Failure("auth", "EGeneral:Permission denied", "order", (170, 0.3)),
    Failure("auth", "EGeneral:Temporary lockout", "balance", (130, 0.3)),
    # Purchase runbook scenario C / exchange runbook scenario D: network and infrastructure.
    Failure(
        "network_timeout", "Request to api.kraken.com timed out after 30000ms", "any", (30000, 0)
    ),
    Failure("network_timeout", "connect ETIMEDOUT 104.17.185.205:443", "any", (10000, 0)),
    Failure("network_timeout", "read ECONNRESET", "any", (1500, 0.8)),
    Failure("network_timeout", "getaddrinfo EAI_AGAIN api.kraken.com", "any", (5000, 0.2)),
    Failure("network_timeout", "socket hang up", "order", (2500, 0.6)),
    Failure("network_timeout", "EService:Deadline elapsed", "order", (10000, 0.1)),
    # Purchase runbook scenario B.
    Failure("insufficient_funds", "EOrder:Insufficient funds", "order", (420, 0.4)),
    Failure(
        "insufficient_funds",
        "Insufficient funds: Kraken AUD balance below order total",
        "balance",
        (260, 0.4),
    ),
    # Rejected before or by the exchange: never retried (runbook retry criteria).
    Failure("invalid_amount", "EOrder:Order minimum not met", "order", (400, 0.4)),
    Failure("invalid_amount", "EGeneral:Invalid arguments:volume", "order", (380, 0.4)),
    # Exchange runbook scenario A: maintenance and restricted trading.
    Failure("maintenance", "EService:Market in cancel_only mode", "order", (300, 0.4)),
    Failure("maintenance", "EService:Market in post_only mode", "order", (300, 0.4)),
    Failure("maintenance", "Kraken system status: maintenance", "price", (200, 0.4)),
    # Whatever else the platform reports.
    Failure("other", "EOrder:Trading agreement required", "order", (410, 0.4)),
    Failure("other", "Order rejected: unknown order state after placement", "order", (600, 0.5)),
)
# The platform's own refusal while the breaker is open: no exchange call, so no api_call_logs row.
BREAKER_OPEN: Final = Failure(
    "exchange_unavailable", "Circuit breaker OPEN for kraken: request not sent", "none", (0, 0)
)
CATALOGUE: Final[tuple[Failure, ...]] = (*FAILURES, BREAKER_OPEN)
BY_CLASS: Final = {c: [f for f in FAILURES if f.reason == c] for c in REASON_CLASSES}


@dataclass(frozen=True)
class Scenario:
    mix: Mapping[str, float]  # probability, per purchase, of failing with each reason class
    slowdown: float  # multiplier on the response times of calls that succeed
    summary: str


SCENARIOS: Final[dict[str, Scenario]] = {
    "normal": Scenario(
        {
            "exchange_unavailable": 0.004,
            "rate_limited": 0.002,
            "network_timeout": 0.004,
            "insufficient_funds": 0.002,
            "invalid_amount": 0.001,
            "auth": 0.0005,
            "other": 0.001,
        },
        1.0,
        "a healthy day: about 1.5 percent of purchases fail, for the usual mix of reasons",
    ),
    "kraken-outage": Scenario(
        {"exchange_unavailable": 0.80, "network_timeout": 0.10},
        8.0,
        "Kraken failing (purchase runbook scenario A): mostly EService:Unavailable and 5xx",
    ),
    "maintenance": Scenario(
        {"maintenance": 0.85, "exchange_unavailable": 0.10},
        2.0,
        "Kraken maintenance or cancel_only (exchange runbook scenario A)",
    ),
    "rate-limiting": Scenario(
        {"rate_limited": 0.25, "exchange_unavailable": 0.01},
        1.5,
        "Kraken rate limiting us (exchange runbook scenario B)",
    ),
    "auth-failure": Scenario(
        {"auth": 0.95},
        1.0,
        "Kraken rejecting our API key or signatures (exchange runbook scenario C)",
    ),
    "network": Scenario(
        {"network_timeout": 0.15, "exchange_unavailable": 0.02},
        3.0,
        "timeouts and resets between us and Kraken (purchase C / exchange D)",
    ),
    "insufficient-funds": Scenario(
        {"insufficient_funds": 0.15, "invalid_amount": 0.005},
        1.0,
        "the Kraken AUD balance ran low (purchase runbook scenario B)",
    ),
}


def parse_mix(text: str) -> dict[str, float]:
    """`exchange_unavailable=0.02,rate_limited=0.01` into probabilities per reason class."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in REASON_CLASSES:
            raise SimulateError(
                f"--failure-mix {part!r}: expected CLASS=PROBABILITY, CLASS one of "
                f"{', '.join(REASON_CLASSES)}"
            )
        try:
            probability = float(value)
        except ValueError:
            raise SimulateError(f"--failure-mix {part!r}: {value!r} is not a number") from None
        if not 0 <= probability <= 1:
            raise SimulateError(f"--failure-mix {part!r}: a probability is between 0 and 1")
        mix[name] = probability
    if sum(mix.values()) > 1 + 1e-9:
        raise SimulateError(f"--failure-mix adds up to {sum(mix.values()):g}, more than 1")
    return mix
