"""`/metrics` served from bytes rendered ahead: a scrape costs a lookup, not a render.

Rendering the whole registry took ~8 ms a scrape on the 2-core machine; eight concurrent scrapers
queued behind each other's renders. The exposition is now made of sections, each with a version
that changes when its content does:

- each collector's snapshot (signals/collectors/base.py): a new version per refresh;
- the snapshot ages: a new version each second;
- a registry of live metrics (the exchange probes, the receiver, the actions, the breaker, the
  collectors' own metrics): a new version when told it changed (`changed()`: after a probe round,
  a refresh, a request that may have changed something) and at most `max_age` after anything else,
  which covers values that change on their own (`liquid_abt_db_up`, process metrics).

A section is rendered again only when its version moved, once per format asked for; a body (text
or OpenMetrics, gzip or not, as negotiated by prometheus_client's own rules) is joined from the
sections' bytes the first time it is asked for after a change, and served as is after that.
`MetricsExposition.handle` is an aiohttp handler: mount it at any path.
"""

from __future__ import annotations

import functools
import gzip
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Protocol

from aiohttp import hdrs, web
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_OPENMETRICS = "application/openmetrics-text"
_EOF = b"# EOF\n"
# Content types carry a version chosen by the client: bound what a client can make us keep.
_MAX_FORMATS = 8
_GZIP_LEVEL = 1  # 0.15 ms for the 42 kB body (level 6: 0.8 ms) for 4.3 kB instead of 3.8 kB


# Prometheus sends the same Accept header every time: parse each distinct one once.
_negotiate = functools.lru_cache(maxsize=_MAX_FORMATS)(choose_encoder)


class Section(Protocol):
    """Part of the exposition: families, and a version that changes whenever they do."""

    def version(self, now: float) -> Hashable: ...

    def collect(self, now: float) -> Iterable[Metric]: ...


class RegistrySection:
    """Live metrics of a registry (or any collector), rendered again when they may have changed."""

    def __init__(self, registry: Collector, max_age: float = 1.0) -> None:
        self._registry = registry
        self._max_age = max_age
        self._generation = 0

    def changed(self) -> None:
        self._generation += 1

    def version(self, now: float) -> Hashable:
        return self._generation, int(now // self._max_age)

    def collect(self, now: float) -> Iterable[Metric]:
        return self._registry.collect()


class _Families(Collector):
    """What prometheus_client's encoders take: a collector."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class MetricsExposition:
    """Sections rendered once per change and per format; bodies served as ready bytes."""

    def __init__(
        self, sections: Iterable[Section] = (), clock: Callable[[], float] = time.time
    ) -> None:
        self._sections: list[Section] = list(sections)
        self._clock = clock
        # content type -> per section (version, bytes)
        self._parts: dict[str, list[tuple[Hashable, bytes] | None]] = {}
        # (content type, gzip) -> (versions of every section, body)
        self._bodies: dict[tuple[str, bool], tuple[tuple[Hashable, ...], bytes]] = {}

    def add(self, *sections: Section) -> None:
        self._sections.extend(sections)
        self._parts.clear()
        self._bodies.clear()

    def collect(self) -> Iterator[Metric]:
        """Every family, as a prometheus_client collector (for tools that render themselves)."""
        now = self._clock()
        for section in self._sections:
            yield from section.collect(now)

    def body(self, accept: str, use_gzip: bool) -> tuple[bytes, str]:
        """The body and its content type for these Accept and gzip choices."""
        encoder, content_type = _negotiate(accept)
        now = self._clock()
        versions = tuple(section.version(now) for section in self._sections)
        cached = self._bodies.get((content_type, use_gzip))
        if cached is not None and cached[0] == versions:
            return cached[1], content_type
        plain = self._bodies.get((content_type, False))
        if plain is None or plain[0] != versions:
            plain = versions, self._join(encoder, content_type, versions, now)
            self._keep((content_type, False), plain)
        if not use_gzip:
            return plain[1], content_type
        packed = versions, gzip.compress(plain[1], compresslevel=_GZIP_LEVEL)
        self._keep((content_type, True), packed)
        return packed[1], content_type

    def _keep(self, key: tuple[str, bool], body: tuple[tuple[Hashable, ...], bytes]) -> None:
        if key not in self._bodies and len(self._bodies) >= 2 * _MAX_FORMATS:
            self._bodies.clear()
        self._bodies[key] = body

    def _join(
        self,
        encoder: Callable[[Collector], bytes],
        content_type: str,
        versions: tuple[Hashable, ...],
        now: float,
    ) -> bytes:
        if content_type not in self._parts and len(self._parts) >= _MAX_FORMATS:
            self._parts.clear()
        parts = self._parts.setdefault(content_type, [None] * len(self._sections))
        openmetrics = content_type.startswith(_OPENMETRICS)
        for i, section in enumerate(self._sections):
            part = parts[i]
            if part is None or part[0] != versions[i]:
                rendered = encoder(_Families(section.collect(now)))
                if openmetrics:  # one `# EOF` for the whole body, not one per section
                    rendered = rendered.removesuffix(_EOF)
                parts[i] = versions[i], rendered
        body = b"".join(part[1] for part in parts if part is not None)
        return body + _EOF if openmetrics else body

    async def handle(self, request: web.Request) -> web.Response:
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        use_gzip = gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
        body, content_type = self.body(accept, use_gzip)
        headers = {hdrs.CONTENT_TYPE: content_type, hdrs.VARY: "Accept, Accept-Encoding"}
        if use_gzip:
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)
