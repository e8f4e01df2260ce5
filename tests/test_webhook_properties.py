"""Property-based tests of the webhook: whatever a client sends, the answer is never a 5xx, a
rejected request changes nothing in the database, and the valid alerts of a notification are
recorded whatever else it carries.

The exporter runs on a real socket in a thread of its own, against a real PostgreSQL; requests go
over HTTP (http.client), or as raw bytes where http.client refuses to send them (NUL bytes in
headers). The number of examples is `LIQUID_ABT_PROPERTY_EXAMPLES` (default 150 for the main
property, about 30 s on a loaded 2-core machine; raise it for a deeper run);
`--hypothesis-show-statistics` prints the status codes seen.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import socket
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter.config import parse_config
from exporter.database.embedded import free_port
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from tests.conftest import with_database

TOKEN = "property-secret"
PATH = "/webhook/alertmanager"
EXAMPLES = int(os.environ.get("LIQUID_ABT_PROPERTY_EXAMPLES", "150"))
# Alert names without actions: the worker only marks rows processed, it writes nothing else.
CONFIG = parse_config({"kraken": {"enabled": False}, "receiver": {"actions": {}}})

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a real database: timing varies on a loaded machine
    database=None,  # no example files in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What the receiver writes, without the worker's columns (processed_at, process_error).
STATE_SQL = """
SELECT (SELECT md5(coalesce(string_agg(
            concat_ws('|', id, fingerprint, status, starts_at, ends_at, alertname, exchange,
                      labels::text, group_key, truncated_alerts, summary), ',' ORDER BY id), ''))
        FROM liquid_abt.notifications),
       (SELECT md5(coalesce(string_agg(concat_ws('|', id, action, cause, fingerprint,
                                                 detail::text), ',' ORDER BY id), ''))
        FROM liquid_abt.audit_log WHERE actor = 'alertmanager')
"""


class LiveWebhook:
    """create_app on 127.0.0.1 in a thread with its own event loop, and a connection to read
    the database with; the tests stay synchronous, as hypothesis wants them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.db: asyncpg.Connection | None = None

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        app = create_app(CONFIG, Connection(self.dsn), Secrets(webhook_token=TOKEN))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.db = await asyncpg.connect(self.dsn)

    def stop(self) -> None:
        async def _stop() -> None:
            if self.db is not None:
                await self.db.close()
            if self.runner is not None:
                await self.runner.cleanup()

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def state(self) -> tuple[str, str]:
        assert self.db is not None
        return tuple(self.call(self.db.fetchrow(STATE_SQL)))  # type: ignore[return-value]

    def stored(self, keys: list[tuple[str, str, str]]) -> int:
        """How many of (fingerprint, status, startsAt) are recorded."""

        async def count() -> int:
            assert self.db is not None
            return int(await self.db.fetchval(
                """SELECT count(*) FROM liquid_abt.notifications n
                   JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(f, s, t)
                     ON n.fingerprint = k.f AND n.status = k.s AND n.starts_at = k.t""",
                [k[0] for k in keys], [k[1] for k in keys],
                [datetime.fromisoformat(k[2]) for k in keys],
            ))  # fmt: skip

        return int(self.call(count()))

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", PATH, body=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                           **headers})  # fmt: skip
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()

    def send_raw(self, request: bytes) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while b"\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        return int(answer.split(b" ", 2)[1])


async def _create_database(server_dsn: str, template: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()


async def _drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def live(pg_server_dsn: str, template_db: str) -> Iterator[LiveWebhook]:
    """One exporter and one database for every example of the module: examples add rows, and
    each property compares the database before and after its own request."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(pg_server_dsn, template_db, name))
    server = LiveWebhook(with_database(pg_server_dsn, name))
    server.start()
    yield server
    server.stop()
    asyncio.run(_drop_database(pg_server_dsn, name))


# --- strategies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment spliced into the body as it is: what json.dumps cannot write."""

    text: bytes


HEX = "0123456789abcdef"
# Nesting far past the parser's limit; integers past Python's 4,300-digit conversion limit.
RAW_FRAGMENTS = st.one_of(
    st.integers(1, 20_000).map(lambda d: Raw(b"[" * d + b"]" * d)),
    st.integers(1, 20_000).map(lambda d: Raw(b'{"a":' * d + b"1" + b"}" * d)),
    st.integers(1, 10_000).map(lambda n: Raw(b"9" * n)),
    st.sampled_from([Raw(b"1e999"), Raw(b"-1e999"), Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-0"),
                     Raw(b'"\\u0000"'), Raw(b'"\\ud800"'), Raw(b'"\\udfff\\ud800"'),
                     Raw(b'"\xff\xfe"'), Raw(b'"\xc3"'), Raw(b"tru"), Raw(b'"unterminated'),
                     Raw(b"[1,]"), Raw(b"{,}"), Raw(b"\x00")]),
)  # fmt: skip


def _long_text(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    """Long random strings, cheap to draw (hypothesis shrinks the seed and the length)."""
    return st.builds(
        lambda rng, n: "".join(rng.choices(alphabet, k=n)),
        st.randoms(use_true_random=False),
        st.integers(low, high),
    )


ODD_TEXT = st.one_of(
    st.text(max_size=40),  # any code point, NUL and control characters included
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["", "\x00", "a\x00b", "\u202e", "\ufeff", "\U0001f4a5" * 3, "\r\n",
                     "é" * 3, "\ufffd", "%s%n", "'; DROP TABLE x; --", "{{ .Labels }}"]),
    _long_text("abcdefghijklmnopqrstuvwxyz0123456789", 100, 6000),
    _long_text("ÿ€𝄞中", 100, 3000),
)  # fmt: skip

HOSTILE = st.deferred(
    lambda: st.one_of(
        RAW_FRAGMENTS,
        ODD_TEXT,
        st.integers(-(2**80), 2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.lists(HOSTILE, max_size=3),
        st.dictionaries(ODD_TEXT, HOSTILE, max_size=3),
        st.sampled_from(["firing", "resolved", "pending", "4", "3", 4,
                         "2026-11-25T10:00:00Z", "2026-11-25T10:00:00", "0001-01-01T00:00:00+14:00",
                         "9999-12-31T23:59:59-14:00", "yesterday", "2026-02-30T00:00:00Z"]),
    )
)  # fmt: skip

TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda t: t.replace(microsecond=0).isoformat() + "Z"
)

LABEL_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


@st.composite
def valid_alerts(draw: st.DrawFn) -> dict[str, Any]:
    labels = draw(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
                                  LABEL_VALUE, max_size=4))  # fmt: skip
    labels["alertname"] = draw(st.from_regex(r"[A-Z][A-Za-z]{0,30}", fullmatch=True))
    if draw(st.booleans()):
        labels["exchange"] = draw(st.sampled_from(["kraken", "binance", "other"]))
    status = draw(st.sampled_from(["firing", "resolved"]))
    return {
        "status": status,
        "labels": labels,
        "annotations": draw(
            st.dictionaries(
                st.sampled_from(["summary", "description"]), st.text(max_size=50), max_size=2
            )
        ),  # fmt: skip
        "startsAt": draw(TIMES),
        "endsAt": draw(TIMES) if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        # Unique per draw: a valid alert is always new, so "recorded" is checkable.
        "fingerprint": draw(st.text(HEX, min_size=1, max_size=16)) + uuid.uuid4().hex,
    }


def envelope(alerts: list[Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}/{}:{alertname="X"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "liquid-abt-exporter",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    }


ENVELOPE_KEYS = ["version", "groupKey", "truncatedAlerts", "status", "receiver", "alerts"]
ALERT_KEYS = ["status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"]


@dataclass
class Case:
    """A notification, which of its alerts were left valid, and how the body is sent."""

    document: dict[str, Any]
    valid: dict[int, dict[str, Any]] = field(default_factory=dict)  # by index in `alerts`
    envelope_touched: bool = False


@st.composite
def cases(draw: st.DrawFn) -> Case:
    alerts = draw(st.lists(valid_alerts(), min_size=0, max_size=4))
    document = envelope(alerts)
    touched: set[int] = set()
    envelope_touched = False
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["envelope", "alert", "label", "annotation"]))
        remove = draw(st.booleans()) and where != "annotation"
        value = draw(HOSTILE)
        if where == "envelope" or not alerts:
            key = draw(st.sampled_from(ENVELOPE_KEYS))
            if remove:
                document.pop(key, None)
            else:
                document[key] = value
            envelope_touched = True
            continue
        index = draw(st.integers(0, len(alerts) - 1))
        touched.add(index)
        target = alerts[index]
        if where == "alert":
            key = draw(st.sampled_from(ALERT_KEYS))
            if remove:
                target.pop(key, None)
            else:
                target[key] = value
        else:
            section = target.setdefault(where + "s", {})
            if not isinstance(section, dict):
                continue
            key = draw(st.one_of(st.sampled_from(["alertname", "exchange", "summary"]), ODD_TEXT))
            if remove:
                section.pop(key, None)
            else:
                section[key] = value
    valid = {i: a for i, a in enumerate(alerts) if i not in touched}
    return Case(document, valid, envelope_touched)


def encode(document: dict[str, Any]) -> bytes:
    """json.dumps, with each Raw fragment spliced in where it stands."""
    fragments: list[bytes] = []

    def default(value: Any) -> str:
        fragments.append(value.text)
        return f"\x01raw{len(fragments) - 1}\x01"

    text = json.dumps(document, default=_raw_marker(default))
    body = text.encode("utf-8", "surrogatepass")
    for index, fragment in enumerate(fragments):
        body = body.replace(json.dumps(f"\x01raw{index}\x01").encode(), fragment, 1)
    return body


def _raw_marker(default: Callable[[Any], str]) -> Callable[[Any], str]:
    def marker(value: Any) -> str:
        if isinstance(value, Raw):
            return default(value)
        raise TypeError(type(value).__name__)

    return marker


def _deflate(body: bytes) -> bytes:
    return zlib.compress(body)


TRANSPORTS: dict[str, Callable[[bytes], tuple[bytes, dict[str, str]]]] = {
    "identity": lambda b: (b, {"Content-Type": "application/json"}),
    "gzip": lambda b: (gzip.compress(b), {"Content-Encoding": "gzip"}),
    "deflate": lambda b: (_deflate(b), {"Content-Encoding": "deflate"}),
    "gzip, corrupt": lambda b: (gzip.compress(b)[:10] + bytes(range(7, 40)),
                                {"Content-Encoding": "gzip"}),
    "gzip, truncated": lambda b: (gzip.compress(b)[: max(1, len(b) // 3)],
                                  {"Content-Encoding": "gzip"}),
    "gzip, not compressed": lambda b: (b, {"Content-Encoding": "gzip"}),
    "unknown encoding": lambda b: (b, {"Content-Encoding": "x-unknown"}),
}  # fmt: skip
INTACT = {"identity", "gzip", "deflate", "unknown encoding"}


# --- properties ------------------------------------------------------------------------------


@PROPERTY
@given(case=cases(), transport=st.sampled_from(sorted(TRANSPORTS)))
def test_no_5xx_and_a_rejected_request_changes_nothing(
    live: LiveWebhook, case: Case, transport: str
) -> None:
    body, headers = TRANSPORTS[transport](encode(case.document))
    before = live.state()
    status, content_type, reply_bytes = live.post(body, headers)
    event(f"status {status}")
    assert status in (200, 400, 413), (status, reply_bytes[:300])
    assert content_type.startswith("application/json"), content_type
    reply = json.loads(reply_bytes)
    assert isinstance(reply["message"], str) and reply["message"]
    if status != 200:
        assert live.state() == before, f"answered {status} but the database changed"
        return
    event(f"result {reply['status']}")
    assert reply["status"] in ("accepted", "duplicate", "partial")
    # Recorded, or refused by name: nothing in between.
    alerts = case.document["alerts"]
    refused = {r["index"] for r in reply.get("refused", [])}
    assert refused < set(range(len(alerts))) or not alerts
    if transport in INTACT and not case.envelope_touched:
        keys = [(a["fingerprint"], a["status"], a["startsAt"]) for a in case.valid.values()]
        assert live.stored(keys) == len(keys), "a valid alert was not recorded"
        assert not refused & set(case.valid), f"a valid alert was refused: {reply}"


@settings(PROPERTY, max_examples=max(10, EXAMPLES // 3))
@given(case=cases())
def test_an_untouched_notification_is_recorded_whole(live: LiveWebhook, case: Case) -> None:
    """The oracle for the property above: without mutations, every alert is recorded."""
    alerts = list(case.valid.values())
    status, _, reply_bytes = live.post(
        encode(envelope(alerts)), {"Content-Type": "application/json"}
    )
    event(f"status {status}")
    assert status == 200, reply_bytes[:300]
    reply = json.loads(reply_bytes)
    assert reply["new"] == len(alerts) and "refused" not in reply, reply
    keys = [(a["fingerprint"], a["status"], a["startsAt"]) for a in alerts]
    assert live.stored(keys) == len(keys)


HEADER_BYTES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\x00", b"a\x00b", b"\r", b"\n", b"\x7f", b"\xff\xfe", b" " * 9000]),
)


@PROPERTY
@given(name=HEADER_BYTES, value=HEADER_BYTES, where=st.sampled_from(["name", "value", "auth"]))
def test_raw_header_bytes_never_get_a_5xx(
    live: LiveWebhook, name: bytes, value: bytes, where: str
) -> None:
    header = {
        "name": b"X-" + name + b": v",
        "value": b"X-Trace: " + value,
        "auth": b"Authorization: Bearer " + TOKEN.encode() + value,
    }[where]
    body = json.dumps(envelope([])).encode()
    request = (
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    before = live.state()
    status = live.send_raw(request)
    event(f"status {status}")
    assert status < 500
    assert live.state() == before


def test_state_hash_sees_a_change(live: LiveWebhook) -> None:
    """The database comparison above can fail: an accepted notification changes the hash."""
    before = live.state()
    alert = {"status": "firing", "labels": {"alertname": "X"}, "startsAt": "2026-11-25T10:00:00Z",
             "fingerprint": uuid.uuid4().hex}  # fmt: skip
    status, _, _ = live.post(encode(envelope([alert])), {})
    assert status == 200
    assert live.state() != before
