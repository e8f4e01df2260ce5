"""A Kraken-compatible REST server for tests and drills, switchable at runtime into failure modes.

It serves SystemStatus, Ticker, Depth, Time and a signed Balance with Kraken's payload shapes and
error strings. Switch modes with `FakeKraken.set_mode()` or `POST /_control/mode`
(`{"mode": "slow", "latency": 6}`); the control endpoint also listens on its own port
(`--control-listen`) so it stays reachable while the API port is `down`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import formatdate
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

from aiohttp import web

from .signing import decode_secret, sign

log = logging.getLogger(__name__)


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
_STATUS_BY_MODE: Final = {
    Mode.MAINTENANCE: "maintenance",
    Mode.CANCEL_ONLY: "cancel_only",
    Mode.POST_ONLY: "post_only",
}
# Kraken accepts the short and the canonical pair name and always answers with the canonical one.
_PAIRS: Final = {
    "XBTAUD": "XXBTZAUD",
    "XXBTZAUD": "XXBTZAUD",
    "XBTUSD": "XXBTZUSD",
    "XXBTZUSD": "XXBTZUSD",
}


@dataclass
class FakeKrakenState:
    """Everything the fake exchange knows; tests may read `hits` and change prices."""

    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
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
    last_nonce: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

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
        return {"mode": self.mode.value, "latency": self.latency, "http_status": self.http_status}


SetMode = Callable[[Mode | str, float | None, int | None], Awaitable[None]]
STATE: Final = web.AppKey("state", FakeKrakenState)
SET_MODE: Final = web.AppKey[SetMode]("set_mode")


def _kraken(result: dict[str, Any] | None = None, error: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": [error] if error else []}
    if result is not None:
        body["result"] = result
    return web.json_response(body)


async def _params(request: web.Request) -> dict[str, str]:
    params = dict(request.query)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params


async def _system_status(request: web.Request) -> web.Response:
    status = _STATUS_BY_MODE.get(request.app[STATE].mode, "online")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return _kraken({"status": status, "timestamp": now})


async def _ticker(request: web.Request) -> web.Response:
    pair = _PAIRS.get((await _params(request)).get("pair", ""))
    if pair is None:
        return _kraken(error="EQuery:Unknown asset pair")
    p = request.app[STATE].prices[pair]
    f = "{:.5f}".format
    return _kraken(
        {
            pair: {
                "a": [f(p + 5), "1", "1.000"],
                "b": [f(p - 5), "2", "2.000"],
                "c": [f(p), "0.00150000"],
                "v": ["12.34567890", "45.67890123"],
                "p": [f(p - 1), f(p - 2)],
                "t": [321, 1234],
                "l": [f(p - 900), f(p - 1500)],
                "h": [f(p + 800), f(p + 1200)],
                "o": f(p - 300),
            }
        }
    )


async def _depth(request: web.Request) -> web.Response:
    params = await _params(request)
    pair = _PAIRS.get(params.get("pair", ""))
    if pair is None or not params.get("count", "100").isdigit():
        return _kraken(
            error="EQuery:Unknown asset pair" if pair is None else "EGeneral:Invalid arguments"
        )
    count = min(max(int(params.get("count", "100")), 1), 500)
    p, now = request.app[STATE].prices[pair], int(time.time())
    asks = [[f"{p + 5 * (i + 1):.5f}", "0.250", now] for i in range(count)]
    bids = [[f"{p - 5 * (i + 1):.5f}", "0.400", now] for i in range(count)]
    return _kraken({pair: {"asks": asks, "bids": bids}})


async def _time(request: web.Request) -> web.Response:
    now = time.time()
    return _kraken({"unixtime": int(now), "rfc1123": formatdate(now, usegmt=True)})


async def _balance(request: web.Request) -> web.Response:
    state = request.app[STATE]
    error = _authenticate(state, request, await request.text())
    return _kraken(error=error) if error else _kraken(dict(state.balances))


def _authenticate(state: FakeKrakenState, request: web.Request, body: str) -> str | None:
    """Kraken's checks in Kraken's words: the key, then the signature, then the nonce."""
    key = request.headers.get("API-Key", "")
    if (
        state.api_key is None
        or state.api_secret is None
        or not hmac.compare_digest(key, state.api_key)
    ):
        return "EAPI:Invalid key"
    nonce = parse_qs(body).get("nonce", [""])[0]
    if not nonce.isdigit():
        return "EAPI:Invalid nonce"
    expected = sign(request.path, nonce, body, state.api_secret)
    if not hmac.compare_digest(request.headers.get("API-Sign", ""), expected):
        return "EAPI:Invalid signature"
    if int(nonce) <= state.last_nonce:
        return "EAPI:Invalid nonce"
    state.last_nonce = int(nonce)
    return None


async def _pause(state: FakeKrakenState, seconds: float) -> None:
    """Sleep that a server stop cuts short."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), seconds)


def _drop(request: web.Request) -> web.Response:
    """Cut the connection without a reply (what a dead host looks like on a pooled connection)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)


def _failure(state: FakeKrakenState, endpoint: str, private: bool) -> web.Response | None:
    """The reply the current mode gives instead of the normal one, if any."""
    mode = state.mode
    if mode is Mode.RATE_LIMITED:
        return _kraken(error="EAPI:Rate limit exceeded")
    if mode is Mode.RATE_LIMITED_HTTP:
        return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "1"})
    if mode is Mode.SERVER_ERROR:
        html = f"<html><body><h1>{state.http_status} Server Error</h1></body></html>"
        return web.Response(status=state.http_status, text=html, content_type="text/html")
    if mode is Mode.GARBAGE:
        return web.Response(text="<html>upstream says hello", content_type="text/html")
    if mode is Mode.MAINTENANCE and endpoint != "SystemStatus":
        return _kraken(error="EService:Unavailable")
    if private and mode is Mode.AUTH_FAILURE:
        return _kraken(error="EAPI:Invalid signature")
    if private and mode is Mode.INVALID_KEY:
        return _kraken(error="EAPI:Invalid key")
    return None


@web.middleware
async def _modes(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not request.path.startswith("/0/"):
        return await handler(request)
    state = request.app[STATE]
    endpoint = request.path.rsplit("/", 1)[-1]
    state.hits[endpoint] += 1
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _answer(state, request, handler, endpoint)
    finally:
        state.in_flight -= 1


async def _answer(
    state: FakeKrakenState,
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    endpoint: str,
) -> web.StreamResponse:
    while state.mode is Mode.HANGING and not state.stopping.is_set():
        await state.changed.wait()
    if state.mode is Mode.DOWN or state.stopping.is_set():
        return _drop(request)
    await _pause(state, state.latency)
    failure = _failure(state, endpoint, request.path.startswith("/0/private/"))
    return failure if failure is not None else await handler(request)


async def _get_mode(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].describe())


async def _post_mode(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        mode, latency, http_status = body["mode"], body.get("latency"), body.get("http_status")
        await request.app[SET_MODE](
            Mode(mode), None if latency is None else float(latency), http_status
        )
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"invalid mode request: {exc}"}, status=400)
    return web.json_response(request.app[STATE].describe())


def make_control_app(state: FakeKrakenState, set_mode: SetMode | None = None) -> web.Application:
    """Only the control endpoint, for a port of its own."""
    app = web.Application()
    _add_control(app, state, set_mode)
    return app


def _add_control(app: web.Application, state: FakeKrakenState, set_mode: SetMode | None) -> None:
    async def apply(mode: Mode | str, latency: float | None, http_status: int | None) -> None:
        state.apply(mode, latency, http_status)

    app[STATE] = state
    app[SET_MODE] = set_mode or apply
    app.router.add_get("/_control/mode", _get_mode)
    app.router.add_post("/_control/mode", _post_mode)


def make_app(state: FakeKrakenState, set_mode: SetMode | None = None) -> web.Application:
    """The Kraken API (and its control endpoint). Without FakeKraken, `down` drops connections."""
    app = web.Application(middlewares=[_modes])
    _add_control(app, state, set_mode)
    for name, handler in (
        ("SystemStatus", _system_status),
        ("Ticker", _ticker),
        ("Depth", _depth),
        ("Time", _time),
    ):
        app.router.add_route("GET", f"/0/public/{name}", handler)
        app.router.add_route("POST", f"/0/public/{name}", handler)
    app.router.add_post("/0/private/Balance", _balance)
    return app


class FakeKraken:
    """The fake exchange on real sockets; `down` closes the listening socket, same port after."""

    def __init__(
        self,
        state: FakeKrakenState | None = None,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> None:
        self.state = state or FakeKrakenState(api_key=api_key, api_secret=api_secret)
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._control: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host, self._port = "127.0.0.1", 0
        self.control_url: str | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("FakeKraken is not started")
        return f"http://{self._host}:{self._port}"

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
        self._runner = web.AppRunner(make_app(self.state, self.set_mode), shutdown_timeout=2.0)
        await self._runner.setup()
        self._host, self._port = host, port
        await self._listen()  # even when starting `down`: fixes the port for later
        if self.state.mode is Mode.DOWN:
            await self.set_mode(Mode.DOWN, self.state.latency)
        if control_port is not None:
            self._control = web.AppRunner(make_control_app(self.state, self.set_mode))
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

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()
        self._port = self._site.port

    async def __aenter__(self) -> FakeKraken:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kraken-server",
        description="Kraken-compatible REST server for tests and drills. "
        "API key and secret come from --api-key-file/--api-secret-file "
        "or KRAKEN_API_KEY/KRAKEN_API_SECRET.",
    )
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 9988), metavar="HOST:PORT")
    parser.add_argument(
        "--control-listen",
        type=_address,
        metavar="HOST:PORT",
        help="separate port for /_control/mode, reachable in down mode",
    )
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.HEALTHY.value)
    parser.add_argument("--latency", type=float, help="seconds of delay (slow mode default 6)")
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--api-secret-file", type=Path)
    return parser


def _secret(path: Path | None, env: str) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get(env) or None


async def _serve(state: FakeKrakenState, args: argparse.Namespace) -> None:
    fake = FakeKraken(state)
    control = args.control_listen or (None, None)
    await fake.start(*args.listen, control_host=control[0], control_port=control[1])
    log.info("fake Kraken on %s (control %s), mode %s", fake.url, fake.control_url, state.mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`kraken-server --listen 127.0.0.1:9988 [--control-listen ...] [--mode healthy]`."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        key = _secret(args.api_key_file, "KRAKEN_API_KEY")
        secret = _secret(args.api_secret_file, "KRAKEN_API_SECRET")
        if secret is not None:
            decode_secret(secret)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if (key is None) != (secret is None):
        parser.error("give both the API key and the API secret, or neither")
    state = FakeKrakenState(api_key=key, api_secret=secret)
    state.apply(args.mode, args.latency)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(state, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
