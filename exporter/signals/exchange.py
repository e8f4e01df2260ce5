"""The exchange-neutral seam: what a probe round and a recovery check say, each exchange's probe
cadence, and the registry of the exchanges that can be probed.

The incident model (exporter/runbook/) reads only this module. An exchange is one package under
`exporter/signals/` that provides an `Integration`: its settings from the config, and a factory for
its probe (rounds and recovery checks). `exporter/signals/integrations.py` lists them; a second
exchange is its package, one line there, and its config section.

Outcomes are the closed set of the `outcome` label (docs/metrics.md); an exchange classifies its
own replies onto them. Which outcomes mean "the API did not answer" and which mean "our own
credentials were refused" is decided here, once, for every exchange.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Protocol

import aiohttp
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.secrets import Secrets

SUCCESS: Final = "success"
# The API did not answer: the evidence of an exchange being down. Rate limits and auth errors are
# answers (the exchange is up and says no), judged separately.
UNAVAILABLE_OUTCOMES: Final = frozenset(
    {"timeout", "network_error", "service_unavailable", "server_error"}
)
RATE_LIMITED_OUTCOMES: Final = frozenset({"rate_limited"})
# Our own credentials were refused: auth evidence, never availability. The one place that says
# which outcomes count as such (a nonce refused is a configuration fault, not this).
AUTH_OUTCOMES: Final = frozenset({"auth_error"})
# Our nonce was refused: replicas share a key or the clock went back. A configuration warning,
# neither auth evidence nor availability.
NONCE_OUTCOMES: Final = frozenset({"invalid_nonce"})


@dataclass(frozen=True)
class CallResult:
    """One call of a round: `outcome` is one of the closed set (an exchange's StrEnum is fine)."""

    endpoint: str
    outcome: str
    value: Any = None
    detail: str = ""


@dataclass(frozen=True)
class RoundResult:
    """One probe round: `outcome` is success or the first failure; `status` None if unknown
    (else the exchange's system status: online, maintenance, cancel_only, post_only); `quote`
    the market a successful round saw (None when it failed or read no book)."""

    ok: bool
    outcome: str
    calls: tuple[CallResult, ...]
    status: str | None
    quote: Quote | None = None

    @property
    def available(self) -> bool:
        """The API answered every call (its answer may still be an error)."""
        return not any(c.outcome in UNAVAILABLE_OUTCOMES for c in self.calls)

    @property
    def rate_limited(self) -> bool:
        return any(c.outcome in RATE_LIMITED_OUTCOMES for c in self.calls)

    @property
    def auth_failed(self) -> bool:
        """Our own credentials were refused: auth evidence, never availability."""
        return any(c.outcome in AUTH_OUTCOMES for c in self.calls)

    @property
    def invalid_nonce(self) -> bool:
        """Our nonce was refused (replicas share a key or the clock went back): a configuration
        warning, neither auth evidence nor availability."""
        return any(c.outcome in NONCE_OUTCOMES for c in self.calls)


def round_of(
    outcome: str = SUCCESS, status: str | None = "online", endpoint: str = "round"
) -> RoundResult:
    """A round of one call with this outcome: for tests and the simulator."""
    call = CallResult(endpoint, outcome, detail="" if outcome == SUCCESS else outcome)
    return RoundResult(outcome == SUCCESS, outcome, (call,), status)


@dataclass(frozen=True)
class Check:
    """One recovery check: its name (system_status, price, balance, order_book), passed or not."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Quote:
    """The market a recovery check saw: what failover's guards read (price deviation against a
    reference, book depth for the AUD waiting, balance). Amounts are Decimal, never float.

    `asks` are (price, volume in BTC), best (lowest) first, as deep as the book call returned;
    `balance_aud` is None without a read-only key (or when the check could not read it).
    """

    best_bid: Decimal | None
    best_ask: Decimal | None
    asks: tuple[tuple[Decimal, Decimal], ...] = ()
    balance_aud: Decimal | None = None

    @property
    def mid(self) -> Decimal | None:
        """The reference price this quote gives: the middle of the best bid and ask."""
        if self.best_bid is None or self.best_ask is None:
            return None
        return (self.best_bid + self.best_ask) / 2


@dataclass(frozen=True)
class RecoveryResult:
    """A recovery check: passed or not, each check, and the market it saw (None if not read)."""

    ok: bool
    checks: tuple[Check, ...] = field(default_factory=tuple)
    quote: Quote | None = None


@dataclass(frozen=True)
class ProbeSettings:
    """One exchange's probe cadence, in seconds.

    `probe_interval` while all is well (the runbook's 30 s health check), `doubt_interval` after a
    round the API did not answer, `incident_interval` while an incident is open; `timeout` of one
    call; `verification_time` the longest a recovery check may take (the lease of a verification
    is that plus a margin, so a crashed verifier frees it soon after); `verify_interval` how often
    its row of failover's evidence is refreshed (runbook/verification_watch.py).
    """

    probe_interval: float
    doubt_interval: float
    incident_interval: float
    timeout: float
    verification_time: float
    verify_interval: float = 15.0


class Probe(Protocol):
    """What the incident loop needs of an exchange: rounds, and the runbook's recovery checks."""

    async def run_once(self) -> RoundResult: ...

    async def recovery_check(self) -> RecoveryResult: ...


class Integration(Protocol):
    """An exchange the exporter can probe and verify."""

    @property
    def name(self) -> str:
        """The exchange's name in `exchanges` and in the `exchange` label."""
        ...

    def enabled(self, config: Config) -> bool:
        """Whether its probe runs (its config section may switch it off)."""
        ...

    def settings(self, config: Config) -> ProbeSettings: ...

    def probe(
        self, config: Config, secrets: Secrets, session: aiohttp.ClientSession,
        registry: CollectorRegistry,
    ) -> Probe: ...  # fmt: skip


# An exchange no integration probes: decisions on the platform's calls and alerts, on this cadence.
UNPROBED = ProbeSettings(
    probe_interval=60.0, doubt_interval=5.0, incident_interval=5.0, timeout=10.0,
    verification_time=0.0,
)  # fmt: skip


class Registry:
    """The exchanges that can be probed, by name."""

    def __init__(self, integrations: Iterable[Integration] = ()) -> None:
        self._by_name: dict[str, Integration] = {}
        for integration in integrations:
            self.register(integration)

    def register(self, integration: Integration) -> None:
        if integration.name in self._by_name:
            raise ValueError(f"exchange integration {integration.name!r} registered twice")
        self._by_name[integration.name] = integration

    def get(self, exchange: str) -> Integration | None:
        return self._by_name.get(exchange)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def settings(self, config: Config, exchange: str) -> ProbeSettings:
        """The exchange's settings; an exchange without an integration gets UNPROBED."""
        integration = self.get(exchange)
        return integration.settings(config) if integration is not None else UNPROBED

    def probed(self, config: Config, exchange: str) -> Integration | None:
        """The integration that probes the exchange, None when none does (or it is disabled)."""
        integration = self.get(exchange)
        return integration if integration is not None and integration.enabled(config) else None
