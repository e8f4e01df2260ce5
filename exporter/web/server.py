"""Serving the app: listen sockets bound first, connection limits, signals, a bounded shutdown.

Connections are limited the way Go's net/http servers are configured: a header read timeout
(a client gets that long from the accept to finish its TLS handshake and send a request's
headers), a body read timeout, an idle keep-alive timeout, and a maximum of open connections,
TLS handshakes included. At the maximum, the client address holding the most connections pays
(a flood comes from somewhere, Prometheus from elsewhere): a new connection from it is refused,
and one from elsewhere closes one of its connections, in this order: those answered with an
error, those that have not earned their place yet (in a handshake, sending headers, or queued
for a password check), requests still receiving their body, then idle keep-alive connections
answered well before (the real scraper's), each oldest first. Only when every connection is
busy is the new one answered 503. Accept errors (out of file descriptors) are logged once per
burst. docs/security.md has the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

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
    read_header_timeout: float = 10.0  # from the accept: TLS handshake and request headers
    idle_timeout: float = 60.0
    read_body_timeout: float = 30.0  # from the end of the headers to the end of the body


@dataclass
class Listener:
    """Bound, listening sockets for one address (a host may resolve to several)."""

    role: str
    address: str
    sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


LISTEN_BACKLOG = 512  # connections the kernel holds until accepted
ACCEPT_BATCH = 16  # connections accepted a turn of the event loop


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
                        ("", port),
                        family=socket.AF_INET6,
                        dualstack_ipv6=True,
                        backlog=LISTEN_BACKLOG,
                    )
                    return Listener(role, value, [sock])
                except OSError:  # IPv6 disabled in this container: IPv4 only
                    pass
            return Listener(
                role, value, [socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)]
            )
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
            sock.listen(LISTEN_BACKLOG)
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


class QuietRequestHandler(RequestHandler):
    """aiohttp's protocol, answering requests it cannot parse with a short page of our own:
    aiohttp's page quotes the offending raw line back, an `Authorization` header included."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)  # logs, checks the writer
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            return response  # aiohttp's 500 page quotes nothing (no debug mode here)
        try:
            text = f"{status} {HTTPStatus(status).phrase}\n"
        except ValueError:
            text = f"{status}\n"
        quiet = web.Response(status=status, text=text)
        quiet.force_close()
        return quiet


# Who goes first when the connection limit needs room, oldest first in each tier: idle
# connections whose last answer was an error (a wrong password: 401), then those that have not
# shown yet they are worth keeping (new, in a TLS handshake, sending headers, or waiting for a
# password check), then requests still receiving their body, then idle keep-alive connections
# that were answered well before: the real scraper's.
REFUSED, UNTRUSTED, RECEIVING, TRUSTED = "refused", "untrusted", "receiving", "trusted"
EVICTION_ORDER = (REFUSED, UNTRUSTED, RECEIVING, TRUSTED)


class Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: TLS handshake, header and body deadlines,
    its place in the eviction order."""

    def __init__(
        self,
        pool: Connections,
        inner: asyncio.Protocol,
        role: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = pool
        self._inner = inner
        self._tls = tls
        self.role = role
        self.peer = "unknown"  # the client's address
        self.transport: asyncio.Transport | None = None
        self.tier: str | None = None
        self.in_flight = 0
        self.trusted = False  # a request on it was answered with a status below 400
        self.refused = False  # its last answer was 400 or more
        self.waiting = False  # its request waits for a password check
        self.refusing = False  # its request is being refused, slowly (a repeated wrong password)
        self._body: StreamReader | None = None  # the body still arriving
        self._started = False  # aiohttp's protocol has the connection
        self._early: list[bytes] = []  # data that came before it had
        self._lost = False
        self._header_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        self._body_expires = 0.0

    # --- asyncio.Protocol, forwarded to aiohttp ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._pool.admit(self):
            if self._tls is None:  # a TLS client could not read a plain-text answer
                transport.write(BUSY_RESPONSE)  # type: ignore[attr-defined]
            self._lost = True
            transport.close()
            return
        # Counted from the accept: a TLS client that never sends its hello is held to it too.
        self._arm_header_deadline()
        if self._tls is None:
            self._start(self.transport)  # type: ignore[arg-type]
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._handshake(self.transport))  # type: ignore[arg-type]

    async def _handshake(self, raw: asyncio.Transport) -> None:
        """TLS on an accepted connection, so that handshakes count against the limits."""
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(
                raw, self, self._tls, server_side=True,
                ssl_handshake_timeout=self._pool.limits.read_header_timeout,
            )  # fmt: skip
        except Exception as exc:  # a timeout, an eviction, a client that is no TLS client
            log.debug("TLS handshake failed", extra={"error": str(exc) or type(exc).__name__})
            raw.close()
            self._gone(None)
            return
        if secure is None or self._lost:
            if secure is not None:
                secure.close()
            return
        self._pool.rekey(self, raw, secure)
        self.transport = secure
        self._start(secure)

    def _start(self, transport: asyncio.Transport) -> None:
        self._started = True
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if not self._started:  # sent with the end of the TLS handshake, before start_tls returned
            self._early.append(data)
            return
        if self.in_flight == 0 and self._header_deadline is None:
            self._arm_header_deadline()  # the first bytes of the next request on a kept-alive connection
        self._inner.data_received(data)
        body = self._body
        if body is not None and (body.is_eof() or body.exception() is not None):
            self._body_complete()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._started else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone(exc)

    def _gone(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._cancel_header_deadline()
        self._cancel_body_deadline()
        self._pool.forget(self)
        if self._started:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._started:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._started:
            self._inner.resume_writing()

    # --- requests, told by the middlewares ---
    def request_started(self, body: StreamReader | None) -> None:
        self.in_flight += 1
        self._cancel_header_deadline()
        if body is not None and not body.is_eof() and body.exception() is None:
            self._body = body
            timeout = self._pool.limits.read_body_timeout
            self._body_expires = asyncio.get_running_loop().time() + timeout
            self._body_deadline = asyncio.get_running_loop().call_later(timeout, self._body_late)
        self._place()

    def request_finished(self, status: int | None) -> None:
        self.in_flight -= 1
        self.refused = status is None or status >= 400
        self.refusing = False
        if not self.refused:
            self.trusted = True
        if self.in_flight == 0:
            self._body = None
            self._cancel_body_deadline()
        self._place()

    def set_refusing(self, refusing: bool) -> None:
        self.refusing = refusing
        self._place()

    def set_waiting(self, waiting: bool) -> None:
        """A password check is queued (evictable meanwhile) or over."""
        self.waiting = waiting
        self._place()

    def alive(self) -> bool:
        return not self._lost and self.transport is not None and not self.transport.is_closing()

    def body_time_left(self) -> float:
        if self._body_deadline is None:
            return self._pool.limits.read_body_timeout
        return max(0.0, self._body_expires - asyncio.get_running_loop().time())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def note(self, event: str, extra: dict[str, Any] | None = None) -> None:
        self._pool.note(event, extra)

    def _tier(self) -> str | None:
        if self.in_flight == 0:
            if self.trusted:
                return TRUSTED
            return REFUSED if self.refused else UNTRUSTED
        if self.refusing:
            return REFUSED
        if self.waiting:
            return UNTRUSTED
        if self._body is not None:
            return RECEIVING
        return None  # busy: never evicted

    def _place(self) -> None:
        self._pool.place(self, self._tier())

    def _body_complete(self) -> None:
        self._body = None
        self._cancel_body_deadline()
        self._place()

    def _body_late(self) -> None:
        self._body_deadline = None
        if self._body is not None:
            self._pool.note("body_timeout")
            self.close()

    def _arm_header_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self._pool.limits.read_header_timeout, self._expire)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _cancel_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.in_flight == 0:
            self._pool.note("header_timeout")
            self.close()


class Connections:
    """Every open connection of every listener, the evictable ones by tier, oldest first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_transport: dict[Any, Connection] = {}
        self._tiers: dict[str, OrderedDict[Connection, None]] = {
            tier: OrderedDict() for tier in EVICTION_ORDER
        }
        self._per_peer: Counter[str] = Counter()  # open connections by client address
        self._bursts: dict[str, BurstLog] = {}

    def __len__(self) -> int:
        return len(self._by_transport)

    def factory(
        self, server: Server, role: str, tls: ssl.SSLContext | None
    ) -> Callable[[], Connection]:
        loop = asyncio.get_running_loop()

        def make() -> Connection:
            inner = QuietRequestHandler(
                server, loop=loop, keepalive_timeout=self.limits.idle_timeout,
                access_log=None,  # type: ignore[arg-type]  # None: no access log, as AppRunner's
            )  # fmt: skip
            return Connection(self, inner, role, tls)

        return make

    def _worst_peer(self) -> str | None:
        """The address holding the most connections, when there are several addresses."""
        if len(self._per_peer) < 2:
            return None
        return max(self._per_peer, key=self._per_peer.__getitem__)

    def _victim(self, worst: str | None) -> Connection | None:
        """The least valuable connection of the address holding the most (a flood comes from
        somewhere; Prometheus is elsewhere), else the least valuable of all."""
        evictable = (c for tier in self._tiers.values() for c in tier)
        if worst is not None:
            return next((c for c in evictable if c.peer == worst), None) or self._victim_any()
        return next(evictable, None)

    def _victim_any(self) -> Connection | None:
        return next((c for tier in self._tiers.values() for c in tier), None)

    def admit(self, connection: Connection) -> bool:
        if len(self._by_transport) >= self.limits.max_connections:
            worst = self._worst_peer()
            if worst is not None and connection.peer == worst:
                # More from the address that holds the most: refused at once, cheaper than
                # closing one of its own to make room (and the flood's churn stays its own).
                self.note("refused_flood", {"max_connections": self.limits.max_connections,
                                            "remote": worst})  # fmt: skip
                return False
            victim = self._victim(worst)
            if victim is None:
                self.note("refused_busy")
                return False
            self.forget(victim)
            self.note("evicted_idle")
            victim.close()
        self._by_transport[connection.transport] = connection
        self._per_peer[connection.peer] += 1
        self.place(connection, UNTRUSTED)
        return True

    def place(self, connection: Connection, tier: str | None) -> None:
        """Moves a connection to the end of its tier (None: busy, not evictable)."""
        if connection.tier is not None:
            self._tiers[connection.tier].pop(connection, None)
        connection.tier = None
        if tier is not None and self._by_transport.get(connection.transport) is connection:
            self._tiers[tier][connection] = None
            connection.tier = tier

    def rekey(self, connection: Connection, old: Any, new: Any) -> None:
        if self._by_transport.get(old) is connection:
            del self._by_transport[old]
            self._by_transport[new] = connection

    def forget(self, connection: Connection) -> None:
        if self._by_transport.get(connection.transport) is connection:
            del self._by_transport[connection.transport]
            self._per_peer[connection.peer] -= 1
            if self._per_peer[connection.peer] <= 0:
                del self._per_peer[connection.peer]
        if connection.tier is not None:
            self._tiers[connection.tier].pop(connection, None)
            connection.tier = None

    def lookup(self, transport: Any) -> Connection | None:
        return self._by_transport.get(transport)

    def note(self, event: str, extra: dict[str, Any] | None = None) -> None:
        """Connection limit events, logged once per burst rather than once per connection."""
        burst = self._bursts.setdefault(event, BurstLog(log, _LIMIT_MESSAGES[event]))
        burst.hit(extra or {"max_connections": self.limits.max_connections})


_LIMIT_MESSAGES = {
    "refused_busy": "connection limit reached with every connection busy: refusing new ones",
    "evicted_idle": "connection limit reached: closing the longest-idle connections",
    "refused_flood": "connection limit reached: refusing new connections from the address "
    "holding the most",
    "header_timeout": "closing connections that sent no complete request headers in time",
    "body_timeout": "closing connections that sent no complete request body in time",
    "bad_body": "request bodies that cannot be decoded: answered 400 and closed",
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


def connection_of(request: web.Request) -> Connection | None:
    connections = request.config_dict.get(CONNECTIONS)
    return connections.lookup(request.transport) if connections is not None else None


@web.middleware
async def track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tells the connection a request is in flight (its header deadline is met) and whether its
    body is still arriving; answers a body that cannot be decoded with 400 and a closed
    connection, never a 200 and a connection that silently dies under the client's next request."""
    connection = connection_of(request)
    if connection is None:
        return await handler(request)
    connection.request_started(request.content if request.body_exists else None)
    status: int | None = None
    try:
        response = await handler(request)
        response = await _settle_body(request, response, connection)
        status = response.status
        return response
    finally:
        connection.request_finished(status)


# What is read of a body the handler left unread, to learn whether it decodes; beyond it, the
# connection is closed after the answer rather than read on.
DRAIN_LIMIT = 1024 * 1024


async def _settle_body(
    request: web.Request, response: web.StreamResponse, connection: Connection
) -> web.StreamResponse:
    if not request.body_exists or response.prepared:
        return response
    body = request.content
    drained, complete = 0, True
    try:
        async with asyncio.timeout(connection.body_time_left()):
            while not body.is_eof() and body.exception() is None:
                drained += len(await body.readany())
                if drained > DRAIN_LIMIT:
                    complete = False
                    break
    except web.RequestPayloadError:
        pass  # body.exception() tells
    except (TimeoutError, ConnectionError):
        complete = False
    if body.exception() is None and complete:
        return response
    if body.exception() is not None and not isinstance(body.exception(), ConnectionError):
        connection.note("bad_body", {"remote": str(request.remote), "path": request.path[:200],
            "content_encoding": request.headers.get("Content-Encoding", "identity")[:40]})  # fmt: skip
        if response.status < 400:
            response = web.json_response(
                {"status": "invalid", "message": "request body cannot be read as its "
                 "Content-Encoding and Transfer-Encoding say"}, status=400,
            )  # fmt: skip
    # aiohttp would read the rest of this body after the answer and fail on it: answer now, with
    # `Connection: close`, then close.
    response.force_close()
    if connection.alive():
        with contextlib.suppress(ConnectionError):
            await response.prepare(request)
            await response.write_eof()
    request.protocol.force_close()
    return response


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
        # TLS is started by each connection (see `Connection`), not by asyncio's server, which
        # would hide a connection from the limits until its handshake is over.
        factory = self._connections.factory(server, self._listener.role, self._ssl_context)
        for sock in self._listener.sockets:
            # asyncio accepts up to `backlog` connections a turn of the loop before any of them
            # can make room by closing another: a small batch keeps the descriptors in use near
            # the limit. create_server also sets the kernel's queue to it: set that back.
            self._servers.append(await loop.create_server(factory, sock=sock, backlog=ACCEPT_BATCH))
            sock.listen(LISTEN_BACKLOG)
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
        task.add_done_callback(_reload_done)

    def _reload_done(task: asyncio.Task[Any]) -> None:
        reloads.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the reloader logs its own
            log.error("SIGHUP: reload failed", extra={"error": str(task.exception())})

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
                "read_body_timeout": format_duration(limits.read_body_timeout),
            },
        )
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
