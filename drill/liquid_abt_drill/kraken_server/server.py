"""A Kraken-compatible REST server for tests and drills, switchable at runtime into failure modes.

It serves SystemStatus, Ticker, Depth, Time and a signed Balance with Kraken's payload shapes and
error strings. Switch modes with `FakeKraken.set_mode()` or `POST /_control/mode`
(`{"mode": "slow", "latency": 6}`); the control endpoint also listens on its own port
(`--control-listen`) so it stays reachable while the API port is `down`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from .endpoints import balance, depth, kraken_reply, server_time, system_status, ticker
from .state import DEFAULT_SLOW_LATENCY, SET_MODE, STATE, FakeKrakenState, Faults, Mode, SetMode

__all__ = [
    "DEFAULT_SLOW_LATENCY",
    "SET_MODE",
    "STATE",
    "FakeKraken",
    "FakeKrakenState",
    "Faults",
    "Mode",
    "SetMode",
    "make_app",
    "make_control_app",
]


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
        return kraken_reply(error="EAPI:Rate limit exceeded")
    if mode is Mode.RATE_LIMITED_HTTP:
        return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "1"})
    if mode is Mode.SERVER_ERROR:
        html = f"<html><body><h1>{state.http_status} Server Error</h1></body></html>"
        return web.Response(status=state.http_status, text=html, content_type="text/html")
    if mode is Mode.GARBAGE:
        return web.Response(text="<html>upstream says hello", content_type="text/html")
    if mode is Mode.MAINTENANCE and endpoint != "SystemStatus":
        return kraken_reply(error="EService:Unavailable")
    if private and mode is Mode.AUTH_FAILURE:
        return kraken_reply(error="EAPI:Invalid signature")
    if private and mode is Mode.INVALID_KEY:
        return kraken_reply(error="EAPI:Invalid key")
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
    if state.faults.hang_ratio and state.rng.random() < state.faults.hang_ratio:
        await state.stopping.wait()  # this one request never answers: the client times out
    if state.mode is Mode.DOWN or state.stopping.is_set():
        return _drop(request)
    await _pause(state, state.latency)
    failure = _failure(state, endpoint, request.path.startswith("/0/private/"))
    limited = state.faults.rate_limit_ratio
    if failure is None and limited and state.rng.random() < limited:
        failure = kraken_reply(error="EAPI:Rate limit exceeded")
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


async def _post_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        state.faults = Faults.parse(body)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": f"invalid faults: {exc}"}, status=400)
    return web.json_response(state.describe())


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
    app.router.add_post("/_control/faults", _post_faults)


def make_app(state: FakeKrakenState, set_mode: SetMode | None = None) -> web.Application:
    """The Kraken API (and its control endpoint). Without FakeKraken, `down` drops connections."""
    app = web.Application(middlewares=[_modes])
    _add_control(app, state, set_mode)
    for name, handler in (
        ("SystemStatus", system_status),
        ("Ticker", ticker),
        ("Depth", depth),
        ("Time", server_time),
    ):
        app.router.add_route("GET", f"/0/public/{name}", handler)
        app.router.add_route("POST", f"/0/public/{name}", handler)
    app.router.add_post("/0/private/Balance", balance)
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
