"""Test helpers: read samples the way Prometheus would; `wait_until` (the project's one, from
`liquid_abt_drill.stack`: `await wait_until(async_check)` in async tests)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from liquid_abt_drill.stack import wait_until

__all__ = ["Samples", "parse_samples", "scrape", "series", "value", "wait_until"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def scrape(client: TestClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    return parse_samples(await response.text())
