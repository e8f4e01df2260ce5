"""/metrics serves ready bytes: rendered again only when a section changed, negotiated as before."""

from __future__ import annotations

import gzip
from collections.abc import Iterable

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from exporter.web.exposition import MetricsExposition, RegistrySection
from tests.helpers import parse_samples

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Snapshot:
    """A section whose content the test sets, with the version a refresh would give it."""

    def __init__(self, value: float) -> None:
        self.value, self.serial = value, 0

    def refresh(self, value: float) -> None:
        self.value, self.serial = value, self.serial + 1

    def version(self, now: float) -> int:
        return self.serial

    def collect(self, now: float) -> Iterable[Metric]:
        family = GaugeMetricFamily("test_snapshot_value", "A refreshed value.", labels=["x"])
        family.add_metric(["a"], self.value)
        return [family]


def build() -> tuple[MetricsExposition, RegistrySection, Counter, Snapshot, Clock]:
    registry = CollectorRegistry(auto_describe=False)
    counter = Counter("test_events", "Events.", registry=registry)
    live, snapshot, clock = RegistrySection(registry), Snapshot(1.0), Clock()
    return MetricsExposition([live, snapshot], clock), live, counter, snapshot, clock


def test_a_body_is_served_as_is_until_a_section_changes() -> None:
    exposition, live, counter, snapshot, clock = build()
    first, _ = exposition.body("", use_gzip=False)
    assert exposition.body("", use_gzip=False)[0] is first, "no change: the same bytes"

    counter.inc()
    assert exposition.body("", use_gzip=False)[0] is first, "live values: until changed()"
    live.changed()
    assert (
        parse_samples(exposition.body("", use_gzip=False)[0].decode())[
            ("test_events_total", frozenset())
        ]
        == 1
    )

    counter.inc()
    clock.now += 1.0  # live sections are at most max_age old, even if nobody said so
    assert (
        parse_samples(exposition.body("", use_gzip=False)[0].decode())[
            ("test_events_total", frozenset())
        ]
        == 2
    )

    snapshot.refresh(7.0)
    text = exposition.body("", use_gzip=False)[0].decode()
    assert parse_samples(text)[("test_snapshot_value", frozenset({("x", "a")}))] == 7


def test_each_format_equals_what_prometheus_client_renders() -> None:
    exposition, _, counter, _, _ = build()
    counter.inc(3)
    expected = generate_latest(exposition).decode()

    text, text_type = exposition.body("", use_gzip=False)
    assert text_type.startswith("text/plain; version=0.0.4")
    assert text.decode() == expected

    packed, packed_type = exposition.body("", use_gzip=True)
    assert packed_type == text_type and gzip.decompress(packed) == text

    om, om_type = exposition.body(OPENMETRICS, use_gzip=False)
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    body = om.decode()
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1, "one EOF for all sections"
    families = {f.name: f for f in parse_om(body)}
    assert families["test_events"].samples[0].value == 3
    assert families["test_snapshot_value"].samples[0].value == 1


def test_clients_cannot_make_it_keep_a_body_per_made_up_version() -> None:
    exposition, *_ = build()
    for minor in range(100):
        exposition.body(f"application/openmetrics-text;version=1.{minor}.0", use_gzip=True)
    assert len(exposition._bodies) <= 16 and len(exposition._parts) <= 8  # noqa: SLF001


async def test_the_handler_negotiates_format_and_encoding(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    exposition, *_ = build()
    app = web.Application()
    app.router.add_get("/anywhere", exposition.handle)
    client: TestClient = await aiohttp_client(app)

    plain = await client.get("/anywhere", headers={"Accept-Encoding": "identity"})
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in plain.headers
    text = await plain.text()

    packed = await client.get("/anywhere", headers={"Accept-Encoding": "gzip", "Accept": ""})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert await packed.text() == text  # aiohttp's client decompresses

    om = await client.get("/anywhere", headers={"Accept": OPENMETRICS})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await om.text()).endswith("# EOF\n")
    assert "Accept" in om.headers["Vary"]
