"""Serving the app: listen sockets bound first, connection limits, signals, a bounded shutdown.

Connections are limited the way Go's net/http servers are configured: a header read timeout
(a client gets that long to send a request's headers), an idle keep-alive timeout, and a maximum
of open connections. At the maximum, the longest-idle connection (no request in flight: an idle
keep-alive or a slow-loris client still sending headers) is closed to make room; only when every
connection is busy is the new one answered 503. Accept errors (out of file descriptors) are
logged once per burst.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from exporter.config import ConfigError, format_duration

log = logging.getLogger(__name__)

# Roles of a listener: `main` serves everything unless an `admin` listener exists, which then
# takes the admin API, the webhook and /-/reload away from `main`.
MAIN, ADMIN = "main", "admin"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 32\r\n\r\nToo many connections, try again\n"
)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 512
    read_header_timeout: float = 10.0
    idle_timeout: float = 60.0


@dataclass
class Listener:
    """Bound, listening sockets for one address (a host may resolve to several)."""

    role: str
    address: str
    sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def split_host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {value!r}: expected host:port, like :9898")
    return host.strip("[]"), int(port)


def bind(value: str, flag: str, role: str = MAIN) -> Listener:
    """Bind and listen now, before anything else starts, so a bad address fails first."""
    host, port = split_host_port(value, flag)
    try:
        if not host:
            if socket.has_dualstack_ipv6():
                try:
                    sock = socket.create_server(
                        ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=512
                    )
                    return Listener(role, value, [sock])
                except OSError:  # IPv6 disabled in this container: IPv4 only
                    pass
            return Listener(role, value, [socket.create_server(("0.0.0.0", port), backlog=512)])
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"{flag} {value!r}: cannot resolve host {host!r}: {exc.strerror}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{flag} {value!r}: cannot listen: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, sockaddr in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4][:2]) for i in infos
        ):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(512)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"{flag} {value!r}: cannot listen: {exc.strerror or exc}") from None
    return Listener(role, value, sockets)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (as Go programs do); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: header deadline, idle tracking, eviction."""

    def __init__(self, pool: Connections, inner: asyncio.Protocol, role: str) -> None:
        self._pool = pool
        self._inner = inner
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.in_flight = 0
        self._header_deadline: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol, forwarded to aiohttp ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._pool.admit(self):
            transport.write(BUSY_RESPONSE)  # type: ignore[attr-defined]
            transport.close()
            self.transport = None
            return
        self._inner.connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self.in_flight == 0 and self._header_deadline is None:
            self._arm_header_deadline()  # the first bytes of the next request on a kept-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused in connection_made
            return
        self._cancel_header_deadline()
        self._pool.forget(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # --- requests, told by the middleware ---
    def request_started(self) -> None:
        self.in_flight += 1
        self._cancel_header_deadline()
        self._pool.busy(self)

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._pool.idle(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_header_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self._pool.limits.read_header_timeout, self._expire)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.in_flight == 0:
            self._pool.note("header_timeout")
            self.close()


class Connections:
    """Every open connection of every listener, with the idle ones in the order they went idle."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_transport: dict[Any, Connection] = {}
        self._idle: OrderedDict[Connection, None] = OrderedDict()
        self._bursts: dict[str, BurstLog] = {}

    def __len__(self) -> int:
        return len(self._by_transport)

    def factory(
        self, make_inner: Callable[[], asyncio.Protocol], role: str
    ) -> Callable[[], Connection]:
        return lambda: Connection(self, make_inner(), role)

    def admit(self, connection: Connection) -> bool:
        if len(self._by_transport) >= self.limits.max_connections:
            if not self._idle:
                self.note("refused_busy")
                return False
            oldest, _ = self._idle.popitem(last=False)
            self._by_transport.pop(oldest.transport, None)
            self.note("evicted_idle")
            oldest.close()
        self._by_transport[connection.transport] = connection
        self._idle[connection] = None
        return True

    def forget(self, connection: Connection) -> None:
        self._by_transport.pop(connection.transport, None)
        self._idle.pop(connection, None)

    def busy(self, connection: Connection) -> None:
        self._idle.pop(connection, None)

    def idle(self, connection: Connection) -> None:
        if connection.transport in self._by_transport:
            self._idle[connection] = None

    def lookup(self, transport: Any) -> Connection | None:
        return self._by_transport.get(transport)

    def note(self, event: str) -> None:
        """Connection limit events, logged once per burst rather than once per connection."""
        burst = self._bursts.setdefault(event, BurstLog(log, _LIMIT_MESSAGES[event]))
        burst.hit({"max_connections": self.limits.max_connections})


_LIMIT_MESSAGES = {
    "refused_busy": "connection limit reached with every connection busy: refusing new ones",
    "evicted_idle": "connection limit reached: closing the longest-idle connections",
    "header_timeout": "closing connections that sent no complete request headers in time",
}


class BurstLog:
    """Logs the first event of a burst, then one summary when it has been quiet for `quiet` s."""

    def __init__(self, logger: logging.Logger, message: str, quiet: float = 10.0) -> None:
        self._log = logger
        self._message = message
        self._quiet = quiet
        self._count = 0
        self._started = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, extra: dict[str, Any] | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self._count == 0:
            self._started = time.monotonic()
            self._log.warning(self._message, extra=extra or {})
        self._count += 1
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self._quiet, self._end)

    def _end(self) -> None:
        if self._count > 1:
            self._log.warning(
                f"{self._message}: burst over",
                extra={
                    "events": self._count,
                    "seconds": round(time.monotonic() - self._started, 1),
                },
            )
        self._count, self._timer = 0, None


class LoopErrors:
    """The event loop's exception handler: accept errors once per burst, the rest as usual."""

    MESSAGE = "cannot accept connections: out of system resources (file descriptors?)"

    def __init__(self, quiet: float = 10.0) -> None:
        self._accept = BurstLog(logging.getLogger("asyncio"), self.MESSAGE, quiet)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message", "").startswith("socket.accept() out of system resource"):
            error = context.get("exception")
            self._accept.hit({"error": str(error) if error else "unknown"})
            return
        loop.default_exception_handler(context)


@web.middleware
async def track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tells the connection a request is in flight: its header deadline is met, it is not idle."""
    connections = request.config_dict.get(CONNECTIONS)
    connection = connections.lookup(request.transport) if connections is not None else None
    if connection is None:
        return await handler(request)
    connection.request_started()
    try:
        return await handler(request)
    finally:
        connection.request_finished()


CONNECTIONS = web.AppKey("connections", Connections)


class GuardedSite(web.BaseSite):
    """A site on already-bound sockets whose connections go through `Connections`."""

    def __init__(
        self,
        runner: web.AppRunner,
        listener: Listener,
        connections: Connections,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._listener = listener
        self._connections = connections
        self._servers: list[asyncio.AbstractServer] = []

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._listener.address}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        factory = self._connections.factory(server, self._listener.role)  # type: ignore[arg-type]
        for sock in self._listener.sockets:
            self._servers.append(
                await loop.create_server(factory, sock=sock, ssl=self._ssl_context)
            )
        self._server = self._servers[0]  # what aiohttp's runner reads its addresses from

    async def stop(self) -> None:
        for srv in self._servers[1:]:
            srv.close()
        await super().stop()


async def serve(
    app: web.Application,
    listeners: Sequence[Listener],
    limits: Limits,
    ssl_context: ssl.SSLContext | None,
    *,
    before_serving: Callable[[web.Application], Awaitable[None]],
    on_reload: Callable[[], Coroutine[Any, Any, Any]],
    shutdown_timeout: float = 10.0,
) -> None:
    """Start the app, run `before_serving`, then serve until SIGTERM or SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(LoopErrors())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[Any]] = set()

    def reload() -> None:
        log.info("SIGHUP: reloading the configuration")
        task = asyncio.create_task(on_reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    connections = Connections(limits)
    app[CONNECTIONS] = connections
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, keepalive_timeout=limits.idle_timeout,
        shutdown_timeout=shutdown_timeout,
    )  # fmt: skip
    await runner.setup()
    try:
        await before_serving(app)
        for listener in listeners:
            await GuardedSite(runner, listener, connections, ssl_context).start()
        log.info(
            "serving",
            extra={
                "listeners": ",".join(f"{x.role}={x.address}" for x in listeners),
                "tls": ssl_context is not None,
                "max_connections": limits.max_connections,
                "read_header_timeout": format_duration(limits.read_header_timeout),
                "idle_timeout": format_duration(limits.idle_timeout),
            },
        )
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
