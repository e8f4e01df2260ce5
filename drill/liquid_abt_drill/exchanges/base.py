"""What the fake secondary exchanges share: modes, state, the middleware that applies a mode, a
control endpoint, and real sockets where `down` closes the listening socket (connection refused).

Each exchange module supplies its routes and its own words for a failure (status codes and error
bodies as its published docs give them); this module never speaks an exchange's dialect.
Switch modes with `set_mode()` or `POST /_control/mode` (`{"mode": "slow", "latency": 6}`), and
the market with `state.set_market()` or `POST /_control/market` (`{"price": "150000", "spike":
"0.03", "balances": {"AUD": "100"}}`: a price, the price_spike share, a low balance); the
control endpoint can listen on its own port, so it stays reachable while the API is `down`.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Mode(StrEnum):
    HEALTHY = "healthy"
    SLOW = "slow"  # answers normally after `latency` seconds
    DOWN = "down"  # listening socket closed: connection refused
    HANGING = "hanging"  # accepts and never answers
    MAINTENANCE = "maintenance"  # status says so, market data and accounts refused
    RATE_LIMITED = "rate_limited"  # the exchange's own rate-limit reply
    AUTH_FAILURE = "auth_failure"  # private calls: the exchange's bad-signature reply
    SERVER_ERROR = "server_error"  # `http_status` (502) with an HTML page
    GARBAGE = "garbage"  # HTTP 200 with a body that is not JSON
    THIN_BOOK = "thin_book"  # healthy, but a few hundred AUD on each side of the book
    PRICE_SPIKE = "price_spike"  # healthy, but every price `spike` above the reference


DEFAULT_SLOW_LATENCY: Final = 6.0  # just above the runbook's 5 s "slow response"
# Kraken's fake quotes XBT/AUD at this price too, so a healthy secondary agrees with the primary.
REFERENCE_PRICE: Final = Decimal("152345.6")


@dataclass
class FakeExchangeState:
    """Everything a fake exchange knows; tests may read `hits` and change prices or balances."""

    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    mode: Mode = Mode.HEALTHY
    latency: float = 0.0
    http_status: int = 502
    price: Decimal = REFERENCE_PRICE
    spike: Decimal = Decimal("0.05")  # price_spike: 5 %, far past a 1.5 % guard
    book_levels: int = 20
    level_volume: Decimal = Decimal("0.4")
    thin_volume: Decimal = Decimal("0.001")  # thin_book: 2 levels of 0.001 BTC a side
    balances: dict[str, Decimal] = field(
        default_factory=lambda: {"AUD": Decimal("25000.00"), "BTC": Decimal("0.5")}
    )
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0  # lets tests prove that a client never overlaps its calls
    # More accepted keys (key -> secret): one per program, as production gives each replica its
    # own read-only key (Independent Reserve's nonces must increase per key).
    keys: dict[str, str] = field(default_factory=dict, repr=False)
    last_nonces: dict[str, int] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def secret_of(self, key: str) -> str | None:
        """The secret of an accepted key, None for a key this exchange does not know."""
        if self.api_key is not None and hmac.compare_digest(key, self.api_key):
            return self.api_secret
        return next((s for k, s in self.keys.items() if hmac.compare_digest(key, k)), None)

    @property
    def quote(self) -> Decimal:
        """The mid price now: the reference, or the spiked price in price_spike mode."""
        return self.price * (1 + self.spike) if self.mode is Mode.PRICE_SPIKE else self.price

    def book(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """(bids, asks) as (price, volume), best first, around `quote`."""
        thin = self.mode is Mode.THIN_BOOK
        count, volume = (2, self.thin_volume) if thin else (self.book_levels, self.level_volume)
        mid = self.quote
        bids = [(mid - 5 * (i + 1), volume) for i in range(count)]
        asks = [(mid + 5 * (i + 1), volume) for i in range(count)]
        return bids, asks

    def apply(
        self, mode: Mode | str, latency: float | None = None, http_status: int | None = None
    ) -> None:
        """Switch mode; waiting (hanging) requests re-check the new mode."""
        new_mode = Mode(mode)
        if latency is not None and latency < 0:
            raise ValueError(f"latency must not be negative, got {latency!r}")
        if http_status is not None and not 500 <= http_status <= 599:
            raise ValueError(f"http_status must be a 5xx status, got {http_status!r}")
        self.mode = new_mode
        default = DEFAULT_SLOW_LATENCY if new_mode is Mode.SLOW else 0.0
        self.latency = latency if latency is not None else default
        self.http_status = http_status or self.http_status
        self.wake()

    def wake(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value, "latency": self.latency, "http_status": self.http_status,
            "price": str(self.price), "spike": str(self.spike),
            "balances": {asset: str(amount) for asset, amount in self.balances.items()},
        }  # fmt: skip

    def set_market(
        self,
        *,
        price: Decimal | str | None = None,
        spike: Decimal | str | None = None,
        balances: dict[str, Decimal | str] | None = None,
    ) -> None:
        """The market the next replies quote: the reference price, the spike of price_spike
        mode (a share: 0.05 is 5 %), balances by asset (a low AUD balance for failover drills)."""
        new_price = self.price if price is None else Decimal(str(price))
        new_spike = self.spike if spike is None else Decimal(str(spike))
        new_balances = {a: Decimal(str(v)) for a, v in (balances or {}).items()}
        if new_price <= 0 or not new_price.is_finite():
            raise ValueError(f"price must be positive, got {price!r}")
        if not new_spike.is_finite() or new_spike <= -1:
            raise ValueError(f"spike must be above -1, got {spike!r}")
        if any(not v.is_finite() or v < 0 for v in new_balances.values()):
            raise ValueError(f"balances must not be negative, got {balances!r}")
        self.price, self.spike = new_price, new_spike
        self.balances.update(new_balances)


STATE: Final = web.AppKey("state", FakeExchangeState)


def html_error(status: int) -> web.Response:
    """What a load balancer in front of an exchange serves when the exchange behind it fails."""
    html = f"<html><body><h1>{status} Server Error</h1></body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def garbage() -> web.Response:
    return web.Response(text="<html>upstream says hello", content_type="text/html")


class FakeExchange(abc.ABC):
    """A fake exchange on real sockets; subclasses give the routes and the failure replies."""

    name = "exchange"
    api_prefix = "/"  # requests under this path are API calls, to which the mode applies

    def __init__(
        self,
        state: FakeExchangeState | None = None,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> None:
        self.state = state or FakeExchangeState(api_key=api_key, api_secret=api_secret)
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._control: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host, self._port = "127.0.0.1", 0
        self.control_url: str | None = None

    # What each exchange supplies.
    @abc.abstractmethod
    def add_routes(self, app: web.Application) -> None: ...

    def endpoint(self, request: web.Request) -> str:
        """The name requests are counted under in `state.hits`."""
        return request.path.rsplit("/", 1)[-1]

    @abc.abstractmethod
    def failure(self, request: web.Request, endpoint: str) -> web.StreamResponse | None:
        """The reply the current mode gives instead of the normal one, if any."""

    # The machinery.
    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError(f"the fake {self.name} is not started")
        return f"http://{self._host}:{self._port}"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._modes])
        self._add_control(app)
        self.add_routes(app)
        return app

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        control_host: str | None = None,
        control_port: int | None = None,
    ) -> None:
        """Listen on host:port (0 picks a free port); a control port only when asked for."""
        self.state.stopping.clear()
        self._runner = web.AppRunner(self.make_app(), shutdown_timeout=2.0)
        await self._runner.setup()
        self._host, self._port = host, port
        await self._listen()  # even when starting `down`: fixes the port for later
        if self.state.mode is Mode.DOWN:
            await self.set_mode(Mode.DOWN, self.state.latency)
        if control_port is not None:
            control = web.Application()
            self._add_control(control)
            self._control = web.AppRunner(control)
            await self._control.setup()
            site = web.TCPSite(self._control, control_host or host, control_port)
            await site.start()
            self.control_url = f"http://{control_host or host}:{site.port}"

    async def stop(self) -> None:
        self.state.stopping.set()
        self.state.wake()
        for runner in (self._control, self._runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._control = self._site = None

    async def set_mode(
        self, mode: Mode | str, latency: float | None = None, http_status: int | None = None
    ) -> None:
        async with self._lock:
            mode = Mode(mode)
            if mode is not Mode.DOWN and self._site is None and self._runner is not None:
                await self._listen()
            self.state.apply(mode, latency, http_status)  # before closing: drops pooled requests
            if mode is Mode.DOWN and self._site is not None:
                await self._site.stop()
                self._site = None

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()
        self._port = self._site.port

    @web.middleware
    async def _modes(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(self.api_prefix) or request.path.startswith("/_control"):
            return await handler(request)
        state = self.state
        endpoint = self.endpoint(request)
        state.hits[endpoint] += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            while state.mode is Mode.HANGING and not state.stopping.is_set():
                await state.changed.wait()
            if state.mode is Mode.DOWN or state.stopping.is_set():
                return _drop(request)
            await _pause(state, state.latency)
            return self.failure(request, endpoint) or await handler(request)
        finally:
            state.in_flight -= 1

    def _add_control(self, app: web.Application) -> None:
        app[STATE] = self.state
        app.router.add_get("/_control/mode", self._get_mode)
        app.router.add_post("/_control/mode", self._post_mode)
        app.router.add_post("/_control/market", self._post_market)

    async def _get_mode(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.describe())

    async def _post_mode(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            latency, http_status = body.get("latency"), body.get("http_status")
            await self.set_mode(
                Mode(body["mode"]), None if latency is None else float(latency), http_status
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"invalid mode request: {exc}"}, status=400)
        return web.json_response(self.state.describe())

    async def _post_market(self, request: web.Request) -> web.Response:
        """`{"price": "150000", "spike": "0.03", "balances": {"AUD": "100"}}`, any subset."""
        try:
            body = await request.json()
            if not isinstance(body, dict) or not set(body) <= {"price", "spike", "balances"}:
                raise ValueError("expected an object with price, spike and/or balances")
            balances = body.get("balances")
            if balances is not None and not isinstance(balances, dict):
                raise ValueError("balances: expected an object of asset: amount")
            self.state.set_market(
                price=body.get("price"), spike=body.get("spike"), balances=balances
            )
        except (ValueError, ArithmeticError, TypeError) as exc:
            return web.json_response({"error": f"invalid market request: {exc}"}, status=400)
        return web.json_response(self.state.describe())


async def _pause(state: FakeExchangeState, seconds: float) -> None:
    """Sleep that a server stop cuts short."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), seconds)


def _drop(request: web.Request) -> web.Response:
    """Cut the connection without a reply (what a dead host looks like on a pooled connection)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def read_keys(path: Path) -> dict[str, str]:
    """`KEY SECRET` lines; blank lines and # comments skipped."""
    keys = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected `KEY SECRET`")
        keys[fields[0]] = fields[1]
    return keys


def _secret(path: Path | None, env: str) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get(env) or None


def serve(factory: type[FakeExchange], argv: Sequence[str], *, default_port: int) -> int:
    """Run one fake exchange on real sockets until SIGINT or SIGTERM (the modules' `__main__`)."""
    env = factory.name.upper()
    parser = argparse.ArgumentParser(
        prog=f"python -m liquid_abt_drill.exchanges.{factory.name}",
        description=f"A fake {factory.name} for tests and drills. API key and secret come from "
        f"--api-key-file/--api-secret-file or {env}_API_KEY/{env}_API_SECRET.",
    )
    parser.add_argument(
        "--listen", type=_address, default=("127.0.0.1", default_port), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--control-listen", type=_address, metavar="HOST:PORT",
        help="separate port for /_control/mode, reachable in down mode",
    )  # fmt: skip
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.HEALTHY.value)
    parser.add_argument("--latency", type=float, help="seconds of delay (slow mode default 6)")
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--api-secret-file", type=Path)
    parser.add_argument(
        "--api-keys-file", type=Path,
        help="more accepted keys, one `KEY SECRET` pair a line (one key per program)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        key = _secret(args.api_key_file, f"{env}_API_KEY")
        secret = _secret(args.api_secret_file, f"{env}_API_SECRET")
        keys = read_keys(args.api_keys_file) if args.api_keys_file else {}
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if (key is None) != (secret is None):
        parser.error("give both the API key and the API secret, or neither")
    state = FakeExchangeState(api_key=key, api_secret=secret, keys=keys)
    try:
        state.apply(args.mode, args.latency)
    except ValueError as exc:
        parser.error(str(exc))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(factory(state), args))
    return 0


async def _serve(fake: FakeExchange, args: argparse.Namespace) -> None:
    control = args.control_listen or (None, None)
    await fake.start(*args.listen, control_host=control[0], control_port=control[1])
    logging.getLogger(__name__).info(
        "fake %s on %s (control %s), mode %s", fake.name, fake.url, fake.control_url,
        fake.state.mode,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()
