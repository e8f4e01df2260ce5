"""ExchangeProbe through the real client against each fake Kraken mode, read from the registry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from exporter.signals.kraken.client import ENDPOINTS, SYSTEM_STATUSES, KrakenClient
from exporter.signals.kraken.outcomes import OUTCOMES
from exporter.signals.kraken.probe import REPEAT_LOG_EVERY, ExchangeProbe
from liquid_abt_drill.kraken_server.server import FakeKraken

pytestmark = pytest.mark.asyncio

MakeProbe = Callable[..., ExchangeProbe]
MakeClient = Callable[..., KrakenClient]
TIMEOUT = 0.5  # the client timeout in probe tests: a hanging round must end within it
ALL_OK = dict.fromkeys(ENDPOINTS, "success")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A probe sample; every series is pre-initialised, so a missing one is a failure."""
    sample = registry.get_sample_value(
        f"liquid_abt_exchange_{name}", {"exchange": "kraken", **labels}
    )
    assert sample is not None, (name, labels)
    return sample


def requests(registry: CollectorRegistry) -> dict[str, str]:
    """endpoint -> the one outcome counted for it (endpoints not called are left out)."""
    seen = {}
    for endpoint in ENDPOINTS:
        for outcome in OUTCOMES:
            count = value(registry, "requests_total", endpoint=endpoint, outcome=outcome)
            if count:
                assert count == 1, (endpoint, outcome, count)
                seen[endpoint] = outcome
    return seen


def status(registry: CollectorRegistry) -> str | None:
    current = [s for s in SYSTEM_STATUSES if value(registry, "status", status=s) == 1]
    assert len(current) <= 1
    return current[0] if current else None


async def test_every_series_exists_before_the_first_round(
    make_probe: MakeProbe, registry: CollectorRegistry
) -> None:
    make_probe()
    for endpoint in ENDPOINTS:
        for outcome in OUTCOMES:
            assert value(registry, "requests_total", endpoint=endpoint, outcome=outcome) == 0
        assert value(registry, "request_duration_seconds_count", endpoint=endpoint) == 0
    for state in SYSTEM_STATUSES:
        assert value(registry, "status", status=state) == 0
    for gauge in ("up", "consecutive_failures", "last_success_timestamp_seconds", "invalid_nonce"):
        assert value(registry, gauge) == 0


@pytest.mark.parametrize(
    ("mode", "calls", "up", "state"),
    [
        ("healthy", ALL_OK, 1, "online"),
        ("slow", ALL_OK, 1, "online"),
        ("cancel_only", ALL_OK, 1, "cancel_only"),
        ("post_only", ALL_OK, 1, "post_only"),
        # These stop the round at the first call that fails for want of an answer (503, 5xx,
        # timeouts, network errors), or Kraken asks us to back off.
        # A rate limit is an answer: the API is up and asks us to back off.
        (
            "maintenance",
            {"SystemStatus": "success", "Ticker": "service_unavailable"},
            0,
            "maintenance",
        ),
        ("rate_limited", {"SystemStatus": "rate_limited"}, 1, None),
        ("rate_limited_http", {"SystemStatus": "rate_limited"}, 1, None),
        ("down", {"SystemStatus": "network_error"}, 0, None),
        ("hanging", {"SystemStatus": "timeout"}, 0, None),
        # Our own credentials refused: auth evidence, not the exchange being down.
        ("auth_failure", ALL_OK | {"Balance": "auth_error"}, 1, "online"),
        ("invalid_key", ALL_OK | {"Balance": "auth_error"}, 1, "online"),
        ("server_error", {"SystemStatus": "server_error"}, 0, None),
        ("garbage", dict.fromkeys(ENDPOINTS, "api_error"), 1, None),
    ],
)
async def test_each_mode_gives_its_outcome_up_and_status(
    kraken: FakeKraken,
    make_probe: MakeProbe,
    make_client: MakeClient,
    registry: CollectorRegistry,
    mode: str,
    calls: dict[str, str],
    up: int,
    state: str | None,
) -> None:
    await kraken.set_mode(mode, latency=0.05 if mode == "slow" else None)
    probe = make_probe(make_client(timeout=TIMEOUT))
    result = await asyncio.wait_for(probe.run_once(), timeout=len(ENDPOINTS) * TIMEOUT + 1)
    assert requests(registry) == calls
    assert value(registry, "up") == up
    assert status(registry) == state
    assert result.available is bool(up)
    failures = [outcome for outcome in calls.values() if outcome != "success"]
    assert result.ok is not failures
    assert result.outcome == (failures[0] if failures else "success")
    assert result.rate_limited is ("rate_limited" in failures)
    assert result.auth_failed is ("auth_error" in failures)
    assert value(registry, "consecutive_failures") == (0 if up else 1)


async def test_a_refused_nonce_is_a_configuration_warning_once_per_episode(
    make_probe: MakeProbe,
    make_client: MakeClient,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Replicas sharing a key (simulated: a nonce that stands still) read `EAPI:Invalid nonce`:
    its own outcome, never auth_error, the exchange still up; one warning for the episode."""
    nonce = iter([7, 7, 7, 7, 8, 8])
    probe = make_probe(make_client(nonce=lambda: next(nonce)))
    assert (await probe.run_once()).ok
    caplog.set_level(logging.INFO, logger="exporter.signals.kraken.probe")
    for _ in range(3):
        result = await probe.run_once()
        assert result.outcome == "invalid_nonce" and result.invalid_nonce
        assert result.available and not result.auth_failed and not result.ok
        assert value(registry, "invalid_nonce") == 1 and value(registry, "up") == 1
    assert value(registry, "requests_total", endpoint="Balance", outcome="invalid_nonce") == 3
    assert value(registry, "requests_total", endpoint="Balance", outcome="auth_error") == 0
    warnings = [r for r in caplog.records if "replicas share a key" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert (await probe.run_once()).ok
    assert value(registry, "invalid_nonce") == 0
    assert any("accepts our nonces again" in r.getMessage() for r in caplog.records)
    # A second episode warns again.
    assert (await probe.run_once()).invalid_nonce
    assert len([r for r in caplog.records if "replicas share a key" in r.getMessage()]) == 2


async def test_a_hanging_round_returns_within_the_timeout(
    kraken: FakeKraken, make_probe: MakeProbe, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    await kraken.set_mode("hanging")
    probe = make_probe(make_client(timeout=TIMEOUT))
    result = await asyncio.wait_for(probe.run_once(), timeout=TIMEOUT + 1)
    assert result.outcome == "timeout"
    assert value(registry, "requests_total", endpoint="SystemStatus", outcome="timeout") == 1
    assert value(registry, "request_duration_seconds_sum", endpoint="SystemStatus") >= TIMEOUT


async def test_down_after_up_drops_pooled_connections_and_comes_back_on_the_same_port(
    kraken: FakeKraken, make_probe: MakeProbe, registry: CollectorRegistry
) -> None:
    probe = make_probe()
    url = kraken.url
    assert (await probe.run_once()).ok
    await kraken.set_mode("down")
    assert (await probe.run_once()).outcome == "network_error"
    assert value(registry, "up") == 0
    await kraken.set_mode("healthy")
    assert kraken.url == url
    assert (await probe.run_once()).ok
    assert value(registry, "up") == 1


async def test_status_keeps_its_last_known_value_when_the_call_fails(
    kraken: FakeKraken, make_probe: MakeProbe, registry: CollectorRegistry
) -> None:
    probe = make_probe()
    await kraken.set_mode("maintenance")
    await probe.run_once()
    await kraken.set_mode("down")
    await probe.run_once()
    assert status(registry) == "maintenance"


async def test_consecutive_failures_count_rounds_and_reset_on_success(
    kraken: FakeKraken, make_probe: MakeProbe, registry: CollectorRegistry
) -> None:
    probe = make_probe()
    await kraken.set_mode("server_error")
    for expected in (1, 2, 3):
        await probe.run_once()
        assert value(registry, "consecutive_failures") == expected
    assert value(registry, "last_success_timestamp_seconds") == 0
    await kraken.set_mode("healthy")
    before = time.time()
    await probe.run_once()
    assert value(registry, "consecutive_failures") == 0
    assert before <= value(registry, "last_success_timestamp_seconds") <= time.time()


async def test_a_long_outage_warns_when_it_starts_changes_and_every_so_often(
    kraken: FakeKraken, make_probe: MakeProbe, caplog: pytest.LogCaptureFixture
) -> None:
    probe = make_probe()

    def warned() -> list[tuple[str, int]]:
        return [
            (r.__dict__["outcome"], r.__dict__["consecutive"])
            for r in caplog.records
            if r.getMessage() == "exchange probe round failed" and r.levelno == logging.WARNING
        ]

    with caplog.at_level(logging.WARNING):
        await kraken.set_mode("server_error")
        for _ in range(REPEAT_LOG_EVERY + 2):
            await probe.run_once()
        await kraken.set_mode("down")
        await probe.run_once()
        await kraken.set_mode("healthy")
        await probe.run_once()
        await kraken.set_mode("down")
        await probe.run_once()
    every = REPEAT_LOG_EVERY + 1
    assert warned() == [
        ("server_error", 1), ("server_error", every), ("network_error", every + 2),
        ("network_error", 1),
    ]  # fmt: skip


async def test_balance_is_probed_only_with_credentials(
    kraken: FakeKraken, make_probe: MakeProbe, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    result = await make_probe(make_client(credentials=False)).run_once()
    assert result.ok
    assert [c.endpoint for c in result.calls] == ["SystemStatus", "Ticker", "Depth", "Time"]
    assert kraken.state.hits["Balance"] == 0
    assert value(registry, "requests_total", endpoint="Balance", outcome="success") == 0


async def test_slow_calls_are_logged_and_timed(
    kraken: FakeKraken,
    make_probe: MakeProbe,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await kraken.set_mode("slow", latency=0.2)
    probe = make_probe(slow_threshold=0.1)
    with caplog.at_level(logging.WARNING):
        assert (await probe.run_once()).ok
    slow = [r for r in caplog.records if r.getMessage() == "slow exchange API response"]
    assert sorted(r.__dict__["endpoint"] for r in slow) == sorted(ENDPOINTS)
    assert value(registry, "request_duration_seconds_sum", endpoint="Ticker") >= 0.2
    assert value(registry, "request_duration_seconds_bucket", endpoint="Ticker", le="0.1") == 0


async def test_cancelling_a_round_in_flight_ends_promptly(
    kraken: FakeKraken, make_probe: MakeProbe, make_client: MakeClient
) -> None:
    await kraken.set_mode("hanging")
    task = asyncio.create_task(make_probe(make_client(timeout=30)).run_once())
    await asyncio.sleep(0.05)  # let it reach the hanging call; the assertion does not depend on it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)


async def test_concurrent_rounds_do_not_overlap(kraken: FakeKraken, make_probe: MakeProbe) -> None:
    await kraken.set_mode("slow", latency=0.02)
    probe = make_probe()
    first, second, recovery = await asyncio.gather(
        probe.run_once(), probe.run_once(), probe.recovery_check()
    )
    assert first.ok and second.ok and recovery.ok
    assert kraken.state.hits["SystemStatus"] == 3
    assert kraken.state.max_in_flight == 1


async def test_recovery_check_passes_on_a_healthy_exchange(make_probe: MakeProbe) -> None:
    result = await make_probe().recovery_check()
    assert result.ok
    assert [c.name for c in result.checks] == ["system_status", "price", "balance", "order_book"]
    assert all(c.ok for c in result.checks)
    assert "25000" not in " ".join(c.detail for c in result.checks)  # no amounts in details


async def test_recovery_check_without_keys_skips_balance(
    make_probe: MakeProbe, make_client: MakeClient
) -> None:
    result = await make_probe(make_client(credentials=False)).recovery_check()
    assert result.ok
    assert [c.name for c in result.checks] == ["system_status", "price", "order_book"]


async def test_recovery_check_fails_on_rejected_keys_and_skips_the_rest(
    kraken: FakeKraken, make_probe: MakeProbe
) -> None:
    await kraken.set_mode("auth_failure")
    result = await make_probe().recovery_check()
    assert not result.ok
    checks = {c.name: c for c in result.checks}
    assert checks["price"].ok
    assert not checks["balance"].ok and "EAPI:Invalid signature" in checks["balance"].detail
    assert not checks["order_book"].ok and checks["order_book"].detail.startswith("skipped")


@pytest.mark.parametrize("mode", ["maintenance", "cancel_only"])
async def test_recovery_check_requires_an_online_exchange(
    kraken: FakeKraken, make_probe: MakeProbe, mode: str
) -> None:
    await kraken.set_mode(mode)
    result = await make_probe().recovery_check()
    assert not result.ok
    assert result.checks[0].detail == f"status {mode}"
    assert kraken.state.hits["Ticker"] == 0
