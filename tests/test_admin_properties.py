"""Property-based tests of every admin body and query parameter, against a running exporter.

For any request hypothesis makes up (JSON of any shape, wrong types, huge or deeply nested
values, NUL and lone surrogates, corrupt gzip, unknown or repeated parameters, odd exchange
names), the answer is never a 5xx, every 4xx is JSON with an `error`, and a refused request
changes nothing in the database. Bounded: a fixed number of examples per endpoint.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.controls.retry_queue import QUEUE_STATUSES
from exporter.labels import REASON_CLASSES
from tests.admin_exporter import EXCHANGES, RunningExporter, running_exporter

EXAMPLES = 100  # per endpoint: two to three seconds each on a 2-core machine

FINGERPRINT_SQL = """
SELECT (SELECT count(*) || ':' || coalesce(max(id), 0) FROM liquid_abt.audit_log),
       (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY exchange), ''))
          FROM liquid_abt.circuit_breakers t),
       (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY exchange), ''))
          FROM liquid_abt.exchange_controls t),
       (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM liquid_abt.retry_queue t)
"""


class Database:
    """A connection on a private event loop, so that the synchronous hypothesis test can read."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.connection: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(dsn))

    def fingerprint(self) -> tuple[Any, ...]:
        return tuple(self.loop.run_until_complete(self.connection.fetchrow(FINGERPRINT_SQL)))

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        self.loop.close()


@pytest.fixture(scope="module")
def exporter(
    pg_server_dsn: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningExporter]:
    tmp = tmp_path_factory.mktemp("admin-properties")
    with running_exporter(pg_server_dsn, template_db, Path(tmp)) as running:
        yield running


@pytest.fixture(scope="module")
def database(exporter: RunningExporter) -> Iterator[Database]:
    db = Database(exporter.dsn)
    yield db
    db.close()


# ---- what hypothesis makes up ----

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NASTY_TEXT = st.sampled_from(["", " ", "a\x00b", "\ud800", "x" * 501, "x" * 500, "☃", "{x}"])
TEXT = st.text(max_size=30) | NASTY_TEXT
EXCHANGE = st.sampled_from([*EXCHANGES, "binance", "KRAKEN", ""]) | TEXT
PATH_EXCHANGE = st.one_of(*[st.sampled_from(EXCHANGES)] * 4, EXCHANGE)  # mostly a configured one
INTEGER = st.sampled_from([0, 1, 3, 2**31 - 1, 2**31, -1, 2**63]) | st.integers()
STATE = st.sampled_from(["OPEN", "CLOSED", "HALF_OPEN", "half-open", "open", "ajar"]) | JSON
TIME = st.sampled_from([
    "2025-01-10T10:00:00Z", "2025-01-10T11:00:00+10:00", "2025-01-10T10:00:00",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z", "yesterday",
]) | TEXT  # fmt: skip
NUMBER_TEXT = st.sampled_from(["0", "1", "10", "1000", "1001", "-1", "1.5", "9" * 25, "abc"]) | TEXT


def bodies(
    fields: dict[str, st.SearchStrategy[Any]], valid: st.SearchStrategy[dict[str, Any]]
) -> st.SearchStrategy[Any]:
    """Valid bodies, objects built from the endpoint's own fields with any values, with unknown
    fields and snake_case spellings added, and anything else JSON can hold."""
    known = st.fixed_dictionaries({}, optional={name: s | JSON for name, s in fields.items()})
    extra = st.dictionaries(st.sampled_from(["force", "estimated_duration", "failure_threshold"])
                            | st.text(max_size=10), JSON, max_size=2)  # fmt: skip
    with_extra = st.tuples(known | valid, extra).map(lambda kv: {**kv[1], **kv[0]})
    return st.one_of(valid, known, known, with_extra, JSON)


def encoded(body: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    """The body as bytes, sometimes gzipped, sometimes broken on purpose."""
    plain = body.map(lambda b: (json.dumps(b).encode(), {}))
    gzipped = body.map(
        lambda b: (gzip.compress(json.dumps(b).encode()), {"Content-Encoding": "gzip"})
    )
    broken = st.sampled_from([
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 20, {"Content-Encoding": "gzip"}),
        (b'{"reason": "x"', {}), (b"\xff\xfe{}", {}), (b"", {}), (b"[" * 3000 + b"]" * 3000, {}),
        (b'{"failureThreshold": ' + b"7" * 4400 + b"}", {}), (b"NaN", {}),
        (b'{"reason": ' + b"[" * 900 + b"]" * 900 + b"}", {}),
    ]) | st.binary(max_size=64).map(lambda b: (b, {}))  # fmt: skip
    return st.one_of(plain, plain, plain, gzipped, broken)


def queries(
    params: dict[str, st.SearchStrategy[str]],
    valid: st.SearchStrategy[dict[str, str]] | None = None,
) -> st.SearchStrategy[str]:
    """Query strings: valid ones, the endpoint's parameters with any values, unknown ones."""
    unknown = st.tuples(st.sampled_from(["before_id", "sort", "x"]) | st.text(max_size=5), TEXT)
    known = [st.tuples(st.just(name), values) for name, values in sorted(params.items())]
    pairs = st.lists(st.one_of(*known, *known, unknown), max_size=5)
    if valid is not None:
        pairs = pairs | valid.map(lambda d: list(d.items()))
    encoded_pairs = pairs.map(
        lambda p: urllib.parse.urlencode(p, encoding="utf-8", errors="surrogatepass")
    )
    raw = st.sampled_from(["limit=%ff", "exchange=%00", "start=%", "limit=1&limit=2", "&&=&"])
    return st.one_of(encoded_pairs, encoded_pairs, raw)


WORDS = st.text(alphabet="abcdefghij XYZ:-", min_size=1, max_size=40).filter(str.strip)
NAMED = st.sampled_from(EXCHANGES)


def valid(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    required = {k: v for k, v in fields.items() if not k.endswith("?")}
    optional = {k[:-1]: v for k, v in fields.items() if k.endswith("?")}
    return st.fixed_dictionaries(required, optional=optional)


def impact_range() -> st.SearchStrategy[dict[str, str]]:
    start = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                         timezones=st.just(UTC))  # fmt: skip
    span = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=31))
    return st.tuples(start, span).map(
        lambda t: {"start": t[0].isoformat(), "end": (t[0] + t[1]).isoformat()}
    )


PAGING = {"limit": NUMBER_TEXT, "offset": NUMBER_TEXT}
Endpoint = tuple[str, str, st.SearchStrategy[Any]]  # method, path (with {exchange}), request

ENDPOINTS: dict[str, Endpoint] = {
    "force-state": ("POST", "/api/admin/circuit-breaker/{exchange}/force-state",
                    encoded(bodies({"state": STATE, "reason": TEXT},
                                   valid(state=STATE.filter(lambda v: v in ("OPEN", "CLOSED")),
                                         **{"reason?": WORDS})))),
    "reset": ("POST", "/api/admin/circuit-breaker/{exchange}/reset",
              encoded(bodies({"reason": TEXT}, valid(**{"reason?": WORDS})))),
    "config": ("PATCH", "/api/admin/circuit-breaker/{exchange}/config",
               encoded(bodies({"failureThreshold": INTEGER, "recoveryTimeout": INTEGER,
                               "monitoringWindow": INTEGER, "reason": TEXT},
                              valid(failureThreshold=st.integers(1, 100),
                                    **{"monitoringWindow?": st.integers(1, 2**31 - 1)})))),
    "pause": ("POST", "/api/admin/purchases/pause",
              encoded(bodies({"exchange": EXCHANGE, "affectedExchange": EXCHANGE, "reason": TEXT,
                              "estimatedDuration": TEXT},
                             valid(affectedExchange=NAMED, reason=WORDS,
                                   **{"estimatedDuration?": WORDS})))),
    "resume": ("POST", "/api/admin/purchases/resume",
               encoded(bodies({"exchange": EXCHANGE, "affectedExchange": EXCHANGE,
                               "reason": TEXT}, valid(exchange=NAMED, **{"reason?": WORDS})))),
    "status": ("GET", "/api/admin/status", queries({})),
    "breaker-status": ("GET", "/api/admin/circuit-breaker/status", queries({})),
    "breaker-one": ("GET", "/api/admin/circuit-breaker/{exchange}", queries({})),
    "purchases-status": ("GET", "/api/admin/purchases/status", queries({})),
    "retry-queue": ("GET", "/api/admin/retry-queue", queries({
        **PAGING, "exchange": EXCHANGE, "status": st.sampled_from(QUEUE_STATUSES) | TEXT})),
    "audit-log": ("GET", "/api/admin/audit-log", queries({
        **PAGING, "exchange": EXCHANGE, "beforeId": NUMBER_TEXT})),
    "incidents": ("GET", "/api/admin/incidents", queries({**PAGING, "exchange": EXCHANGE})),
    "impact-report": ("GET", "/api/admin/impact-report", queries({
        "start": TIME, "end": TIME, "exchange": EXCHANGE,
        "reason": st.sampled_from(REASON_CLASSES) | TEXT}, impact_range())),
}  # fmt: skip


def send(
    exporter: RunningExporter, method: str, target: str, body: bytes | None,
    headers: dict[str, str],
) -> tuple[int, bytes]:  # fmt: skip
    host, port = exporter.process.target.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        auth = {"Authorization": f"Bearer {exporter.token}", "Content-Type": "application/json"}
        connection.request(method, target, body=body, headers={**auth, **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_no_request_gets_a_5xx_and_a_refused_one_changes_nothing(
    name: str, exporter: RunningExporter, database: Database
) -> None:
    method, path, requests = ENDPOINTS[name]
    seen: Counter[int] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(exchange=PATH_EXCHANGE, request=requests)
    def check(exchange: str, request: Any) -> None:
        target = path.format(exchange=urllib.parse.quote(exchange, safe="", errors="surrogatepass"))
        if method == "GET":
            target, body, headers = f"{target}?{request}", None, {}
        else:
            body, headers = request
        before = database.fingerprint()
        status, text = send(exporter, method, target, body, headers)
        seen[status] += 1
        assert status < 500, f"{method} {target} {body!r:.300}: {status} {text[:300]!r}"
        answer = json.loads(text)
        if status >= 400:
            assert isinstance(answer["error"], str) and answer["error"]
            assert database.fingerprint() == before, f"{method} {target} {body!r:.300}: {text!r}"

    check()
    assert exporter.process.alive(), exporter.process.log_text()
    assert any(400 <= s < 500 for s in seen), f"hypothesis made no bad request: {seen}"
    assert any(s < 300 for s in seen), f"hypothesis made no valid request: {seen}"
