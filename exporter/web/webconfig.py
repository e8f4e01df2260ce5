"""`--web.config.file`, in the format of the Prometheus exporter-toolkit: TLS, basic auth, headers.

The same YAML keys as node_exporter's: `tls_server_config`, `http_server_config` and
`basic_auth_users` (bcrypt hashes). A file is parsed into a `WebConfig` (one `WebConfigError`
naming the file and every bad key); `WebSecurity` holds the one in force and can swap it on reload:
new TLS connections get the new certificate through the listening context's SNI callback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import functools
import hmac
import logging
import re
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exporter.config import not_utf8, read_utf8

log = logging.getLogger(__name__)

REALM = "liquid-abt-exporter"

# exporter-toolkit's client_auth_type values that Python's ssl module can honour.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# The response headers exporter-toolkit lets a web config set.
ALLOWED_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
)


# What bcrypt itself accepts: `$2b$10$` then 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
BCRYPT_LENGTH = 60


class WebConfigError(Exception):
    """A web config file that cannot be used; the message names the file and each bad key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Model):
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None
    # Go cipher suite names are not OpenSSL's: refused rather than silently ignored.
    cipher_suites: list[str] = Field(default_factory=list, max_length=0)
    curve_preferences: list[str] = Field(default_factory=list, max_length=0)
    prefer_server_cipher_suites: bool = True

    @field_validator("client_auth_type")
    @classmethod
    def _known_client_auth(cls, value: str) -> str:
        if value not in CLIENT_AUTH:
            raise ValueError(
                f"unsupported client_auth_type {value!r}: use {', '.join(CLIENT_AUTH)}"
            )
        return value

    @field_validator("min_version", "max_version")
    @classmethod
    def _known_version(cls, value: str | None) -> str | None:
        if value is not None and value not in TLS_VERSIONS:
            raise ValueError(f"unknown TLS version {value!r}: use {', '.join(TLS_VERSIONS)}")
        return value


class HTTPServerConfig(_Model):
    # aiohttp speaks HTTP/1.1 only; the key is accepted so toolkit files load unchanged.
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name not in ALLOWED_HEADERS:
                raise ValueError(f"header {name!r} cannot be set: use {', '.join(ALLOWED_HEADERS)}")
        return headers


class WebConfigFile(_Model):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if ":" in user or not user:
                raise ValueError(f"invalid user name {user!r}")
            if not BCRYPT_HASH.fullmatch(hashed):
                # Refused here: bcrypt would refuse every login against it, and /-/reload
                # would then sit behind credentials nobody can use.
                raise ValueError(
                    f"the password of {user!r} is not a bcrypt hash: expected $2a$, $2b$ or "
                    f"$2y$, a two-digit cost from 04 to 31, $ and 53 characters of salt and "
                    f"hash (./A-Za-z0-9), {BCRYPT_LENGTH} characters in all (got {len(hashed)})"
                )
        return users


class WebConfig:
    """A parsed, usable web config: the TLS context (None: plain HTTP), users and headers."""

    def __init__(self, source: str, parsed: WebConfigFile, tls: ssl.SSLContext | None) -> None:
        self.source = source
        self.parsed = parsed
        self.tls = tls
        self.users = {u: h.encode() for u, h in parsed.basic_auth_users.items()}
        self.headers = dict(parsed.http_server_config.headers)


def _resolve(base: Path, name: str) -> str:
    """Relative paths are relative to the web config file, as in exporter-toolkit."""
    path = Path(name)
    return str(path if path.is_absolute() else base / path)


def tls_context(config: TLSServerConfig, base: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(_resolve(base, config.cert_file), _resolve(base, config.key_file))
    context.minimum_version = TLS_VERSIONS[config.min_version]
    if config.max_version:
        context.maximum_version = TLS_VERSIONS[config.max_version]
    context.verify_mode = CLIENT_AUTH[config.client_auth_type]
    if config.client_ca_file:
        context.load_verify_locations(_resolve(base, config.client_ca_file))
    elif context.verify_mode != ssl.CERT_NONE:
        raise ValueError(f"client_auth_type {config.client_auth_type} needs client_ca_file")
    if config.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "too_long":
        return f"{where}: not supported by this exporter (Go names); remove it"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def load_web_config(path: Path | None) -> WebConfig:
    """Read, validate and build the web config; None means plain HTTP without auth."""
    if path is None:
        return WebConfig("(none)", WebConfigFile(), None)
    try:
        data = yaml.safe_load(read_utf8(path))
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise WebConfigError(f"{path}: {not_utf8(exc)}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        parsed = WebConfigFile.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise WebConfigError(f"{path}: invalid web config: {problems}") from None
    tls = None
    if parsed.tls_server_config is not None:
        try:
            tls = tls_context(parsed.tls_server_config, path.parent)
        except (OSError, ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise WebConfigError(f"{path}: tls_server_config: {reason}") from None
    return WebConfig(str(path), parsed, tls)


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    DENIED_AGAIN = "denied_again"  # an attempt already refused: no bcrypt, answered late
    BUSY = "busy"  # too many password checks queued: try again


class WebSecurity:
    """The web config in force; the listeners' TLS context and the auth middleware read it.

    bcrypt costs tens of milliseconds on purpose, so an unauthenticated client must not be able
    to make the exporter run it at will: every outcome is remembered (successes and failures
    apart, each in a bounded LRU), keyed by an HMAC of the attempt with a key made at start, so
    a repeated wrong password is refused without bcrypt, and the real scraper pays bcrypt once.
    New attempts run a few at a time off the event loop; beyond `max_queued` waiting ones, the
    answer is BUSY (503) at once rather than a queue that holds connections.
    """

    def __init__(
        self,
        config: WebConfig,
        cache_size: int = 256,
        failure_cache_size: int = 16384,
        max_queued: int = 32,
    ) -> None:
        self.config = config
        self._key = secrets.token_bytes(32)  # never leaves the process
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._failure_cache_size = failure_cache_size
        # bcrypt is slow on purpose: run it off the event loop, a few at a time.
        self._bcrypt_slots = asyncio.Semaphore(2)
        self._queued = 0
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self._max_queued = max_queued
        self._listening: ssl.SSLContext | None = None

    def replace(self, config: WebConfig) -> None:
        self.config = config
        self._verified.clear()
        self._refused.clear()

    def listening_context(self) -> ssl.SSLContext | None:
        """The context the listeners are created with; every handshake switches to the one in force."""
        if self.config.tls is None:
            return None
        if self._listening is None:
            self._listening = self.config.tls

            def use_current(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
                if self.config.tls is not None and sock.context is not self.config.tls:
                    sock.context = self.config.tls

            self._listening.sni_callback = use_current  # type: ignore[assignment]
        return self._listening

    async def authenticate(
        self,
        header: str | None,
        *,
        queued: Callable[[bool], None] | None = None,
    ) -> Verdict:
        """Checks basic auth credentials. `queued(True/False)` is told while the check waits for
        bcrypt (the connection may be closed meanwhile to make room)."""
        user, password = _basic_credentials(header)
        if user is None or password is None:
            return Verdict.DENIED
        config = self.config
        hashed = config.users.get(user)
        digest = hmac.new(self._key, b"\0".join([user.encode(), password]), "sha256").digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return Verdict.ALLOWED
        if digest in self._refused:
            self._refused.move_to_end(digest)
            return Verdict.DENIED_AGAIN
        pending = self._pending.get(digest)
        if pending is None:
            if self._queued >= self._max_queued:
                return Verdict.BUSY
            # The same attempt from many connections at once is checked once.
            self._queued += 1
            pending = asyncio.ensure_future(self._check(config, user, password, hashed, digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _: self._pending.pop(digest, None))
        if queued is not None:
            queued(True)
        try:
            ok = await asyncio.shield(pending)
        finally:
            if queued is not None:
                queued(False)
        return Verdict.ALLOWED if ok else Verdict.DENIED

    async def _check(
        self, config: WebConfig, user: str, password: bytes, hashed: bytes | None, digest: bytes
    ) -> bool:
        try:
            async with self._bcrypt_slots:
                # Unknown users are checked against a dummy hash too: timing reveals no names.
                ok = await asyncio.to_thread(_checkpw, password, hashed or _dummy_hash())
        finally:
            self._queued -= 1
        ok = ok and hashed is not None
        if self.config is config:  # not reloaded meanwhile
            if ok:
                _remember(self._verified, digest, self._cache_size)
            else:
                _remember(self._refused, digest, self._failure_cache_size)
        return ok


def _remember(cache: OrderedDict[bytes, None], digest: bytes, size: int) -> None:
    cache[digest] = None
    if len(cache) > size:
        cache.popitem(last=False)


@functools.cache
def _dummy_hash() -> bytes:
    return bcrypt.hashpw(b"not a password of anyone", bcrypt.gensalt(rounds=10))


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash in the file
        return False


def _basic_credentials(header: str | None) -> tuple[str | None, bytes | None]:
    if not header:
        return None, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None, None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None, None


def busy() -> web.Response:
    return web.json_response(
        {"status": "busy", "message": "too many password checks at once; try again"},
        status=503,
        headers={"Retry-After": "1"},
    )


def unauthorized() -> web.Response:
    return web.json_response(
        {"status": "unauthorized", "message": "missing or wrong basic auth credentials"},
        status=401,
        headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
    )


Scheme = Literal["http", "https"]


def scheme_of(config: WebConfig) -> Scheme:
    return "https" if config.tls is not None else "http"
